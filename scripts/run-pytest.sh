#!/usr/bin/env bash
# Runs pytest from the venv. Exit code 5 ("no tests collected") is a failure here, on
# purpose: a tier that silently collects nothing must not pass.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIPFARM_VENV:-$REPO/.venv}"
cd "$REPO"
"$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run-pytest: pytest collected no tests from: $* -- treating that as a failure" >&2
  exit 1
fi
exit "$rc"
