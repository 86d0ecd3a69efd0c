"""Conditioning of a batch for the teacher (cond and null branch) and the student, per conditioning type.

Class teachers get class labels (the last class embedding is the CFG null class); text teachers get CLIP hidden
states of prompts, with the empty prompt as the unconditional branch.
"""

from __future__ import annotations

from typing import Any

import torch

from cdx.distill.loading import LatentPipelineParts
from cdx.errors import InputError


class TeacherConditioning:
    """Conditioning of a batch for the teacher (cond and null) and the student, per conditioning type."""

    def __init__(self, parts: LatentPipelineParts, class_names: list[str]):
        self.kind = parts.conditioning
        self.null_class = None
        self.embeddings = self.null_embedding = None
        if self.kind == "class_label":
            self.null_class = int(parts.unet.config.num_class_embeds) - 1
        elif self.kind == "text_embedding":
            if parts.text_encoder is None or parts.tokenizer is None:
                raise InputError(f"{parts.path}: a text-conditioned teacher needs text_encoder/ and tokenizer/")
            self.embeddings = _encode_prompts(parts, class_names)
            self.null_embedding = _encode_prompts(parts, [""])

    @property
    def guided(self) -> bool:
        return self.kind != "none"

    def kwargs(self, labels: torch.Tensor, null: bool = False) -> dict[str, Any]:
        if self.kind == "class_label":
            y = torch.full_like(labels, self.null_class) if null else labels
            return {"class_labels": y, "encoder_hidden_states": None}
        if self.kind == "text_embedding":
            emb = self.null_embedding.expand(len(labels), -1, -1) if null else self.embeddings[labels]
            return {"encoder_hidden_states": emb}
        return {}


@torch.no_grad()
def _encode_prompts(parts: LatentPipelineParts, prompts: list[str]) -> torch.Tensor:
    tokens = parts.tokenizer(prompts, padding="max_length", max_length=parts.text_sequence_length, truncation=True,
                             return_tensors="pt")
    return parts.text_encoder(tokens.input_ids)[0]
