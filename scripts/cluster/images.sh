#!/usr/bin/env bash
# The images the test cluster runs, as archives containerd imports (no registry):
#   the agent and Collector images `make image` built (podman), and a pause image built here
#   from build/cluster/bin/pause (scripts/cluster/build.sh) on an empty base.
#
#   scripts/cluster/images.sh AGENT_IMAGE COLLECTOR_IMAGE
#
# Writes build/cluster/images/{agent,collector,pause}.tar and build/cluster/images/refs
# ("agent REF", "collector REF", "pause REF"), which tests/support/cluster.py reads. An archive
# is saved again only when its image's ID changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$ROOT/build/cluster/images
BIN=$ROOT/build/cluster/bin
PODMAN=(podman --runtime runc)  # as scripts/image/build.sh: crun refuses this hybrid cgroup host
die() { echo "cluster images: $*" >&2; exit 1; }
[[ $# == 2 ]] || die "usage: $0 AGENT_IMAGE COLLECTOR_IMAGE"
[[ -x $BIN/pause ]] || die "$BIN/pause is missing: run scripts/cluster/build.sh"
pause_ref=localhost/otel-netlat/pause:$(cat "$BIN/pause.version")
mkdir -p "$OUT"

# pause: the binary alone, as nobody (65535), as upstream's image.
key=$(sha256sum "$BIN/pause" | cut -d' ' -f1)
if [[ "$("${PODMAN[@]}" image inspect --format '{{index .Labels "io.otel-netlat.inputs"}}' "$pause_ref" 2>/dev/null)" != "$key" ]]; then
    ctx=$OUT/pause-context
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$BIN/pause" "$ctx/pause"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
    "${PODMAN[@]}" build --pull=never --network none --label "io.otel-netlat.inputs=$key" \
        -t "$pause_ref" -f "$ctx/Containerfile" "$ctx" >"$OUT/pause-build.log" 2>&1 \
        || { tail -20 "$OUT/pause-build.log" >&2; die "podman build of $pause_ref failed"; }
fi

: >"$OUT/refs.new"
for pair in "agent $1" "collector $2" "pause $pause_ref"; do
    read -r name ref <<<"$pair"
    id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$ref" 2>/dev/null) \
        || die "no image $ref: run make image first"
    if [[ ! -f $OUT/$name.tar || "$(cat "$OUT/$name.id" 2>/dev/null)" != "$id" ]]; then
        rm -f "$OUT/$name.tar"
        "${PODMAN[@]}" save -q --format docker-archive -o "$OUT/$name.tar" "$ref"
        echo "$id" >"$OUT/$name.id"
        echo "cluster images: saved $ref"
    fi
    echo "$name $ref" >>"$OUT/refs.new"
done
mv "$OUT/refs.new" "$OUT/refs"
