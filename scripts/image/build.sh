#!/usr/bin/env bash
# make image: the agent image (deploy/Dockerfile) and the Collector image, built with podman —
# no Docker daemon, no registry. Usage: scripts/image/build.sh [--force]
#
#   IMAGE            agent image reference (deploy.mk passes the one the manifests name)
#   COLLECTOR_IMAGE  Collector image reference
#
# The agent: podman build of deploy/Dockerfile with its FROM replaced by a Debian 12 root
# debootstrapped here (scripts/image/base.sh) and imported locally, so `scripts/install.sh
# runtime` installs from this machine's Debian mirror. The build's context holds exactly what
# the Dockerfile copies. The Collector: our otelcol-netlat build (collector/build.sh) on an
# empty base with the agent image's CA bundle (scripts/image/collector.Containerfile).
#
# Cached: each image is rebuilt only when the hash of its inputs (context, Dockerfile, base,
# these scripts) differs from its stamp under build/image/ or the image is gone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/scripts/image
OUT=$ROOT/build/image
IMAGE=${IMAGE:?IMAGE must name the agent image (make image sets it)}
COLLECTOR_IMAGE=${COLLECTOR_IMAGE:?COLLECTOR_IMAGE must name the Collector image}
BASE_IMAGE=localhost/otel-netlat-base:debian-12
# runc, the runtime containerd runs on a node; crun 1.8 (Debian 12) refuses hosts whose
# cgroup v2 hierarchy has controllers while v1 is mounted (hybrid), as this one.
PODMAN=(podman --runtime runc)
force=0
[[ ${1:-} == --force ]] && force=1

die() { echo "make image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
command -v podman >/dev/null && command -v runc >/dev/null || die "podman and runc are missing (scripts/install.sh dev installs them)"
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
tree_hash() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf - . | sha256sum | cut -d' ' -f1; }
label_of() { "${PODMAN[@]}" image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true; }
up_to_date() { # $1 image, $2 key
    [[ $force == 0 && "$(cat "$OUT/$(basename "${1%%:*}").stamp" 2>/dev/null)" == "$2" ]] \
        && "${PODMAN[@]}" image exists "$1"
}
stamp() { echo "$2" >"$OUT/$(basename "${1%%:*}").stamp"; }

# The debootstrapped root as a local image, re-imported only when the tarball changed.
import_base() {
    local tar key
    tar=$("$HERE/base.sh")
    key=$(cat "$tar.key")
    if [[ "$(label_of "$BASE_IMAGE" io.otel-netlat.base-key)" != "$key" ]]; then
        "${PODMAN[@]}" import --change "LABEL io.otel-netlat.base-key=$key" --change 'CMD ["bash"]' \
            -q "$tar" "$BASE_IMAGE" >/dev/null
    fi
    echo "$key"
}

# Exactly what deploy/Dockerfile COPYs (less bytecode caches), at the same relative paths.
stage_context() { # $1 context dir
    local ctx=$1 src
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$ROOT/deploy/Dockerfile" "$ctx/Dockerfile"
    for src in $(sed -n 's/^COPY \(.*\) [^ ]*$/\1/p' "$ROOT/deploy/Dockerfile"); do
        (cd "$ROOT" && cp -a --parents "$src" "$ctx/")
    done
    find "$ctx" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
}

