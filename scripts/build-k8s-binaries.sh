#!/usr/bin/env bash
# Build kube-apiserver, etcd and helm from Go modules (the module proxy is the
# only source reachable here) and cache them OUTSIDE the repo in
#   ${VIPFARM_CACHE:-/var/cache/vipfarm}/bin/
#
# Idempotent: a binary whose <name>.version stamp matches the pinned version is
# not rebuilt. Remove the stamp (or the binary) to force a rebuild.
#
#   kube-apiserver  wrapper module scripts/k8s-wrapper  (k8s.io/kubernetes can't
#                   be required directly: its go.mod requires the staging
#                   modules at v0.0.0 replaced by ./staging, kubernetes#79384;
#                   the wrapper replaces each one by its published v0.X.Y tag)
#   etcd            wrapper module scripts/etcd-wrapper (etcd's own modules
#                   have replace directives, so `go install` refuses them)
#   helm            plain `go install helm.sh/helm/v3/cmd/helm@VERSION`
#
# Prints the bin dir on the last line of stdout.
set -euo pipefail

# ---- pinned versions ---------------------------------------------------------
K8S_VERSION="v1.37.2"                       # k8s.io/kubernetes
K8S_STAGING_VERSION="v0.${K8S_VERSION#v1.}" # k8s.io/* staging modules: v0.37.2
ETCD_VERSION="v3.6.16"                      # go.etcd.io/etcd/server/v3
HELM_VERSION="v3.22.0"                      # helm.sh/helm/v3
# The only toolchain approved besides the installed `go`; used only if Go
# reports that a module needs a newer toolchain.
FALLBACK_GOTOOLCHAIN="go1.27.3"

# ---- locations ---------------------------------------------------------------
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${VIPFARM_CACHE:-/var/cache/vipfarm}"
BIN_DIR="${CACHE_DIR}/bin"
BUILD_DIR="${CACHE_DIR}/build"
mkdir -p "${BIN_DIR}" "${BUILD_DIR}"

GO="${GO:-go}"
command -v "${GO}" >/dev/null || { echo "error: go not found on PATH" >&2; exit 1; }
# Never fetch a toolchain implicitly; see run_go below.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED="${CGO_ENABLED:-0}"
# Working dirs live outside any VCS checkout; don't let a global GOFLAGS
# (e.g. -mod=vendor) leak in.
export GOFLAGS="-buildvcs=false"

log() { echo "[build-k8s-binaries] $*" >&2; }

# up_to_date NAME VERSION: binary present, executable, stamp matches.
up_to_date() {
  local name="$1" version="$2"
  [[ -x "${BIN_DIR}/${name}" && -f "${BIN_DIR}/${name}.version" ]] &&
    [[ "$(cat "${BIN_DIR}/${name}.version")" == "${version}" ]]
}

# install_bin NAME VERSION BUILT_PATH: atomically move into the cache + stamp.
install_bin() {
  local name="$1" version="$2" built="$3"
  chmod 0755 "${built}"
  mv -f "${built}" "${BIN_DIR}/${name}"
  echo "${version}" >"${BIN_DIR}/${name}.version.tmp"
  mv -f "${BIN_DIR}/${name}.version.tmp" "${BIN_DIR}/${name}.version"
  log "installed ${BIN_DIR}/${name} ($(du -h "${BIN_DIR}/${name}" | cut -f1), ${version})"
}

# run_go ARGS...: run `go ARGS...`; if it fails because a module needs a newer
# Go than the local one, retry once with GOTOOLCHAIN=${FALLBACK_GOTOOLCHAIN}.
run_go() {
  local errf rc=0
  errf="$(mktemp)"
  "${GO}" "$@" 2>"${errf}" || rc=$?
  cat "${errf}" >&2
  if ((rc != 0)) && [[ "${GOTOOLCHAIN}" != "${FALLBACK_GOTOOLCHAIN}" ]] &&
    grep -qE 'requires go >=|toolchain not available|newer Go toolchain' "${errf}"; then
    log "Go reports a newer toolchain is needed; retrying with GOTOOLCHAIN=${FALLBACK_GOTOOLCHAIN}"
    export GOTOOLCHAIN="${FALLBACK_GOTOOLCHAIN}"
    rc=0
    "${GO}" "$@" || rc=$?
  fi
  rm -f "${errf}"
  return "${rc}"
}

