#!/usr/bin/env bash
# A Debian 12 root as debian:12-slim has it, made here with debootstrap: no registry pull.
#
#   scripts/image/base.sh          prints the path of the tarball (build/image/debian-12-base.tar)
#
# debootstrap --variant=minbase is what the official image starts from; the "slim" part is
# dpkg's path excludes (no docs but copyright files, no man pages, no translations) and apt's
# clean-up hooks. The mirror is this machine's own (scripts/image/apt_sources.py reads apt's
# sources, deb822 too), and so are the image's apt sources. Cached: the tarball is remade only
# when this script, the sources reader or the host's Debian sources change. Shared by
# `make image` and tests/e2e/test_deploy.py (the Dockerfile's steps in a chroot).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SUITE=bookworm
OUT_DIR=$ROOT/build/image
OUT=$OUT_DIR/debian-12-base.tar
HERE=$ROOT/scripts/image

die() { echo "image base: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/install.sh dev installs it)"

mirror=$(python3 "$HERE/apt_sources.py" mirror "$SUITE")
sources=$(python3 "$HERE/apt_sources.py" sources "$SUITE")
# apt's own proxy setting, for debootstrap's downloads (it does not read apt.conf).
if [ -z "${http_proxy:-}" ]; then
    eval "$(apt-config shell http_proxy Acquire::http::Proxy)"
    [ -n "${http_proxy:-}" ] && export http_proxy
fi
key=$(printf '%s\n%s\n' "$mirror" "$sources" | cat - "${BASH_SOURCE[0]}" "$HERE/apt_sources.py" | sha256sum | cut -d' ' -f1)

fresh() { [ -f "$OUT" ] && [ "$(cat "$OUT.key" 2>/dev/null)" = "$key" ]; }
if fresh; then echo "$OUT"; exit 0; fi

mkdir -p "$OUT_DIR"
exec 9>"$OUT_DIR/.base.lock"
flock 9
if fresh; then echo "$OUT"; exit 0; fi  # made by a concurrent run meanwhile

df -h "$OUT_DIR" | tail -1 | awk '{print "image base: " $4 " free on " $6}' >&2
tree=$OUT_DIR/base-tree
rm -rf "$tree"
start=$(date +%s)
echo "image base: debootstrap --variant=minbase $SUITE from $mirror" >&2
if ! debootstrap --variant=minbase "$SUITE" "$tree" "$mirror" >"$OUT_DIR/debootstrap.log" 2>&1; then
    tail -20 "$OUT_DIR/debootstrap.log" >&2
    die "debootstrap failed (log: $OUT_DIR/debootstrap.log)"
fi

# The image's apt: the host's Debian archives (updates and security too), deb822 like the
# official image; nothing of the building machine (hostname, resolver) stays behind.
rm -f "$tree/etc/apt/sources.list"
printf '%s\n' "$sources" >"$tree/etc/apt/sources.list.d/debian.sources"
rm -f "$tree/etc/resolv.conf" "$tree/etc/hostname"
cat >"$tree/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
# As debian:12-slim: no documentation but the copyright files, no man pages, no translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
cat >"$tree/etc/apt/apt.conf.d/slim" <<'EOF'
// As debian:12-slim: downloaded packages and binary caches are deleted after every run.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
find "$tree/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$tree/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$tree"/usr/share/{man,groff,info,lintian,linda,locale}/* \
    "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin "$tree"/var/cache/apt/archives/*.deb \
    "$tree"/var/log/* "$tree"/tmp/*

tar --numeric-owner --xattrs --xattrs-include='security.capability' -C "$tree" -cf "$OUT.tmp" .
mv -f "$OUT.tmp" "$OUT"
echo "$key" >"$OUT.key"
rm -rf "$tree"
echo "image base: $OUT ($(( $(stat -c %s "$OUT") / 1048576 )) MiB) in $(( $(date +%s) - start )) s" >&2
echo "$OUT"
