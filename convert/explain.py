"""Turn a converter's exception into one line naming the op, the target and a workaround (never a traceback)."""

from __future__ import annotations

import re

WORKAROUNDS = {
    "onnx": "try --exporter torchscript, or report the op",
    "executorch": "try another --quant, or add a rewrite in convert/passes.py for this op",
    "coreml": "try --target onnx or executorch, or register a coremltools op translation for it",
}

_OP = re.compile(r"(aten(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")
_COREML_OP = re.compile(r"PyTorch convert function for op '([^']+)' not implemented|Unsupported fx node ([A-Za-z0-9_.]+)")


def explain(exc: BaseException, target: str) -> str:
    """One line: `<target>: cannot convert op <op> (<workaround>)` when the message names the op."""
    text = " ".join(str(exc).split())
    workaround = WORKAROUNDS.get(target, "report the op")
    found = _COREML_OP.search(text) or _OP.search(text)
    if found:
        op = next(g for g in found.groups() if g).strip("'\",.:()")
        return f"{target}: cannot convert op {op} — {workaround} ({type(exc).__name__})"
    return f"{target}: export failed ({type(exc).__name__}: {text[:200]}) — {workaround}"
