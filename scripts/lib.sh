# Shared helpers for lockd's scripts: source it, don't run it.
# shellcheck shell=bash

# The repository root (the folder above scripts/).
LOCKD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LOCKD_ROOT

# Where the wheels for the test and demo images live.
LOCKD_WHEELS="${LOCKD_WHEELS:-/var/cache/lockd/wheels}"
export LOCKD_WHEELS

# The base image every test image starts from (no image can be pulled).
LOCKD_BASE_IMAGE="lockd/base:bookworm"

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# apt_install PACKAGE...: install Debian packages as root, refreshing the index once.
apt_install() {
    is_root || die "need root to install $* (run: sudo apt-get install -y $*)"
    if [ -z "${_LOCKD_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _LOCKD_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
