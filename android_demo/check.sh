#!/usr/bin/env bash
# Checks of the Android sample app that run without the Android SDK (Debian bookworm, as root for --setup).
#
#   bash android_demo/check.sh --setup            idempotent: JDK, kotlinc (npm kotlin-compiler), android.jar (API 23,
#                                                 Debian bullseye android-sdk-platform-23 via a PRIVATE apt config),
#                                                 ONNX Runtime + ExecuTorch Java classes (npm). Downloads: android_demo/.tools/
#   bash android_demo/check.sh --typecheck        kotlinc type-checks ALL sources (UI + runtime wrappers + core) against
#                                                 android.jar + onnxruntime + executorch classes
#   bash android_demo/check.sh --core             compiles the pure-Kotlin core + test main for the JVM (cached by source hash)
#   bash android_demo/check.sh --test BUNDLE OUT.json [REPLAY_DIR]
#                                                 runs the JVM core test on a `cdx convert` bundle and writes a
#                                                 cdx-device-results/1 file labelled as a JVM replay (see below and
#                                                 tests/test_android_demo.py). Without REPLAY_DIR, replay_outputs.py
#                                                 writes one to a temp dir with $CDX_PYTHON (default: the repo's .venv)
#   bash android_demo/check.sh --check-bundle BUNDLE
#                                                 the JVM core checks on a bundle without replay or results file
#                                                 (a text student: tokenizer vs vectors.json and golden prompts,
#                                                 text_embedding rule), plus the shared RNG and tokenizer vectors
#   bash android_demo/check.sh                    = --setup --typecheck --core + --test on a bundle converted to a temp dir
#
# Nothing here runs inference in Kotlin: the ONNX Runtime / ExecuTorch classes are compile-time stubs for the type check
# only. The JVM test replays outputs that cdx's Python runtimes computed on the golden inputs, so its results file
# checks the app's benchmark/compare/write code path, and its latencies time a lookup, not a model.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tools="${CDX_ANDROID_TOOLS:-$here/.tools}"  # override: tests point it at a copy
build="$here/.build"
src_main="$here/app/src/main/java"
core_rel="org/cdx/androiddemo/core"
test_src="$here/app/src/test/java"

KOTLIN_VERSION="2.4.20"
ORT_NPM="com.github.asus4.onnxruntime@0.4.9"
ET_NPM="react-native-executorch@0.8.5"
PLATFORM_DEB="android-sdk-platform-23"  # Debian bullseye: android.jar API 23 ...
PLATFORM_JAR_DEB="libandroid-23-java"  # ... which links to the jar this one ships (both fetched; only the jar is kept)

if [ -n "${CDX_PYTHON:-}" ]; then python="$CDX_PYTHON"
elif [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"
else python="python3"; fi

log() { echo "android_demo/check.sh: $*"; }
die() { echo "android_demo/check.sh: error: $*" >&2; exit 1; }

kotlinc_bin="$tools/kotlinc/bin/kotlinc"
android_jar="$tools/android-23/android.jar"
ort_jar="$tools/onnxruntime/classes.jar"
et_jar="$tools/executorch/classes.jar"

apt_updated=0
apt_install() {
    [ "$(id -u)" = 0 ] || die "need root to apt-get install $* (or install it yourself)"
    export DEBIAN_FRONTEND=noninteractive
    local lock=(-o DPkg::Lock::Timeout=600)  # wait for another apt/dpkg instead of failing on its lock
    if [ "$apt_updated" = 0 ]; then apt-get "${lock[@]}" update -qq || die "apt-get update failed"; apt_updated=1; fi
    apt-get "${lock[@]}" install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

# npm_fetch SPEC: download the package tarball only (npm pack: no dependencies, no install scripts) into a fresh
# folder under $tools; sets fetched_dir and fetched_tgz. Only ever call fetched_cleanup on that folder.
fetched_dir=""; fetched_tgz=""
npm_fetch() {
    fetched_dir="$(mktemp -d "$tools/npm.XXXXXX")" || die "mktemp failed"
    [ -n "$fetched_dir" ] && [ -d "$fetched_dir" ] || die "mktemp gave no folder"
    (cd "$fetched_dir" && npm pack --prefer-offline --silent --loglevel=error "$1" >/dev/null) || die "npm pack $1 failed"
    fetched_tgz="$(find "$fetched_dir" -maxdepth 1 -name '*.tgz' -type f | head -n1)"
    [ -n "$fetched_tgz" ] || die "npm pack $1 wrote no .tgz"
}
fetched_cleanup() {
    case "$fetched_dir" in "$tools"/npm.*) rm -rf -- "$fetched_dir" ;; *) die "refusing to delete '$fetched_dir'" ;; esac
    fetched_dir=""; fetched_tgz=""
}

