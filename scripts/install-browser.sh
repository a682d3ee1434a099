#!/usr/bin/env bash
# Installs Debian's Chromium for the Playwright browser test of `animegen serve` (tests/serve).
# Playwright drives it through executable_path=/usr/bin/chromium, so no Playwright browser download is needed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version
