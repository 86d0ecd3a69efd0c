"""Conditioning of a batch for the teacher (cond and null branch) and the student, per conditioning type.

Class teachers get class labels (the last class embedding is the CFG null class); text teachers get the frozen text
encoder's hidden states of each batch's own captions (`prompt_embeds` in the batch), with the empty prompt as the
unconditional branch; `class_names` are the prompts of sample-grid rows (class names, or example captions).
"""

from __future__ import annotations

from typing import Any

import torch

from cdx.distill.loading import LatentPipelineParts
from cdx.errors import InputError


class TeacherConditioning:
    """Conditioning of a batch for the teacher (cond and null) and the student, per conditioning type."""

    def __init__(self, parts: LatentPipelineParts, class_names: list[str]):
        self.kind, self.parts = parts.conditioning, parts
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

    def kwargs(self, labels: torch.Tensor, null: bool = False, prompt_embeds: torch.Tensor | None = None) -> dict[str, Any]:
        """UNet keyword arguments; text teachers use `prompt_embeds` when given, else the `class_names` rows `labels`."""
        if self.kind == "class_label":
            y = torch.full_like(labels, self.null_class) if null else labels
            return {"class_labels": y, "encoder_hidden_states": None}
        if self.kind == "text_embedding":
            if null:
                emb = self.null_embedding.expand(len(labels), -1, -1)
            else:
                emb = prompt_embeds if prompt_embeds is not None else self.embeddings[labels.to(self.embeddings.device)]
            return {"encoder_hidden_states": emb}
        return {}

    def batch_kwargs(self, batch: dict[str, Any], null: bool = False) -> dict[str, Any]:
        """UNet keyword arguments of a training batch (its labels, or its captions' `prompt_embeds`)."""
        return self.kwargs(batch["labels"], null=null, prompt_embeds=batch.get("prompt_embeds"))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states of `prompts` (frozen, no grad): a text teacher's conditioning of one batch."""
        return _encode_prompts(self.parts, prompts)


@torch.no_grad()
def _encode_prompts(parts: LatentPipelineParts, prompts: list[str]) -> torch.Tensor:
    tokens = parts.tokenizer(prompts, padding="max_length", max_length=parts.text_sequence_length, truncation=True,
                             return_tensors="pt")
    device = next(parts.text_encoder.parameters()).device
    return parts.text_encoder(tokens.input_ids.to(device))[0]