setup() {
    mkdir -p "$tools"
    # Leftovers of an interrupted run: our own mktemp folders holding npm tarballs (never links).
    local stale; for stale in "$tools"/npm.*; do [ -d "$stale" ] && [ ! -L "$stale" ] && rm -rf -- "$stale"; done
    if ! command -v javac >/dev/null 2>&1; then log "installing default-jdk-headless"; apt_install default-jdk-headless; fi
    if ! command -v npm >/dev/null 2>&1; then log "installing nodejs + npm"; apt_install nodejs npm; fi
    if ! command -v unzip >/dev/null 2>&1; then log "installing unzip"; apt_install unzip; fi

    if [ ! -x "$kotlinc_bin" ] || ! grep -qx "$KOTLIN_VERSION" "$tools/kotlinc/.cdx-version" 2>/dev/null; then
        log "fetching npm kotlin-compiler@$KOTLIN_VERSION"
        npm_fetch "kotlin-compiler@$KOTLIN_VERSION"
        rm -rf -- "$tools/kotlinc" "$tools/kotlinc.tmp"; mkdir -p "$tools/kotlinc.tmp"
        tar xzf "$fetched_tgz" -C "$tools/kotlinc.tmp" --strip-components=1
        chmod +x "$tools/kotlinc.tmp/bin/"*
        echo "$KOTLIN_VERSION" >"$tools/kotlinc.tmp/.cdx-version"
        mv "$tools/kotlinc.tmp" "$tools/kotlinc"; fetched_cleanup
    fi

    if [ ! -f "$ort_jar" ]; then
        log "fetching ONNX Runtime Android classes from npm $ORT_NPM (~150 MB download)"
        npm_fetch "$ORT_NPM"
        mkdir -p "$tools/onnxruntime"
        tar xzf "$fetched_tgz" -C "$tools/onnxruntime" --strip-components=3 package/Plugins/Android/onnxruntime.aar
        unzip -o -q "$tools/onnxruntime/onnxruntime.aar" classes.jar -d "$tools/onnxruntime"
        rm -f "$tools/onnxruntime/onnxruntime.aar"; fetched_cleanup
    fi

    if [ ! -f "$et_jar" ]; then
        log "fetching ExecuTorch Android classes from npm $ET_NPM"
        npm_fetch "$ET_NPM"
        mkdir -p "$tools/executorch"
        tar xzf "$fetched_tgz" -C "$tools/executorch" --strip-components=3 package/android/libs/classes.jar
        fetched_cleanup
    fi

    if [ ! -f "$android_jar" ]; then
        log "fetching $PLATFORM_DEB (android.jar, API 23) from Debian bullseye with a private apt configuration"
        local apt="$tools/apt" keyring="/usr/share/keyrings/debian-archive-keyring.gpg"
        [ -f "$keyring" ] || die "$keyring is missing (Debian's debian-archive-keyring package)"
        rm -rf -- "$apt"; mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc/preferences.d" "$apt/deb"
        : >"$apt/status"
        # Only this private state is touched: the system's sources, lists and dpkg status stay as they are.
        local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
                    -o "Dir::Etc::Preferences=/nonexistent" -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
                    -o "Dir::State::Lists=$apt/lists" -o "Dir::State::Status=$apt/status"
                    -o "Dir::Cache=$apt/cache" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
                    -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1" -o "Acquire::Languages=none")
        # bullseye leaves deb.debian.org for archive.debian.org some time after its LTS ends (2026-08): try both.
        local mirror got=0
        for mirror in http://deb.debian.org/debian http://archive.debian.org/debian; do
            echo "deb [signed-by=$keyring] $mirror bullseye main" >"$apt/etc/sources.list"
            if apt-get "${opts[@]}" -qq update && (cd "$apt/deb" && apt-get "${opts[@]}" -qq download "$PLATFORM_DEB" "$PLATFORM_JAR_DEB"); then
                got=1; break
            fi
            log "$PLATFORM_DEB / $PLATFORM_JAR_DEB not fetched from $mirror"
        done
        [ "$got" = 1 ] || die "could not download $PLATFORM_DEB / $PLATFORM_JAR_DEB from Debian bullseye"
        # Extract only the jar (the package's other entries are links into /usr); drop any link, keep regular files.
        mkdir -p "$apt/x"
        for deb in "$apt/deb/"*.deb; do
            dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$apt/x" --no-same-owner --wildcards '*/com.android.android-23.jar' \
                2>/dev/null || true  # a package without that file: nothing to extract
        done
        find "$apt/x" -type l -delete
        local jar; jar="$(find "$apt/x" -name 'com.android.android-23.jar' -type f | head -n1)"
        [ -n "$jar" ] || die "no com.android.android-23.jar inside $PLATFORM_JAR_DEB"
        mkdir -p "$tools/android-23"; cp "$jar" "$android_jar.tmp"; mv "$android_jar.tmp" "$android_jar"
        rm -rf -- "$apt"
    fi
    log "setup ready ($("$kotlinc_bin" -version 2>&1 | tail -n1))"
}

