#!/bin/sh
# Install Debian's chromium for tests/test_browser.py when it is missing (the test drives it over the
# DevTools pipe, so no driver and no Python package is needed). Needs root (or sudo) and the apt mirrors.
set -eu
if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(chromium --version 2>/dev/null | head -n1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to apt-get install chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
chromium --version 2>/dev/null | head -n1
