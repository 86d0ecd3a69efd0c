"""Run by tests/test_distill_accelerate.py under `accelerate launch` (not a test module): one real distill_student run
on every rank, then each rank writes what it holds (weight digests, the batches it drew) to REPORT/rank<r>.json."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from cdx.quiet import quiet_third_party

quiet_third_party()

from cdx.distill import distiller as module  # noqa: E402


def _digest(module_: object) -> str:
    digest = hashlib.sha256()
    for p in module_.parameters():  # type: ignore[attr-defined]
        digest.update(p.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    teacher, data, out, work, report, steps, accum = sys.argv[1:8]
    seen: list[str] = []
    holder: dict[str, object] = {}
    sample_batch, run = module.ConsistencyDistiller.sample_batch, module.ConsistencyDistiller.run

    def spy_batch(self):
        b = sample_batch(self)
        seen.append(hashlib.sha256(b["x0"].cpu().numpy().tobytes() + b["noise"].cpu().numpy().tobytes()).hexdigest())
        return b

    def spy_run(self, *args, **kwargs):
        holder["distiller"] = self
        return run(self, *args, **kwargs)

    module.ConsistencyDistiller.sample_batch, module.ConsistencyDistiller.run = spy_batch, spy_run
    config = module.DistillConfig(steps=int(steps), batch_size=2, lr=1e-3, num_solver_steps=10, checkpoint_every=2,
                                  sample_every=0, gradient_accumulation=int(accum))
    module.distill_student(teacher, Path(out), config, data=data, work_dir=Path(work), show=False)
    d = holder["distiller"]
    Path(report).mkdir(parents=True, exist_ok=True)
    Path(report, f"rank{d.rank}.json").write_text(json.dumps({  # type: ignore[attr-defined]
        "rank": d.rank, "world": d.world_size, "device": str(d.device),  # type: ignore[attr-defined]
        "student": _digest(d.accelerator.unwrap_model(d.student)), "target": _digest(d.target),  # type: ignore[attr-defined]
        "batches": seen, "history": d.history}))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