# The building machine's pip and apt settings for the build's RUN steps only: its package
# index and the CA bundle it trusts (a TLS-inspecting proxy's). Bind-mounted on /mnt (empty in
# every Debian root, so no mount point is left in a layer); the Dockerfile's build ARGs
# PIP_CONFIG_FILE and APT_CONFIG point there. Prints the podman build options.
build_conf() { # $1 dir
    local dir=$1 pip cert=/etc/ssl/certs/ca-certificates.crt key value line
    rm -rf "$dir" && mkdir -p "$dir"
    pip=$(command -v "${VENV:-$ROOT/.venv}/bin/pip" || command -v pip3 || true)
    { echo "[global]"
      if [[ -n $pip ]]; then
          while IFS= read -r line; do
              key=${line#*.}; key=${key%%=*}; value=${line#*=\'}; value=${value%\'}
              case $key in
              cert) cert=$value ;;
              index-url|extra-index-url|trusted-host|proxy|timeout|default-timeout|retries) echo "$key = $value" ;;
              esac
          done < <("$pip" config list 2>/dev/null)
      fi
      [[ -f $cert ]] && echo "cert = /mnt/ca.crt"
    } >"$dir/pip.conf"
    touch "$dir/apt.conf"
    if [[ -f $cert ]]; then
        cp "$cert" "$dir/ca.crt"
        echo 'Acquire::https::CAInfo "/mnt/ca.crt";' >"$dir/apt.conf"
    fi
    echo "-v $dir:/mnt:ro --build-arg PIP_CONFIG_FILE=/mnt/pip.conf --build-arg APT_CONFIG=/mnt/apt.conf"
}

build_agent() { # $1 base key
    local ctx=$OUT/agent-context key options start
    stage_context "$ctx"
    key=$(printf '%s\n%s\n' "$1" "$(tree_hash "$ctx")" | hash_of - "${BASH_SOURCE[0]}")
    if up_to_date "$IMAGE" "$key"; then echo "make image: $IMAGE is up to date"; return; fi
    options=$(build_conf "$OUT/build-conf")
    start=$(date +%s)
    echo "make image: building $IMAGE (log: $OUT/agent-build.log)"
    # shellcheck disable=SC2086 # $options is a list of options
    build "$IMAGE" "$OUT/agent-build.log" --from "$BASE_IMAGE" --network host $options \
        --label "io.otel-netlat.inputs=$key" -f "$ctx/Dockerfile" "$ctx"
    stamp "$IMAGE" "$key"
    echo "make image: built $IMAGE in $(( $(date +%s) - start )) s"
}

# podman build IMAGE with its output in LOG (its tail on failure). Afterwards the images no tag
# needs any more (an earlier build's, its cache layers) are pruned: rebuilds do not pile up.
build() { # $1 image, $2 log, podman build arguments...
    local image=$1 log=$2
    shift 2
    if ! "${PODMAN[@]}" build --pull=never -t "$image" "$@" >"$log" 2>&1; then
        tail -40 "$log" >&2
        die "podman build of $image failed (log: $log)"
    fi
    "${PODMAN[@]}" image prune -f >/dev/null
}

build_collector() {
    local ctx=$OUT/collector-context key
    "$ROOT/collector/build.sh"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$ROOT/build/otelcol-netlat/otelcol-netlat" "$HERE/collector.Containerfile" "$ctx/"
    key=$(printf '%s\n%s\n' "$(tree_hash "$ctx")" "$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")" \
        | hash_of - "${BASH_SOURCE[0]}")
    if up_to_date "$COLLECTOR_IMAGE" "$key"; then echo "make image: $COLLECTOR_IMAGE is up to date"; return; fi
    build "$COLLECTOR_IMAGE" "$OUT/collector-build.log" --network none --build-arg "CERTS_FROM=$IMAGE" \
        --label "io.otel-netlat.inputs=$key" -f "$ctx/collector.Containerfile" "$ctx"
    echo "make image: built $COLLECTOR_IMAGE"
    stamp "$COLLECTOR_IMAGE" "$key"
}

report() {
    local image size
    for image in "$IMAGE" "$COLLECTOR_IMAGE"; do
        size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image")
        echo "make image: $image $(( size / 1048576 )) MiB"
    done
}

mkdir -p "$OUT"
exec 8>"$OUT/.build.lock"
flock 8
base_key=$(import_base)  # an assignment: a failed base stops here (set -e)
build_agent "$base_key"
build_collector
report
