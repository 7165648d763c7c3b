# Sourced by scripts/install.sh and scripts/install-kernels.sh: install only missing Debian packages.

missing_pkgs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# apt_install LABEL PKG...: apt-get update + install of the missing ones; nothing when all are there.
apt_install() {
    local label="$1" missing
    shift
    missing=$(missing_pkgs "$@")
    [ -z "$missing" ] && return 0
    echo "$label: apt packages:" $missing
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: no firmware, no apparmor; what a package needs comes as a dependency.
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}
