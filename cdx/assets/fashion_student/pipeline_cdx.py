"""A class-conditional latent diffusion pipeline for diffusers (teacher or consistency student).

cdx copies this file into every pipeline folder it saves and names it in `model_index.json`
(`"_class_name": ["pipeline_cdx", "CdxLatentPipeline"]`), so plain diffusers loads the folder:

    pipe = DiffusionPipeline.from_pretrained("assets/fashion_student")
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=1).images

It depends only on torch and diffusers. A UNet with `time_cond_proj_dim` is a guidance-distilled student
(w enters through LCM's embedding, one UNet call per step); otherwise classifier-free guidance runs with the
null class `num_class_embeds - 1`. A student whose `vae` was fit to its one-step latents may carry the optional
`multistep_vae`, which decodes its samples of 2 or more steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance scale (same as LatentConsistencyModelPipeline's)."""
    w = w.reshape(-1).to(torch.float32) * 1000.0
    half = embedding_dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if embedding_dim % 2 else emb


class CdxLatentPipeline(DiffusionPipeline):
    """unet + vae + scheduler (+ multistep_vae); class-conditional sampling with CFG (teacher) or embedded w
    (student)."""

    model_cpu_offload_seq = "unet->vae->multistep_vae"
    _optional_components = ["multistep_vae"]  # noqa: RUF012 (diffusers reads this class attribute)

    def __init__(self, unet, vae, scheduler, multistep_vae=None):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, multistep_vae=multistep_vae)

    def decoder_for(self, num_inference_steps: int):
        """`multistep_vae` for 2+ steps when the folder has one, else `vae`."""
        multistep = getattr(self, "multistep_vae", None)
        return multistep if num_inference_steps > 1 and multistep is not None else self.vae

    @property
    def null_class(self) -> int:
        return int(self.unet.config.num_class_embeds) - 1

    @torch.no_grad()
    def __call__(self, class_labels: list[int] | torch.Tensor, num_inference_steps: int = 1, guidance_scale: float = 3.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, renoise_with: str = "fresh"):
        """`renoise_with` (a student's 2+ steps): "fresh" noise between steps (LCMScheduler's) or "ddim", the
        deterministic DDIM hop with the noise the last step's input implies (TCD's γ = 0)."""
        if renoise_with not in ("fresh", "ddim"):
            raise ValueError(f"renoise_with={renoise_with!r}: expected 'fresh' or 'ddim'")
        labels = torch.as_tensor(class_labels, dtype=torch.int64).reshape(-1)
        batch = labels.shape[0]
        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        student = self.unet.config.time_cond_proj_dim is not None
        w_emb = None
        if student:
            w = torch.full((batch,), guidance_scale - 1.0)
            w_emb = guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim).to(self.unet.dtype)
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            if student:
                out = self.unet(model_input, t, encoder_hidden_states=None, class_labels=labels, timestep_cond=w_emb).sample
            else:
                both = torch.cat([model_input, model_input])
                both_labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
                cond, uncond = self.unet(both, t, encoder_hidden_states=None, class_labels=both_labels).sample.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            stepped = self.scheduler.step(out, t, latents, generator=generator)
            if student and renoise_with == "ddim" and i + 1 < len(timesteps):
                alphas = self.scheduler.alphas_cumprod
                a, a_next = alphas[int(t)], alphas[int(timesteps[i + 1])]
                implied = (latents - a.sqrt() * stepped.denoised) / (1 - a).sqrt()
                latents = a_next.sqrt() * stepped.denoised + (1 - a_next).sqrt() * implied
            else:
                latents = stepped.prev_sample
        vae = self.decoder_for(num_inference_steps)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        image = vae.decode(latents / vae.config.scaling_factor + shift).sample
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = image
        else:
            array = image.permute(0, 2, 3, 1).float().cpu().numpy()
            result = self.numpy_to_pil(array) if output_type == "pil" else array
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)

    @staticmethod
    def numpy_to_pil(images: np.ndarray):
        from PIL import Image

        images = (images * 255).round().astype("uint8")
        if images.shape[-1] == 1:
            return [Image.fromarray(image[..., 0], mode="L") for image in images]
        return [Image.fromarray(image) for image in images]
