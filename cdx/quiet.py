"""Silence third-party import noise that is harmless here (see STACK.md) so users see only cdx's output."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch.onnx", "torch._export", "torch.export", "coremltools",
                  "executorch", "onnxscript", "root")


def quiet_third_party() -> None:
    """Lower third-party log levels and warnings; call before importing torch/diffusers."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TORCH_LOGS", "-onnx")  # torch re-levels its registered loggers at import: ERROR for onnx
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


# Lines native libraries print straight to file descriptor 2 that say nothing to a cdx user: ExecuTorch's XNNPACK
# cpuinfo probe looks for ARM registers on every load (`[cpuinfo_utils.cpp:87] Failed to open midr file ...`).
NATIVE_NOISE = re.compile(rb"^\[cpuinfo_utils\.cpp:\d+\] ")


@contextlib.contextmanager
def filtered_stderr(drop: re.Pattern[bytes] = NATIVE_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 (where C++ writes, past Python's sys.stderr) while the block runs, then pass on
    every line except those matching `drop`. Meant for one-off native calls (program/method loads), not timed loops."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True) if not drop.match(line))
            if kept:
                os.write(2, kept)
