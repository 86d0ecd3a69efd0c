"""The Android sample app (android_demo/): what can be checked without the Android SDK or a phone.

- `check.sh --typecheck`: kotlinc type-checks every Kotlin source of the app (activity, ONNX Runtime and ExecuTorch
  wrappers, core) against android.jar (API 23) and the two runtimes' Java classes;
- `check.sh --test`: the app's pure-Kotlin core runs on the JVM on a real `cdx convert` bundle (manifest, sha256,
  tamper / path-escape refusal, cdx-normal-v1 bit for bit, seeded inputs = golden inputs, image mapping) and drives the
  app's benchmark loop with a replay runner that returns the outputs cdx's Python onnxruntime gave on the golden inputs;
- the results file it writes is a valid cdx-device-results/1 document, labelled as a JVM replay, and
  `cdx bench ingest` merges it into a report;
- the prompt path's core: `ClipTokenizer` against tests/data/tokenizer_vectors.json, and on a text student's bundle
  (`check.sh --check-bundle`) against its vectors.json, its golden prompts → golden input_ids, and the text-embedding
  rule (generator golden input = the text encoder's golden output).

No inference runs in Kotlin here, and no latency in that file is a model's: phones do that (android_demo/README.md).
The tools come from `bash android_demo/check.sh --setup` (`make test` runs it first); without them this module
skips (fails under CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "android_demo"
CHECK = DEMO / "check.sh"
# kotlinc, android.jar and the runtimes' classes from `bash android_demo/check.sh --setup` (make test runs it);
# without them every test skips, or fails under CI=true.
pytestmark = pytest.mark.requires("android-tools")


def _env() -> dict[str, str]:
    return {**os.environ, "CDX_PYTHON": sys.executable}


def _check(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", str(CHECK), *args], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Type-check (in the background) while converting; JVM check while benchmarking the bundle for a report."""
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.report import write_report
    from cdx.convert.export import ConvertOptions, convert
    from cdx.defaults import default_student

    tmp = tmp_path_factory.mktemp("android_demo")
    start = time.perf_counter()
    typecheck = _check("--typecheck")
    try:
        bundle = tmp / "bundle"
        convert(default_student(), bundle, ConvertOptions(target="onnx", quants=("none", "ort"), seeds=(0, 1)))
        results = tmp / "device_results.json"
        jvm = _check("--test", str(bundle), str(results))
        try:
            report, _ = write_report(bench(bundle, BenchOptions(runs=3, warmup=1, threads=2, seeds=2, teacher="")),
                                     tmp / "report", plots=False)
            typecheck_out = _finish(typecheck, timeout=240)
            jvm_out = _finish(jvm, timeout=240)
        finally:
            jvm.kill()
    finally:
        typecheck.kill()
    return {"bundle": bundle, "results": results, "report": report, "typecheck": typecheck_out, "jvm": jvm_out,
            "seconds": time.perf_counter() - start}


def test_every_kotlin_source_type_checks_against_android_and_the_runtimes(run: dict[str, Any]) -> None:
    sources = sorted(p.relative_to(DEMO).as_posix() for p in (DEMO / "app/src/main/java").rglob("*.kt"))
    assert "app/src/main/java/org/cdx/androiddemo/ui/MainActivity.kt" in sources
    assert {"OrtRunner.kt", "ExecuTorchRunner.kt", "Runners.kt"} <= {Path(s).name for s in sources}
    assert "type-check passed" in run["typecheck"] or "unchanged, passed before" in run["typecheck"]


