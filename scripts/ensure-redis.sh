#!/bin/sh
# Make sure a redis-server binary is on PATH. Installs Debian's package when we are root;
# otherwise stops with a message saying how to get one.
# The TLS tests make their throwaway CA with the openssl command: installed alongside.
set -e
if command -v redis-server >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server or openssl not found: installing Debian's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl >/dev/null
    # The package tries to start a system service; we only want the binary.
    exit 0
fi
echo "redis-server not found. Install it (Debian/Ubuntu: 'sudo apt-get install redis-server'," >&2
echo "macOS: 'brew install redis'), or put a redis-server binary on PATH, then re-run." >&2
exit 1
