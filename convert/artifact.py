"""What a target module hands back to the driver: one artifact file and the records the manifest keeps about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Artifact:
    """One exported graph in the staging folder.

    `numeric` is False where the artifact cannot run on this machine (Core ML off macOS, a Core ML-delegated
    .pte): the parity gate then records a spec check and says so, instead of inventing numbers.
    """

    file: str
    format: str
    precision: str
    export: dict[str, Any]
    quantization: dict[str, Any] | None = None
    numeric: bool = True
    external_data: list[str] = field(default_factory=list)  # files beside `file` that it loads (ONNX > 2 GB)
    spec_check: dict[str, Any] = field(default_factory=dict)
