#!/usr/bin/env bash
# Build the cdx native benchmark runners (cdx_ort_runner, cdx_et_runner, cdx_rng_selftest) into runtimes/native/build/.
#
# Idempotent; meant to run as root on a fresh Debian bookworm (CI) from a clone where .venv is installed:
#   1. apt-get install the toolchain (cmake, g++, make, nlohmann-json3-dev, npm) -- only what is missing
#   2. npm pack com.github.asus4.onnxruntime@0.4.9 (ONNX Runtime C/C++ headers, Linux x64 .so, Android AAR) and unpack
#      it into runtimes/native/third_party/onnxruntime/ (git-ignored; skipped when already unpacked)
#   3. locate the ExecuTorch C++ SDK inside the executorch wheel of .venv
#   4. cmake configure + build (-j2)
#   5. smoke test: cdx_rng_selftest on tests/data/rng_vectors.json
# Environment: CDX_VENV (default <repo>/.venv), JOBS (default 2), CDX_SKIP_APT=1 (toolchain already present).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${CDX_VENV:-$REPO/.venv}"
JOBS="${JOBS:-2}"
ORT_NPM="com.github.asus4.onnxruntime"
ORT_NPM_VERSION="0.4.9"
THIRD="$HERE/third_party"
ORT_ROOT="$THIRD/onnxruntime"
BUILD="$HERE/build"

say() { printf '\n== cdx native: %s\n' "$*"; }

# 1. toolchain ---------------------------------------------------------------------------------------------------
# A tool counts as present when its command (or header) exists, however it was installed (e.g. npm from nodesource).
declare -A NEEDS=([cmake]="command -v cmake" [g++]="command -v g++" [make]="command -v make"
                  [nlohmann-json3-dev]="test -f /usr/include/nlohmann/json.hpp" [npm]="command -v npm"
                  [ca-certificates]="test -d /etc/ssl/certs")
if [[ "${CDX_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${!NEEDS[@]}"; do
    eval "${NEEDS[$p]}" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "apt-get install ${missing[*]}"
    [[ "$(id -u)" == 0 ]] || { echo "cdx native: missing ${missing[*]}: sudo apt-get install ${missing[*]}" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "toolchain present: cmake $(cmake --version | head -1 | cut -d' ' -f3), g++ $(g++ -dumpfullversion), make, nlohmann-json3-dev, npm $(npm --version 2>/dev/null)"
  fi
fi

# 2. ONNX Runtime SDK from npm ----------------------------------------------------------------------------------
STAMP="$ORT_ROOT/.from-$ORT_NPM-$ORT_NPM_VERSION"
if [[ -f "$STAMP" ]]; then
  say "ONNX Runtime SDK already unpacked in $ORT_ROOT ($ORT_NPM@$ORT_NPM_VERSION)"
else
  say "npm pack $ORT_NPM@$ORT_NPM_VERSION (~150 MB) -> $ORT_ROOT"
  rm -rf "$ORT_ROOT" "$THIRD/npm"
  mkdir -p "$THIRD/npm" "$ORT_ROOT/include" "$ORT_ROOT/lib/linux-x64" "$ORT_ROOT/android"
  (cd "$THIRD/npm" && npm pack --prefer-offline --silent "$ORT_NPM@$ORT_NPM_VERSION" >/dev/null)
  TGZ="$(ls "$THIRD"/npm/*.tgz)"
  HEADERS='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers'
  tar -xzf "$TGZ" -C "$THIRD/npm" --wildcards "$HEADERS/*" 'package/Plugins/Linux/x64/*.so' \
      'package/Plugins/Android/onnxruntime.aar' package/package.json package/LICENSE package/ThirdPartyNotices.txt
  # The C/C++ headers are platform independent; the package carries them inside the iOS framework.
  cp "$THIRD/npm/$HEADERS"/*.h "$ORT_ROOT/include/"
  cp "$THIRD/npm/package/Plugins/Linux/x64/"*.so "$ORT_ROOT/lib/linux-x64/"
  ln -sf libonnxruntime.so "$ORT_ROOT/lib/linux-x64/libonnxruntime.so.1"   # its SONAME
  cp "$THIRD/npm/package/Plugins/Android/onnxruntime.aar" "$ORT_ROOT/android/"
  cp "$THIRD/npm/package/LICENSE" "$THIRD/npm/package/ThirdPartyNotices.txt" "$THIRD/npm/package/package.json" "$ORT_ROOT/"
  rm -rf "$THIRD/npm"
  echo "$ORT_NPM@$ORT_NPM_VERSION" > "$STAMP"
fi
echo "   headers:  $ORT_ROOT/include ($(grep -m1 '#define ORT_API_VERSION' "$ORT_ROOT/include/onnxruntime_c_api.h"))"
echo "   library:  $ORT_ROOT/lib/linux-x64/libonnxruntime.so"
echo "   Android:  $ORT_ROOT/android/onnxruntime.aar (jni/<abi>/libonnxruntime.so + headers/, for NDK builds)"

# 3. ExecuTorch SDK from the wheel ---------------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "cdx native: no Python venv at $VENV (set CDX_VENV): the ExecuTorch C++ SDK comes from its executorch wheel" >&2
  exit 1
fi
ET_ROOT="$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("executorch"); print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else "")')"
if [[ -z "$ET_ROOT" || ! -f "$ET_ROOT/lib/libexecutorch.so" ]]; then
  echo "cdx native: the executorch wheel in $VENV has no C++ SDK (lib/libexecutorch.so); pip install executorch==1.5.1" >&2
  exit 1
fi
say "ExecuTorch C++ SDK: $ET_ROOT"

# 4. build --------------------------------------------------------------------------------------------------------
say "cmake configure + build (-j$JOBS) -> $BUILD"
cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCDX_EXECUTORCH_ROOT="$ET_ROOT" -DCDX_ORT_ROOT="$ORT_ROOT" >/dev/null
cmake --build "$BUILD" -j "$JOBS"

# 5. smoke test ---------------------------------------------------------------------------------------------------
say "smoke test"
"$BUILD/cdx_rng_selftest" "$REPO/tests/data/rng_vectors.json"
"$BUILD/cdx_ort_runner" --help | head -1
"$BUILD/cdx_et_runner" --help | head -1
say "done: $BUILD/cdx_ort_runner, $BUILD/cdx_et_runner, $BUILD/cdx_rng_selftest"
