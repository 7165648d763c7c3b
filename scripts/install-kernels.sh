#!/usr/bin/env bash
# Install what `make test-kernels` needs, as root, on Debian 12. Idempotent and quick when done.
#
#   scripts/install-kernels.sh            install qemu & co. and both stock cloud kernels
#   scripts/install-kernels.sh --list     print the installed kernel versions (one a line) and exit
#
# The kernels are Debian's stock cloud kernels, booted under qemu's software CPU by
# scripts/vm/run_in_vm.py (the host kernel has no kprobes/fentry; /dev/kvm here cannot run them):
#   linux-image-cloud-amd64      + linux-headers-cloud-amd64        (6.1,  bookworm / bookworm-security)
#   linux-image-6.12-cloud-amd64 + linux-headers-6.12-cloud-amd64   (6.12, bookworm-security)
# Installing a kernel package repoints /vmlinuz and /initrd.img; the host does not boot from
# them (no bootloader is installed here). Exact versions are taken from /boot afterwards.
set -euo pipefail

tool_pkgs=(qemu-system-x86 busybox-static cpio xz-utils zstd lz4 kmod)
kernel_pkgs=(linux-image-cloud-amd64 linux-headers-cloud-amd64
             linux-image-6.12-cloud-amd64 linux-headers-6.12-cloud-amd64)

die() { echo "install-kernels: $*" >&2; exit 1; }

# Installed cloud kernel versions that have both an image in /boot and a modules tree,
# newest package per series (6.1, 6.12) first by version sort.
list_kernels() {
    local f v
    for f in /boot/vmlinuz-*-cloud-amd64; do
        [ -e "$f" ] || continue
        v="${f#/boot/vmlinuz-}"
        [ -d "/lib/modules/$v/kernel" ] && echo "$v"
    done | sort -V
}

if [ "${1:-}" = "--list" ]; then
    list_kernels
    exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (apt-get needs it)"
command -v apt-get >/dev/null || die "needs Debian (apt-get not found)"

# shellcheck source=scripts/apt-lib.sh
. "$(dirname "$0")/apt-lib.sh"
apt_install install-kernels "${tool_pkgs[@]}" "${kernel_pkgs[@]}"

[ -x /usr/lib/qemu/virtiofsd ] || die "/usr/lib/qemu/virtiofsd missing (package qemu-system-x86)"
[ -x /bin/busybox ] || die "/bin/busybox missing (package busybox-static)"

kernels=$(list_kernels)
[ -n "$kernels" ] || die "no cloud kernel found in /boot after install"
for v in $kernels; do
    [ -d "/usr/src/linux-headers-$v" ] || echo "install-kernels: warning: no headers for $v" >&2
    echo "install-kernels: kernel $v"
done
