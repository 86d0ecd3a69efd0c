"""The machine a model was trained on, in one line (recorded in cdx.json, printed on model cards)."""

from __future__ import annotations


def describe_machine(device: str = "cpu") -> str:
    """One line naming the machine a model was trained on (recorded in cdx.json, printed on its model card)."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    accel = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu}), {accel}, torch {torch.__version__}"
