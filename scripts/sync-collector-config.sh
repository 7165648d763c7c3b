#!/usr/bin/env bash
# Copy collector/config.yaml to deploy/kubernetes/collector/config.yaml, where kustomize can
# read it (it refuses files outside the kustomization's folder). One source: edit
# collector/config.yaml, run this; tests/e2e/test_deploy.py fails while the two differ.
#   scripts/sync-collector-config.sh           copy if different
#   scripts/sync-collector-config.sh --check   exit 1 if different, copy nothing
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="$here/collector/config.yaml"
dst="$here/deploy/kubernetes/collector/config.yaml"

if cmp -s "$src" "$dst"; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "sync-collector-config: $dst differs from $src; run scripts/sync-collector-config.sh" >&2
    exit 1
fi
cp "$src" "$dst"
echo "sync-collector-config: copied $src -> $dst"