# prepare_wrapper SRC_DIR DEST_DIR: copy the committed wrapper module (go.mod,
# go.sum, *.go) into a scratch dir outside the repo, so builds never touch the
# work tree.
prepare_wrapper() {
  local src="$1" dest="$2"
  rm -rf "${dest}"
  mkdir -p "${dest}"
  cp "${src}/go.mod" "${src}"/*.go "${dest}/"
  [[ -f "${src}/go.sum" ]] && cp "${src}/go.sum" "${dest}/"
  return 0
}

# sync_wrapper DIR ORIGINAL_GO_MOD ROOT_MODULE@VERSION: if the pins edited into
# DIR/go.mod changed it, re-resolve the graph from the root requirement alone
# (old indirect requirements are dropped, so a downgrade really downgrades) and
# tell how to update the repo copy.
sync_wrapper() {
  local dir="$1" orig="$2" root="$3"
  if ! cmp -s "${dir}/go.mod" "${orig}"; then
    log "wrapper $(basename "$(dirname "${orig}")") go.mod is not at the pinned versions; re-resolving in ${dir}"
    awk '/^require \($/ {skip = 1; next} skip && /^\)$/ {skip = 0; next} skip {next} /^require / {next} {print}' \
      "${dir}/go.mod" >"${dir}/go.mod.tmp"
    mv -f "${dir}/go.mod.tmp" "${dir}/go.mod"
    (cd "${dir}" && "${GO}" mod edit "-require=${root}" && run_go mod tidy)
    log "NOTE: copy ${dir}/go.mod and go.sum back to $(dirname "${orig}")/ to pin them in the repo"
  fi
}

# ---- kube-apiserver ----------------------------------------------------------
build_kube_apiserver() {
  local name=kube-apiserver version="${K8S_VERSION}"
  if up_to_date "${name}" "${version}"; then
    log "${name} ${version} already built, skipping"
    return 0
  fi
  log "building ${name} ${version} (takes several minutes) ..."
  local start=${SECONDS} src="${SCRIPT_DIR}/k8s-wrapper" dir="${BUILD_DIR}/k8s-wrapper"
  prepare_wrapper "${src}" "${dir}"

  # Read the staging module list from kubernetes' own go.mod: every k8s.io/*
  # module it requires at v0.0.0 (those are replaced by ./staging/... there).
  local k8s_gomod
  k8s_gomod="$(cd "${dir}" && run_go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "${k8s_gomod}" ]] || { echo "error: could not locate go.mod of k8s.io/kubernetes@${K8S_VERSION}" >&2; return 1; }
  local -a staging
  mapfile -t staging < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "${k8s_gomod}" | sort -u)
  ((${#staging[@]} > 0)) || { echo "error: no staging modules found in ${k8s_gomod}" >&2; return 1; }
  local -a edits=("-require=k8s.io/kubernetes@${K8S_VERSION}")
  local m
  for m in "${staging[@]}"; do edits+=("-replace=${m}=${m}@${K8S_STAGING_VERSION}"); done
  (cd "${dir}" && "${GO}" mod edit "${edits[@]}")
  sync_wrapper "${dir}" "${src}/go.mod" "k8s.io/kubernetes@${K8S_VERSION}"

  local major minor build_date
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  # Reproducible build date: the tag's publication time from the module proxy.
  build_date="$(cd "${dir}" && "${GO}" list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes 2>/dev/null || true)"
  [[ -n "${build_date}" ]] || build_date="1970-01-01T00:00:00Z"
  # Same version variables upstream's hack/lib/version.sh stamps, so /version
  # reports the real version (helm/kubectl read it).
  local ldflags="-s -w" pkg key val
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for key in gitVersion=${K8S_VERSION} gitMajor=${major} gitMinor=${minor} gitTreeState=clean buildDate=${build_date} gitCommit=; do
      ldflags+=" -X ${pkg}.${key}"
    done
  done

  (cd "${dir}" && run_go build -trimpath -ldflags="${ldflags}" -o "${dir}/${name}.new" .)
  install_bin "${name}" "${version}" "${dir}/${name}.new"
  log "${name} built in $((SECONDS - start))s"
}

# ---- etcd --------------------------------------------------------------------
build_etcd() {
  local name=etcd version="${ETCD_VERSION}"
  if up_to_date "${name}" "${version}"; then
    log "${name} ${version} already built, skipping"
    return 0
  fi
  log "building ${name} ${version} (takes a minute or two) ..."
  local start=${SECONDS} src="${SCRIPT_DIR}/etcd-wrapper" dir="${BUILD_DIR}/etcd-wrapper"
  prepare_wrapper "${src}" "${dir}"
  (cd "${dir}" && "${GO}" mod edit "-require=go.etcd.io/etcd/server/v3@${ETCD_VERSION}")
  sync_wrapper "${dir}" "${src}/go.mod" "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  (cd "${dir}" && run_go build -trimpath -ldflags="-s -w" -o "${dir}/${name}.new" .)
  install_bin "${name}" "${version}" "${dir}/${name}.new"
  log "${name} built in $((SECONDS - start))s"
}

# ---- helm --------------------------------------------------------------------
build_helm() {
  local name=helm version="${HELM_VERSION}"
  if up_to_date "${name}" "${version}"; then
    log "${name} ${version} already built, skipping"
    return 0
  fi
  log "building ${name} ${version} (takes a few minutes) ..."
  local start=${SECONDS} gobin="${BUILD_DIR}/helm-gobin"
  rm -rf "${gobin}"
  mkdir -p "${gobin}"
  # Same -X stamps as upstream's Makefile: the version, and the Kubernetes
  # version that `helm template` assumes by default (Capabilities.KubeVersion),
  # derived from helm's client-go requirement (v0.37.x -> 1.37); without them
  # helm reports "v3.22" and assumes Kubernetes 1.20.
  local helm_gomod cg k8s_major k8s_minor
  helm_gomod="$(cd "${BUILD_DIR}" && run_go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  cg="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "${helm_gomod}")" # e.g. v0.37.0
  cg="${cg#v}"
  k8s_major=$(( ${cg%%.*} + 1 ))
  k8s_minor="${cg#*.}"; k8s_minor="${k8s_minor%%.*}"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=${k8s_major} -X ${pkg}.k8sVersionMinor=${k8s_minor}"
  done
  (cd "${BUILD_DIR}" && GOBIN="${gobin}" run_go install -trimpath -ldflags="${ldflags}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
  install_bin "${name}" "${version}" "${gobin}/helm"
  log "${name} built in $((SECONDS - start))s"
}

main() {
  log "go: $("${GO}" version); cache: ${BIN_DIR}"
  build_etcd
  build_helm
  build_kube_apiserver
  log "all binaries ready in ${BIN_DIR}"
  echo "${BIN_DIR}"
}

main "$@"
