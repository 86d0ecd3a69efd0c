"""One loader/runner interface over torch eager, ONNX Runtime, ExecuTorch and Core ML."""

from cdx.runtimes.base import RUNTIMES, Runner, load_runner

__all__ = ["RUNTIMES", "Runner", "load_runner"]
