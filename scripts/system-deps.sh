#!/usr/bin/env bash
# Install the OS packages EdgeFleet needs when they are absent (Debian/Ubuntu).
#   scripts/system-deps.sh demo   -> mosquitto
#   scripts/system-deps.sh test   -> mosquitto + PostgreSQL server binaries
set -euo pipefail
want=(mosquitto)
[ "${1:-demo}" = "test" ] && want+=(postgresql)

have() {
  case "$1" in
    mosquitto) command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] ;;
    postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 ;;
    python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
  esac
}

missing=()
for pkg in "${want[@]}" python3-venv; do have "$pkg" || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing OS packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start system services; EdgeFleet starts its own private instances
# on free loopback ports, so the system ones are not needed (and may stay running).
