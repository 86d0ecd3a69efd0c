#!/usr/bin/env bash
# Idempotent setup for the web demo's browser test on Debian bookworm (run as root, e.g. from .ci/setup.sh, which `make test` runs):
#   - Debian's chromium, only when /usr/bin/chromium is missing (playwright never downloads a browser here);
#   - the pinned npm packages from package-lock.json (npm ci), with onnxruntime-node's download disabled.
# Safe to run again: it skips whatever is already in place.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# apt waits for another apt/dpkg instead of failing on its lock
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "web_demo/setup.sh: /usr/bin/chromium missing (sudo apt-get install chromium fonts-dejavu-core)" >&2
        exit 1
    fi
    echo "web_demo/setup.sh: installing Debian chromium"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "web_demo/setup.sh: installing Debian nodejs + npm"
        apt_get update -qq
        apt_get install -y -qq --no-install-recommends nodejs npm >/dev/null
    else
        echo "web_demo/setup.sh: npm not found (sudo apt-get install nodejs npm; Node >= 18)" >&2
        exit 1
    fi
fi

lock="$here/package-lock.json"
stamp="$here/node_modules/.cdx-lock.sha256"
want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$here/node_modules/onnxruntime-web" ] && [ -d "$here/node_modules/playwright-core" ]; then
    echo "web_demo/setup.sh: node_modules up to date"
else
    echo "web_demo/setup.sh: npm ci"
    # onnxruntime-node (not a dependency today, but it downloads at postinstall if it ever comes in) stays off;
    # playwright-core has no install step and never fetches a browser.
    (cd "$here" && ONNXRUNTIME_NODE_INSTALL=skip PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
        npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi

/usr/bin/chromium --version 2>/dev/null || true
echo "web_demo/setup.sh: ready"
