#!/usr/bin/env bash
# The single-node cluster's binaries, built from Go modules through this machine's own Go
# proxy setting (`go env GOPROXY`): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl (scripts/cluster/gomod pins their versions),
# CoreDNS, crictl and Prometheus (each its own module, built as `go install` does; Debian's
# prometheus is built without Kubernetes service discovery), and the pause binary from the C
# source the Kubernetes module ships (no registry: the test builds the pause image from it).
#
#   scripts/cluster/build.sh [--force]    prints nothing but progress; binaries in build/cluster/bin
#
# Cached twice, so that a fresh clone on the same machine (CI) does not rebuild:
#   - every binary lands in $NETLAT_CLUSTER_CACHE (default /var/cache/otel-netlat/cluster)
#     under the hash of its inputs (gomod/, this script, the Go version); build/cluster/bin
#     holds hard links to them (copies across file systems);
#   - Go's own build and module caches (`go env GOCACHE GOMODCACHE`) make a rebuild after an
#     input changed recompile only what changed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
GOMOD=$HERE/gomod
OUT=$ROOT/build/cluster/bin
CACHE=${NETLAT_CLUSTER_CACHE:-/var/cache/otel-netlat/cluster}
COREDNS=github.com/coredns/coredns@v1.13.1
CRICTL=sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0
PROMETHEUS=github.com/prometheus/prometheus/cmd/prometheus@v0.316.0  # Prometheus 3.16.0
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns crictl
    prometheus pause)

die() { echo "cluster build: $*" >&2; exit 1; }
command -v go >/dev/null || die "no Go toolchain on PATH"
command -v gcc >/dev/null || die "gcc is missing (scripts/cluster/install.sh installs it)"
# The pinned module, never another toolchain fetched behind our back; no go.work around us.
export GOTOOLCHAIN=local GOWORK=off
force=0
[[ ${1:-} == --force ]] && force=1

k8s_version=$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$GOMOD/go.mod")
[[ -n $k8s_version ]] || die "no k8s.io/kubernetes requirement in $GOMOD/go.mod"
minor=$(cut -d. -f2 <<<"$k8s_version")
key=$({ cat "$GOMOD/go.mod" "$GOMOD/go.sum" "$GOMOD/tools.go" "${BASH_SOURCE[0]}"; go env GOVERSION GOARCH; } \
    | sha256sum | cut -c1-16)
dir=$CACHE/$key

# build/cluster/bin: links to the cached binaries (a copy when the cache is elsewhere).
publish() {
    mkdir -p "$OUT"
    for b in "${BINARIES[@]}" pause.version; do
        ln -f "$dir/$b" "$OUT/$b" 2>/dev/null || cp -f "$dir/$b" "$OUT/$b"
    done
    echo "$key" >"$OUT/.key"
}

if [[ $force == 0 && -f $dir/.complete ]]; then
    [[ "$(cat "$OUT/.key" 2>/dev/null)" == "$key" ]] || publish
    echo "cluster build: binaries for Kubernetes $k8s_version are up to date ($dir)"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ $force == 0 && -f $dir/.complete ]]; then publish; exit 0; fi  # a concurrent run built them

tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
echo "cluster build: Kubernetes $k8s_version and etcd from $GOMOD (log: $tmp/build.log; a cold build takes tens of minutes on 2 cores)"
version_flags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1"
version_flags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
version_flags+=" -X k8s.io/component-base/version.gitTreeState=clean"
if ! (cd "$GOMOD" && nice -n 10 go build -trimpath -ldflags "-s -w $version_flags" -o "$tmp/" \
    go.etcd.io/etcd/server/v3 \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl) >"$tmp/build.log" 2>&1; then
    tail -30 "$tmp/build.log" >&2
    die "go build failed"
fi
mv "$tmp/server" "$tmp/etcd"  # etcd's main package is the module go.etcd.io/etcd/server/v3
echo "cluster build: Kubernetes and etcd in $(( $(date +%s) - start )) s"

# CoreDNS, crictl, Prometheus: their own modules and go.sum, at the versions named above.
for tool in "$COREDNS" "$CRICTL" "$PROMETHEUS"; do
    t0=$(date +%s)
    if ! (cd "$tmp" && GOBIN=$tmp nice -n 10 go install -trimpath -ldflags "-s -w" "$tool") >>"$tmp/build.log" 2>&1; then
        tail -30 "$tmp/build.log" >&2
        die "go install $tool failed"
    fi
    echo "cluster build: ${tool%%@*} in $(( $(date +%s) - t0 )) s"
done

# pause: the sandbox's init process, statically linked as upstream's image has it.
src=$(cd "$GOMOD" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
pause_version=$(sed -n 's/^TAG ?= //p' "$(dirname "$(dirname "$src")")/Makefile")
gcc -Os -Wall -Werror -static -DVERSION="v$pause_version-otel-netlat" -o "$tmp/pause" "$src"
echo "$pause_version" >"$tmp/pause.version"

for b in "${BINARIES[@]}"; do [[ -x $tmp/$b ]] || die "$b was not built"; done
touch "$tmp/.complete"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
# Older builds go: one set of binaries (~1 GB) is enough.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
publish
echo "cluster build: done in $(( $(date +%s) - start )) s ($dir)"