require_tools() {
    for f in "$kotlinc_bin" "$android_jar" "$ort_jar" "$et_jar"; do
        [ -e "$f" ] || die "$f is missing: run 'bash android_demo/check.sh --setup' first"
    done
}

# kotlinc needs a JVM heap that fits next to other work on small CI machines
export JAVA_OPTS="${JAVA_OPTS:--Xmx1g -Xss4m}"

# A cached result (the type-check's "passed" stamp, the compiled core jar) is keyed on EVERY input of the step: the
# sources (paths and contents), this script, the Kotlin version, kotlinc's jars (name, size, mtime: 94 MB are too slow
# to hash on every run, and any reinstall changes them), the sha256 of each classpath jar, and the JVM that runs
# kotlinc. Any change there re-runs the step.
toolchain_key=""
toolchain_identity() {
    if [ -z "$toolchain_key" ]; then
        toolchain_key="$({ echo "kotlin $KOTLIN_VERSION"; cat "$tools/kotlinc/.cdx-version" 2>/dev/null
                           (cd "$tools" && stat -L -c '%n %s %Y' kotlinc/lib/*.jar &&
                               sha256sum android-23/android.jar onnxruntime/classes.jar executorch/classes.jar)
                           java -version 2>&1; } | sha256sum | cut -c1-64)" || die "cannot fingerprint the toolchain"
    fi
    echo "$toolchain_key"
}
inputs_key() {  # inputs_key FILE...: the cache key of a step over these source files (see above)
    { (cd "$here" && sha256sum "${@#"$here"/}"); sha256sum <"${BASH_SOURCE[0]}"; toolchain_identity; } | sha256sum | cut -c1-16
}
typecheck_sources() { find "$src_main" -name '*.kt' | sort; }
core_sources() { find "$src_main/$core_rel" "$test_src" -name '*.kt' | sort; }

typecheck() {
    require_tools
    local sources; mapfile -t sources < <(typecheck_sources)
    local key; key="$(inputs_key "${sources[@]}")"
    local stamp="$build/typecheck.$key.ok"
    if [ -f "$stamp" ]; then log "type-check: sources, jars and kotlinc unchanged, passed before ($key)"; return 0; fi
    log "type-check: ${#sources[@]} Kotlin files against android.jar (API 23) + onnxruntime + executorch classes"
    mkdir -p "$build"; rm -rf "$build/typecheck"
    # -no-jdk: the Android platform is the JDK here, so java.* APIs missing from API 23 are caught too.
    "$kotlinc_bin" -no-jdk -no-reflect -jvm-target 1.8 -nowarn \
        -classpath "$android_jar:$ort_jar:$et_jar" -d "$build/typecheck" "${sources[@]}"
    rm -f "$build"/typecheck.*.ok; touch "$stamp"; rm -rf "$build/typecheck"
    log "type-check passed"
}

core() {
    require_tools
    local sources; mapfile -t sources < <(core_sources)
    if grep -l '^import android\.' "${sources[@]}"; then die "the core must not import android.* (files above)"; fi
    local key; key="$(inputs_key "${sources[@]}")"
    local jar="$build/core-$key.jar"
    if [ -f "$jar" ]; then log "core: sources and kotlinc unchanged, using $(basename "$jar")"; return 0; fi
    log "core: compiling ${#sources[@]} files for the JVM"
    mkdir -p "$build"
    "$kotlinc_bin" -jvm-target 17 -nowarn "${sources[@]}" -d "$build/partial-core.jar"
    rm -f "$build"/core-*.jar; mv "$build/partial-core.jar" "$jar"
}

core_jar() { ls -t "$build"/core-*.jar 2>/dev/null | head -n1; }

# Temp folders this script made with mktemp -d (and nothing else) are removed on exit.
temps=()
cleanup_temps() { local d; for d in "${temps[@]}"; do case "$d" in /tmp/cdx-android.*) rm -rf -- "$d" ;; esac; done; }
trap cleanup_temps EXIT
new_temp() { mktemp -d /tmp/cdx-android.XXXXXX || die "mktemp failed"; }  # callers add the folder to temps

run_test() {  # run_test BUNDLE OUT.json [REPLAY_DIR]
    local bundle="$1" out="$2" replay="${3:-}"
    core
    if [ -z "$replay" ]; then
        replay="$(new_temp)"; temps+=("$replay")
        log "replay: outputs of cdx's Python runtimes on the golden inputs ($python)"
        "$python" "$here/replay_outputs.py" "$bundle" "$replay"
    fi
    local jar; jar="$(core_jar)"
    java -cp "$jar:$tools/kotlinc/lib/kotlin-stdlib.jar" org.cdx.androiddemo.CoreCheckKt \
        --rng "$repo/tests/data/rng_vectors.json" --tokenizer "$repo/tests/data/tokenizer_vectors.json" --bundle "$bundle" --out "$out" --replay "$replay"
}

if [ $# -eq 0 ]; then
    setup; typecheck; core
    tmp="$(new_temp)"; temps+=("$tmp")
    cdx_bin="$(dirname "$python")/cdx"; [ -x "$cdx_bin" ] || cdx_bin="cdx"
    "$cdx_bin" convert --target onnx --quant none --quant ort -o "$tmp/bundle" >/dev/null
    run_test "$tmp/bundle" "$tmp/results.json"
    "$python" -c "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))" \
        "$tmp/results.json" "$repo/benchmarks/device_results.schema.json"
    log "all checks passed"
    exit 0
fi

while [ $# -gt 0 ]; do
    case "$1" in
        --setup) setup; shift ;;
        --typecheck) typecheck; shift ;;
        --core) core; shift ;;
        --test)
            [ $# -ge 3 ] || die "usage: check.sh --test BUNDLE OUT.json [REPLAY_DIR]"
            args=("$2" "$3"); shift 3
            if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then args+=("$1"); shift; fi
            run_test "${args[@]}" ;;
        --check-bundle)
            [ $# -ge 2 ] || die "usage: check.sh --check-bundle BUNDLE"
            core
            java -cp "$(core_jar):$tools/kotlinc/lib/kotlin-stdlib.jar" org.cdx.androiddemo.CoreCheckKt \
                --rng "$repo/tests/data/rng_vectors.json" --tokenizer "$repo/tests/data/tokenizer_vectors.json" --bundle "$2"
            shift 2 ;;
        --keys)  # print the type-check's and the core's cache keys (tests/test_android_demo.py)
            require_tools
            mapfile -t files < <(typecheck_sources); echo "typecheck $(inputs_key "${files[@]}")"
            mapfile -t files < <(core_sources); echo "core $(inputs_key "${files[@]}")"
            shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
