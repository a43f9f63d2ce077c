#!/bin/sh
# Chromium for the dashboard's browser tests. Installs Debian's package when we are root;
# otherwise says how, and the browser tests skip (saying so). Never fails the build.
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found: installing Debian's chromium package (browser tests)" >&2
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
        echo "could not install chromium: the dashboard's browser tests will skip" >&2
    exit 0
fi
echo "chromium not found (and not root): the dashboard's browser tests will skip." >&2
echo "Install it ('sudo apt-get install chromium') to run them." >&2
exit 0
