#!/usr/bin/env bash
# Set up everything otel-netlat needs on Debian 12, as root. Idempotent and quick when done.
#
#   scripts/install.sh runtime   Debian packages the agent needs at run time (used by deploy/Dockerfile too)
#   scripts/install.sh dev       runtime + test packages + .venv with the package and its test extras
#
# The virtualenv is made from Debian's /usr/bin/python3 with --system-site-packages: BCC's
# Python bindings exist only as Debian's python3-bpfcc (PyPI's "bcc" is another project).
set -euo pipefail

mode="${1:-dev}"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv}"

# Run time: BCC and its Python bindings, the UAPI headers the headerless shim copies,
# iproute2 (netns names), procps. No kernel headers: offsets come from BTF.
runtime_pkgs=(python3 python3-venv python3-bpfcc libbpfcc linux-libc-dev iproute2 procps ca-certificates)
# Tests and development: bpftool (BTF cross-check, BPF statistics), a real Prometheus server,
# ethtool (GRO on veth), ping, debootstrap (the image's Debian 12 base), podman and runc (`make
# image` builds the images without Docker; tests/e2e/test_image.py runs them as a node would).
dev_pkgs=(bpftool prometheus ethtool iputils-ping python3-dev util-linux debootstrap nftables podman runc)

die() { echo "install: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and BPF need it)"
command -v apt-get >/dev/null || die "this installer supports Debian/Ubuntu (apt-get not found)"

# shellcheck source=scripts/apt-lib.sh
. "$here/scripts/apt-lib.sh"

case "$mode" in
runtime)
    apt_install install "${runtime_pkgs[@]}"
    ;;
dev)
    apt_install install "${runtime_pkgs[@]}" "${dev_pkgs[@]}"
    stamp="$venv/.installed"
    want="$(cat "$here/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$venv/bin/python" -m pip install -q -e "$here[test]"
        echo "$want" > "$stamp"
    fi
    "$venv/bin/python" -c "import bcc" 2>/dev/null || die "the virtualenv cannot import bcc (python3-bpfcc)"
    ;;
*)
    die "usage: $0 runtime|dev"
    ;;
esac
