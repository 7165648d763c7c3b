#!/usr/bin/env bash
# Build the otelcol-netlat Collector distribution with the OpenTelemetry Collector builder.
#
# No Collector binary ships in Debian, PyPI or npm, so the tests and `make collector` build
# one from the Go module proxy. The result is cached: when build/otelcol-netlat/otelcol-netlat
# exists and its stamp (hash of manifest.yaml + this script) matches, nothing runs. Once
# the Go module cache is warm, a rebuild needs no network (GOPROXY=off works).
#
# Usage: collector/build.sh [--force]
# Exit codes: 0 built or up to date, 2 no usable Go toolchain, other = build failure.
set -euo pipefail

# One release for every collector module; the builder must match it, since it writes
# `go.opentelemetry.io/collector/otelcol <its own version>` into the generated go.mod.
BUILDER_VERSION=v0.161.0
# The `go` line of the builder's go.mod at that version: older toolchains refuse it.
GO_MIN=1.26.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MANIFEST=$ROOT/collector/manifest.yaml
OUT=$ROOT/build/otelcol-netlat
BIN=$OUT/otelcol-netlat
STAMP=$OUT/.build-stamp
GOBIN_DIR=$ROOT/build/bin

force=0
[[ ${1:-} == --force ]] && force=1

stamp=$(cat "$MANIFEST" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ $force == 0 && -x $BIN && -f $STAMP && $(cat "$STAMP") == "$stamp" ]]; then
    echo "collector: $BIN is up to date"
    exit 0
fi

# Pick the first Go that is new enough: PATH first, then the upstream tarball's location
# (Debian's golang-go, 1.19 on bookworm, is too old and often comes first on PATH).
go_ok() { # $1 = go binary
    local v
    v=$("$1" env GOVERSION 2>/dev/null) || return 1
    v=${v#go}
    [[ $(printf '%s\n%s\n' "$GO_MIN" "$v" | sort -V | head -n1) == "$GO_MIN" ]]
}
want=${GO:-}  # GO=/path/to/go overrides the search
GO=
seen=
for cand in "$want" "$(command -v go || true)" /usr/local/go/bin/go; do
    [[ -n $cand && -x $cand ]] || continue
    seen="$seen $cand($("$cand" env GOVERSION 2>/dev/null || echo '?'))"
    if go_ok "$cand"; then GO=$cand; break; fi
done
if [[ -z $GO ]]; then
    echo "collector/build.sh: need Go >= $GO_MIN for the Collector builder $BUILDER_VERSION; found:${seen:- none} (install Go from the upstream tarball into /usr/local/go)" >&2
    exit 2
fi
# The builder runs `go` itself: make sure it finds the same one, and that one only
# (no toolchain switching behind our back).
PATH="$(dirname "$GO"):$PATH"
export PATH GOTOOLCHAIN=local
# Serve what the module cache already holds before asking the configured proxy, so a
# rebuild (builder install included) needs no network; misses fall through to it.
export GOPROXY="file://$("$GO" env GOMODCACHE)/cache/download,$("$GO" env GOPROXY)"
# The generated module sits inside this git repo; VCS stamping would only add noise.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"

mkdir -p "$ROOT/build"
# Serialise concurrent builds (make and a pytest session may both ask for one).
exec 9>"$ROOT/build/.collector-build.lock"
flock 9
if [[ $force == 0 && -x $BIN && -f $STAMP && $(cat "$STAMP") == "$stamp" ]]; then
    echo "collector: $BIN is up to date (built by a concurrent run)"
    exit 0
fi

start=$(date +%s.%N)
echo "collector: building with $("$GO" env GOVERSION) ($GO), builder $BUILDER_VERSION"

BUILDER=$GOBIN_DIR/builder
if ! [[ -x $BUILDER && $("$BUILDER" version 2>&1) == *"${BUILDER_VERSION#v}"* ]]; then
    GOBIN=$GOBIN_DIR "$GO" install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION"
fi

rm -f "$STAMP"
cd "$ROOT"
# --skip-strict-versioning=false: fail if dependency resolution moved any module we pinned.
"$BUILDER" --config "$MANIFEST" --skip-strict-versioning=false
[[ -x $BIN ]] || { echo "collector/build.sh: builder finished but $BIN is missing" >&2; exit 1; }
echo "$stamp" >"$STAMP"

end=$(date +%s.%N)
printf 'collector: built %s (%s MiB) in %.1f s\n' "$BIN" "$(( $(stat -c %s "$BIN") / 1048576 ))" \
    "$(awk "BEGIN{print $end - $start}")"
