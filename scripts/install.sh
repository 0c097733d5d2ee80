#!/usr/bin/env bash
# vipfarm's one install script: used by the README, `make`, CI (.ci/run) and the Dockerfile.
# Idempotent; run as root. Installs only what is missing and says what it does.
#
#   scripts/install.sh              development and CI: everything, including the test tools and
#                                   kube-apiserver/etcd/helm (cluster tier); vipfarm installed editable
#   scripts/install.sh --no-k8s     the same without the Kubernetes binaries (unit, BPF, lab, demo)
#   scripts/install.sh --runtime    what the product needs to run, nothing for tests: no test tools
#                                   (tcpdump, trafgen, nftables, ...), no test extras, no Kubernetes
#                                   binaries; vipfarm installed as a normal (non-editable) package.
#                                   The Dockerfile uses this.
#   scripts/install.sh --no-bpffs   do not mount bpffs (image builds; the node's is mounted at run time)
#   scripts/install.sh --print-plan print what would be installed for the given options, change nothing
#
# Environment: VIPFARM_VENV (default <repo>/.venv), VIPFARM_CACHE (default /var/cache/vipfarm).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIPFARM_VENV:-$REPO/.venv}"
WITH_K8S=1
WITH_BPFFS=1
RUNTIME=0
PLAN_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --no-k8s) WITH_K8S=0 ;;
    --no-bpffs) WITH_BPFFS=0 ;;     # image builds: the host's bpffs is mounted at run time
    --runtime) RUNTIME=1; WITH_K8S=0 ;;
    --print-plan) PLAN_ONLY=1 ;;
    *) echo "install.sh: unknown option $arg (known: --no-k8s, --runtime, --no-bpffs, --print-plan)" >&2; exit 2 ;;
  esac
done
say() { echo "[install] $*"; }

# What the product needs at run time: bcc and the headers it compiles against, Python, and what the
# namespace lab (`vipfarm demo`) calls: nsenter (util-linux) and ping.
RUNTIME_PKGS=(python3-bpfcc linux-headers-amd64 python3-venv python3-pip iputils-ping
              util-linux ca-certificates)
# What only the tests and benchmarks use (chromium: the web console's browser test, driven by playwright).
TEST_PKGS=(iproute2 iptables nftables netsniff-ng tcpdump openssl curl chromium)
if [ "$RUNTIME" = 1 ]; then
  PKGS=("${RUNTIME_PKGS[@]}")
  PIP_ARGS=("$REPO")
else
  PKGS=("${RUNTIME_PKGS[@]}" "${TEST_PKGS[@]}")
  PIP_ARGS=(-e "$REPO[test]")
fi
if [ "$PLAN_ONLY" = 1 ]; then
  echo "debian: ${PKGS[*]}"
  echo "pip: install ${PIP_ARGS[*]}"
  echo "kubernetes-binaries: $([ "$WITH_K8S" = 1 ] && echo yes || echo no)"
  echo "bpffs: $([ "$WITH_BPFFS" = 1 ] && echo mount || echo no)"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (it installs Debian packages, links kernel headers and mounts bpffs)" >&2
  exit 1
fi

# 1. Debian packages ----------------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# 2. Kernel headers where bcc looks for them ----------------------------------------------
# bcc needs /lib/modules/$(uname -r)/build. Cloud kernels often ship none; Debian's 6.1
# headers compile the filter fine when build -> <hdr>-amd64 and source -> <hdr>-common.
KREL="$(uname -r)"
MODDIR="/lib/modules/$KREL"
if [ -e "$MODDIR/build/include" ]; then
  say "kernel headers found at $MODDIR/build"
else
  HDR="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)"
  if [ -z "$HDR" ]; then
    echo "install.sh: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2
    exit 1
  fi
  mkdir -p "$MODDIR"
  ln -sfn "$HDR" "$MODDIR/build"
  ln -sfn "${HDR%-amd64}-common" "$MODDIR/source"
  say "linked $MODDIR/build -> $HDR (and source -> ${HDR%-amd64}-common)"
fi

# 3. bpffs ----------------------------------------------------------------------------------
if [ "$WITH_BPFFS" = 1 ] && ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" {found=1} END {exit !found}' /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf
  say "mounted bpffs at /sys/fs/bpf"
fi

# 4. Python venv that sees Debian's bcc --------------------------------------------------------
stamp="$VENV/.vipfarm-installed"
want="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)-runtime$RUNTIME"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import bcc" 2>/dev/null; then
  say "creating venv $VENV (system site packages, for bcc)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing vipfarm and its Python dependencies into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_ARGS[@]}"
  echo "$want" > "$stamp"
else
  say "Python dependencies up to date"
fi

# 5. Kubernetes binaries for the cluster tier (built from Go modules, cached outside the repo)
if [ "$WITH_K8S" = 1 ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  if ! command -v go >/dev/null; then
    echo "install.sh: Go >= 1.26 (the go line of scripts/k8s-wrapper/go.mod) is needed to build kube-apiserver/etcd/helm; none is on PATH" >&2
    exit 1
  fi
  bash "$REPO/scripts/build-k8s-binaries.sh" >/dev/null
  say "kube-apiserver, etcd and helm ready in ${VIPFARM_CACHE:-/var/cache/vipfarm}/bin"
fi
say "done"
