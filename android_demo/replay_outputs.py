"""Write the outputs cdx's Python runtimes give on a bundle's golden inputs, for the JVM check's replay runner.

    python android_demo/replay_outputs.py BUNDLE OUT_DIR

For every model that runs on Android (ExecuTorch .pte without the Core ML delegate, ONNX Runtime .onnx/.ort) and also
runs on this machine, writes OUT_DIR/<model>.<output>.bin: the outputs of all golden samples stacked on axis 0, in the
manifest's dtype, little-endian (the golden files' layout). android_demo/check.sh --test feeds them to CoreCheck.kt,
whose ReplayRunner returns them in place of a real runtime: the Kotlin side runs no inference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(bundle: Path, out: Path) -> int:
    from cdx.benchmarks.bench import why_not_runnable
    from cdx.golden_io import read_golden, unstack
    from cdx.manifest import load_manifest
    from cdx.runtimes.base import open_runner

    manifest = load_manifest(bundle, verify=True)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for model in manifest["models"]:
        android = model["format"] in ("onnx", "ort") or (
            model["format"] == "pte" and model.get("export", {}).get("delegate") != "coreml")
        reason = why_not_runnable(model)
        if not android or reason:
            print(f"replay: skipped {model['name']} ({reason or 'not an Android format'})")
            continue
        runner = open_runner(bundle, manifest, model)
        inputs, _ = read_golden(bundle, model)
        outputs = [runner.run(sample) for sample in unstack(inputs)]
        for spec in model["outputs"]:
            stacked = np.concatenate([o[spec["name"]] for o in outputs])
            data = np.ascontiguousarray(stacked, dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
            (out / f"{model['name']}.{spec['name']}.bin").write_bytes(data.tobytes())
        written += 1
        print(f"replay: {model['name']}: {len(outputs)} golden samples run")
    if not written:
        print("replay: no model of this bundle runs both on Android and here", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