def _keys(tools: Path | None = None) -> dict[str, str]:
    env = {**_env(), **({"CDX_ANDROID_TOOLS": str(tools)} if tools else {})}
    proc = subprocess.run(["bash", str(CHECK), "--keys"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split() for line in proc.stdout.splitlines())


def test_cached_results_are_keyed_on_every_input_not_only_the_sources(tmp_path: Path) -> None:
    """The "passed before" stamp and the compiled core jar are reused only when the sources, the script, kotlinc
    (version and jars) and every classpath jar are unchanged: a different android.jar, runtime classes.jar or kotlinc
    must re-run the type-check (and kotlinc the core build)."""
    real = DEMO / ".tools"
    tools = tmp_path / "tools"
    (tools / "kotlinc" / "lib").mkdir(parents=True)
    (tools / "kotlinc" / "bin").symlink_to(real / "kotlinc" / "bin")
    for jar in (real / "kotlinc" / "lib").glob("*.jar"):
        (tools / "kotlinc" / "lib" / jar.name).symlink_to(jar)
    (tools / "kotlinc" / ".cdx-version").write_text((real / "kotlinc" / ".cdx-version").read_text())
    for part in ("android-23/android.jar", "onnxruntime/classes.jar", "executorch/classes.jar"):
        (tools / part).parent.mkdir()
        (tools / part).write_bytes((real / part).read_bytes())
    keys = _keys()
    assert _keys(tools) == keys  # the same inputs in another folder: the same keys
    seen = {keys["typecheck"]}
    stdlib = "kotlinc/lib/kotlin-stdlib.jar"
    for part in ("android-23/android.jar", "onnxruntime/classes.jar", "executorch/classes.jar", "kotlinc/.cdx-version",
                 stdlib):
        original = (tools / part).read_bytes()
        (tools / part).unlink()
        (tools / part).write_bytes(original + b"\n")
        changed = _keys(tools)
        assert changed["typecheck"] not in seen, f"the type-check stamp ignores {part}"
        seen.add(changed["typecheck"])
        if part.startswith("kotlinc"):
            assert changed["core"] != keys["core"], f"the compiled core jar ignores {part}"
        (tools / part).unlink()
        if part == stdlib:
            (tools / part).symlink_to(real / part)
        else:
            (tools / part).write_bytes(original)
    assert _keys(tools) == keys


def test_jvm_core_check_passes_on_a_real_bundle(run: dict[str, Any]) -> None:
    out = run["jvm"]
    assert "ALL PASSED" in out and "\nFAIL " not in out, out[-4000:]
    for line in ("sha256 + size of all", "tampered golden file refused", "symlink escaping the bundle refused",
                 "reproduce the golden inputs bit for bit", "normal seed=123456789 stream=0 bit-for-bit",
                 "tokenizer byte_level: 30 texts", "tokenizer merges: 30 texts", "tokenizer emoji_teacher: 40 texts",
                 "generator_8x8_ort: benchmark loop on replayed onnxruntime outputs"):
        assert f"PASS {line}" in out or any(ln.startswith("PASS") and line in ln for ln in out.splitlines()), line


def test_results_file_is_valid_labelled_as_a_replay_and_ingests(run: dict[str, Any]) -> None:
    import jsonschema

    from cdx.benchmarks.report import load_report

    document = json.loads(run["results"].read_text())
    schema = json.loads((REPO / "benchmarks" / "device_results.schema.json").read_text())
    jsonschema.validate(document, schema)
    assert "NOT a device run" in document["device"]["model"] and "JVM replay" in document["app"]["name"]
    manifest = json.loads((run["bundle"] / "manifest.json").read_text())
    assert document["bundle"]["source_weights_sha256"] == manifest["source"]["weights_sha256"]
    assert [r["model"] for r in document["results"]] == [m["name"] for m in manifest["models"]]
    for row in document["results"]:
        assert row["runtime"] == "onnxruntime" and row["backend"] == "jvm-replay" and row["latency"]["runs"] == 10
        assert row["golden"]["samples"] == 2 and row["golden"]["max_abs"] <= 1e-4 and row["golden"]["psnr_db"] > 60

    proc = subprocess.run([sys.executable, "-m", "cdx.cli", "bench", "ingest", str(run["results"]),
                           "--report", str(run["report"])], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    merged = load_report(run["report"])
    assert merged["device_results"][-1]["device"]["model"] == document["device"]["model"]



def test_jvm_prompt_path_on_a_text_students_bundle(text_onnx_export: Path, tmp_path: Path) -> None:
    """ClipTokenizer + PromptPath on the tiny text student's bundle: its vectors.json, golden prompts → the text
    encoder's golden input_ids, and the generator's golden text_embedding = the encoder's golden output (i % n);
    and the tokenizer check fails on vectors whose merges are gone."""
    out = _finish(_check("--check-bundle", str(text_onnx_export)), timeout=400)
    assert "ALL PASSED" in out and "\nFAIL " not in out, out[-4000:]
    for line in ("text_encoder: tokenizer from the manifest reproduces the bundle's vectors.json",
                 "text_encoder: golden.prompts tokenized here = the golden input_ids bit for bit",
                 "seed → cdx-normal-v1 + manifest rules reproduce the golden inputs bit for bit"):
        assert any(ln.startswith("PASS") and line in ln for ln in out.splitlines()), line
    doc = json.loads((REPO / "tests" / "data" / "tokenizer_vectors.json").read_text("utf-8"))
    next(s for s in doc["sets"] if s["name"] == "merges")["merges_txt"] = "#version: 0.2\n"
    broken = tmp_path / "no_merges.json"
    broken.write_text(json.dumps(doc), "utf-8")
    jar = max((DEMO / ".build").glob("core-*.jar"), key=lambda p: p.stat().st_mtime)
    stdlib = DEMO / ".tools" / "kotlinc" / "lib" / "kotlin-stdlib.jar"
    proc = subprocess.run(["java", "-cp", f"{jar}:{stdlib}", "org.cdx.androiddemo.CoreCheckKt", "--tokenizer", str(broken)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "FAIL tokenizer merges" in proc.stdout, proc.stdout[-3000:]
    assert "PASS tokenizer byte_level" in proc.stdout
