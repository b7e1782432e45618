# shellcheck shell=bash
# Sourced by scripts/test and scripts/bench: eventbus_ensure_packages <debian-package>...
# Prints the missing packages first; then installs them with apt-get when running as root (the
# exact commands are printed too), otherwise prints the exact command to run and exits 1.

eventbus_pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]
}

eventbus_ensure_packages() {
    local missing=() pkg
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "note: not a Debian-based system; make sure these are installed: $*" >&2
        return 0
    fi
    for pkg in "$@"; do
        eventbus_pkg_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0

    local install="apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ "$(id -u)" -eq 0 ]]; then
        echo "Installing missing Debian packages: ${missing[*]}" >&2
        echo "    apt-get update && $install" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "error: missing Debian packages: ${missing[*]}" >&2
        echo "Install them with:" >&2
        echo "    sudo apt-get update && sudo $install" >&2
        exit 1
    fi
}
