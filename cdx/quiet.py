"""Silence third-party import noise that is harmless here (see STACK.md) so users see only cdx's output."""

from __future__ import annotations

import logging
import os
import warnings

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
