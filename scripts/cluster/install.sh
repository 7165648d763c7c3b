#!/usr/bin/env bash
# Debian packages the single-node cluster test needs (make test-cluster), installed only when
# missing. containerd does not start: this machine has no init system that would, and the
# test runs its own containerd with its own configuration and paths.
#   containerd, runc, containernetworking-plugins  the node's runtime and pod network (bridge, host-local)
#   nftables                 kube-proxy's nftables mode (the nft command)
#   iproute2, util-linux     the node's network namespace (ip), nsenter and unshare
#   gcc, libc6-dev           the pause binary, linked statically
#   podman                   the pause image; images are moved into containerd as archives
#   python3-cryptography     the cluster's certificates
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "cluster install: run as root" >&2; exit 1; }
# shellcheck source=scripts/apt-lib.sh
. "$here/scripts/apt-lib.sh"
apt_install "cluster install" containerd runc containernetworking-plugins nftables iproute2 util-linux \
    gcc libc6-dev podman python3-cryptography
