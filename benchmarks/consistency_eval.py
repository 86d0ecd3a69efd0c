"""The seed's evaluation protocol for a consistency student (`cdx evaluate --consistency`).

1. Reconstruction vs t: for held-out test images x₀ (VAE latents z₀), draw 256 random timesteps per image,
   z_t = √ᾱ_t·z₀ + √(1-ᾱ_t)·ε, and measure ‖f(z_t, t) − z₀‖ — in **latent space** (Euclidean over the whole latent,
   and its RMS per element) and in **pixels** (RMS of decode(f) − x₀, images in [0, 1]) — binned by t.
   f is the student's consistency function c_skip(t)·z + c_out(t)·x̂₀(z, t) (`cdx.distill.consistency`), with the
   image's own label and guidance w. At t = 0 the boundary condition (c_skip = 1, c_out = 0) makes f(z, 0) = z.
2. Reconstructions at five timesteps (a PNG: the originals, then z_t and f(z_t, t) decoded for each t).
3. Self-consistency along the TEACHER's probability-flow ODE: trajectories from noise with the distiller's own DDIM
   step and CFG at w, on the distillation grid (t_n = 999, 979, …, 19, then the boundary t = 0). An ideal consistency
   function is constant along a trajectory; we plot ‖f(x_{t_n}, t_n) − f(x_{t_{n-1}}, t_{n-1})‖ (adjacent grid points:
   what CD trains) and ‖f(x_{t_n}, t_n) − x_boundary‖ (the trajectory's end: what one-step sampling relies on) vs t.

Everything works on callables (f, the teacher's ε), so tests can plug in a model with a known answer.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.atomic import atomic_write_text
from cdx.errors import InputError

ConsistencyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # f(latents, timesteps, labels)
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # guided ε̂(latents, timesteps, labels)
RECON_TIMESTEPS = (0, 250, 500, 750, 999)  # grid columns; 999 ≈ pure noise, where one-step sampling starts


@dataclass(frozen=True)
class Schedule:
    """ᾱ_t for t = 0..T-1 (float64) from the scheduler config, never re-typed."""

    alphas_cumprod: torch.Tensor

    @classmethod
    def of(cls, scheduler_config: dict[str, Any]) -> Schedule:
        from cdx.distill.consistency import alphas_cumprod

        return cls(alphas_cumprod(scheduler_config))

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def noise(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].to(z0.dtype).reshape(-1, *([1] * (z0.ndim - 1)))
        return a.sqrt() * z0 + (1 - a).sqrt() * eps


def _unet_kwargs(unet: torch.nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """UNet2DModel takes no `encoder_hidden_states` (class-conditional pipelines may use either UNet class)."""
    if type(unet).__name__ == "UNet2DModel":
        return {k: v for k, v in kwargs.items() if k != "encoder_hidden_states"}
    return kwargs


def student_consistency_fn(unet: torch.nn.Module, scheduler_config: dict[str, Any], cond, guidance: float,
                           parameterization: str = "lcm") -> ConsistencyFn:
    """The student's f(z, t) for per-sample timesteps, from the same boundary scalings distillation trains with."""
    from cdx.distill.consistency import alphas_cumprod, boundary_scalings, guidance_scale_embedding, predicted_x0

    acp = alphas_cumprod(scheduler_config).to(torch.float32)
    scalings = [boundary_scalings(t, scheduler_config, parameterization) for t in range(len(acp))]  # type: ignore[arg-type]
    c_skip = torch.tensor([s[0] for s in scalings], dtype=torch.float32)
    c_out = torch.tensor([s[1] for s in scalings], dtype=torch.float32)
    prediction_type = str(scheduler_config.get("prediction_type", "epsilon"))
    dim = getattr(unet.config, "time_cond_proj_dim", None)

    @torch.no_grad()
    def f(latents: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kwargs = _unet_kwargs(unet, dict(cond.kwargs(labels)))
        if dim:
            kwargs["timestep_cond"] = guidance_scale_embedding(torch.full((len(labels),), guidance - 1.0), dim)
        shape = (-1, *([1] * (latents.ndim - 1)))
        x0 = predicted_x0(unet(latents, t, **kwargs).sample, latents, acp[t].reshape(shape), prediction_type)
        return c_skip[t].reshape(shape) * latents + c_out[t].reshape(shape) * x0

    return f


def teacher_eps_fn(unet: torch.nn.Module, cond, guidance: float) -> EpsFn:
    """The teacher's classifier-free-guided ε̂ (the prediction its ODE solver steps with during distillation)."""

    @torch.no_grad()
    def eps(latents: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        e_c = unet(latents, t, **_unet_kwargs(unet, cond.kwargs(labels))).sample
        if not cond.guided:
            return e_c
        e_u = unet(latents, t, **_unet_kwargs(unet, cond.kwargs(labels, null=True))).sample
        return e_u + guidance * (e_c - e_u)

    return eps


# ---- 1. reconstruction distance vs t ------------------------------------------------------------------------------
def reconstruction_errors(f: ConsistencyFn, z0: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                          per_image: int = 256, seed: int = 0, batch: int = 512,
                          decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          images01: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per (image, random t): t, ‖f(z_t, t) − z₀‖₂ over the latent, and (with `decode`) the pixel RMS vs `images01`."""
    gen = torch.Generator().manual_seed(seed)
    n = len(z0)
    idx = torch.arange(n).repeat_interleave(per_image)
    t = torch.randint(0, schedule.num_timesteps, (n * per_image,), generator=gen)
    eps = torch.randn((n * per_image, *z0.shape[1:]), generator=gen)
    dist, pixel = [], []
    for start in range(0, len(idx), batch):
        sl = slice(start, start + batch)
        target = z0[idx[sl]]
        out = f(schedule.noise(target, t[sl], eps[sl]), t[sl], labels[idx[sl]])
        dist.append((out - target).flatten(1).norm(dim=1))
        if decode is not None and images01 is not None:
            pixel.append((decode(out) - images01[idx[sl]]).flatten(1).pow(2).mean(1).sqrt())
    out = {"image": idx.numpy(), "t": t.numpy(), "latent_l2": torch.cat(dist).numpy().astype(np.float64),
           "latent_dim": np.asarray(math.prod(z0.shape[1:]))}
    if pixel:
        out["pixel_rms"] = torch.cat(pixel).numpy().astype(np.float64)
    return out


def bin_by_t(t: np.ndarray, values: np.ndarray, num_timesteps: int, bins: int = 10) -> list[dict[str, float]]:
    """Mean, std, median and count of `values` in `bins` equal-width bins of t over [0, num_timesteps)."""
    edges = np.linspace(0, num_timesteps, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        v = values[(t >= lo) & (t < hi)]
        out.append({"t_lo": float(lo), "t_hi": float(hi), "count": int(v.size),
                    "mean": float(v.mean()) if v.size else math.nan, "std": float(v.std()) if v.size else math.nan,
                    "median": float(np.median(v)) if v.size else math.nan})
    return out


# ---- 3. self-consistency along teacher ODE trajectories -------------------------------------------------------
def distillation_grid(num_train_timesteps: int, num_solver_steps: int) -> list[int]:
    """The CD grid from high to low noise, ending at the boundary t = 0 (the distiller's skipping_timesteps)."""
    from cdx.distill.solvers import skipping_timesteps

    return [int(t) for t in skipping_timesteps(num_train_timesteps, num_solver_steps).flip(0)] + [0]


def teacher_trajectories(eps: EpsFn, noise: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                         grid: list[int]) -> list[torch.Tensor]:
    """x at every grid point (grid[0] = the noise), stepping with the distiller's DDIM step between grid points."""
    from cdx.distill.solvers import ddim_step

    acp = schedule.alphas_cumprod.to(noise.dtype)
    xs = [noise]
    for t, s in itertools.pairwise(grid):
        tt, ss = torch.full((len(noise),), t, dtype=torch.int64), torch.full((len(noise),), s, dtype=torch.int64)
        xs.append(ddim_step(lambda x, time: eps(x, time, labels), xs[-1], tt, ss, acp))
    return xs


def self_consistency_gaps(f: ConsistencyFn, trajectory: list[torch.Tensor], labels: torch.Tensor,
                          grid: list[int]) -> dict[str, Any]:
    """Per grid point t_n (all but the boundary): mean/std over trajectories of the adjacent and to-boundary gaps (L2)."""
    outs = [f(x, torch.full((len(x),), t, dtype=torch.int64), labels) for x, t in zip(trajectory, grid, strict=True)]
    boundary = outs[-1]
    rows = []
    for n in range(len(grid) - 1):
        adjacent = (outs[n] - outs[n + 1]).flatten(1).norm(dim=1)
        to_end = (outs[n] - boundary).flatten(1).norm(dim=1)
        rows.append({"t": grid[n], "t_next": grid[n + 1], "adjacent_mean": float(adjacent.mean()),
                     "adjacent_std": float(adjacent.std()) if len(adjacent) > 1 else 0.0,
                     "boundary_mean": float(to_end.mean()), "boundary_std": float(to_end.std()) if len(to_end) > 1 else 0.0})
    return {"rows": rows, "outputs": outs}


# ---- plots -------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> Path:
    import io

    from cdx.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_binned(bins: dict[str, list[dict[str, float]]], labels: dict[str, str], title: str, path: Path) -> Path:
    """One panel per binned series: mean ± std against the bin centre."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(bins), figsize=(5 * len(bins), 3.6), squeeze=False)
    for ax, (key, rows) in zip(axes[0], bins.items(), strict=True):
        centre = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
        mean, std = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
        ax.errorbar(centre, mean, yerr=std, marker="o", capsize=3)
        ax.set_xlabel("timestep t")
        ax.set_ylabel(labels[key])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    path = _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_self_consistency(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Adjacent-point and to-boundary gaps along the teacher's trajectories vs t (mean ± std over trajectories)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    t = np.array([r["t"] for r in rows])
    for key, label in (("adjacent", "‖f(x_tn, t_n) − f(x_tn−1, t_n−1)‖ (adjacent grid points)"),
                       ("boundary", "‖f(x_tn, t_n) − x_boundary‖ (trajectory end, t = 0)")):
        mean, std = np.array([r[f"{key}_mean"] for r in rows]), np.array([r[f"{key}_std"] for r in rows])
        ax.plot(t, mean, marker=".", label=label)
        ax.fill_between(t, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("timestep t_n (teacher DDIM trajectory, distillation grid)")
    ax.set_ylabel("latent L2 distance")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    path = _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_reconstruction_grid(originals: torch.Tensor, noisy: list[torch.Tensor], recon: list[torch.Tensor],
                             timesteps: tuple[int, ...], path: Path) -> Path:
    """Rows: the originals, then for each t the noisy input z_t and f(z_t, t), decoded (images in [0, 1])."""
    plt = _pyplot()
    rows = [("original", originals)]
    for t, x, y in zip(timesteps, noisy, recon, strict=True):
        rows += [(f"z_t, t={t}", x), (f"f(z_t, t), t={t}", y)]
    n = len(originals)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n + 1.6, 0.9 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = images[c].detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    path = _save_figure(fig, path)
    plt.close(fig)
    return path


# ---- the whole protocol on pipeline folders -------------------------------------------------------------------------
def encode_images(parts, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Scaled VAE latents (posterior mean) of images in [-1, 1]: the z₀ the student was distilled on."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            enc = parts.vae.encode(images[start : start + batch])
            z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
            out.append((z - (parts.latent_shift_factor or 0.0)) * parts.latent_scaling_factor)
    return torch.cat(out)


def _decoder(parts) -> Callable[[torch.Tensor], torch.Tensor]:
    from cdx.distill.sampling import decode_latents

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(parts.vae, latents, parts.latent_scaling_factor, parts.latent_shift_factor)

    return decode


def evaluate_consistency(student_dir: str, teacher_dir: str, out_dir: Path, n_images: int = 100, per_image: int = 256,
                         trajectories: int = 32, guidance: float = 3.0, seed: int = 0, data_dir: str | None = None,
                         images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                         progress=None) -> dict[str, Any]:
    """Run the three measurements and write consistency.json + three PNGs into `out_dir`.

    Held-out images: the first `n_images` Fashion-MNIST test images (or `images` in [-1, 1] with `labels`).
    """
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline, read_cdx_info

    say = progress or (lambda _m: None)
    if n_images < 1 or per_image < 1 or trajectories < 1:
        raise InputError("--n, the timesteps per image and the trajectories must be ≥ 1")
    student, teacher = load_latent_pipeline(student_dir), load_latent_pipeline(teacher_dir)
    info = read_cdx_info(Path(student_dir))
    parameterization = info.get("parameterization", "lcm")
    if images is None:
        from cdx.distill.data import load_fashion_mnist

        data = load_fashion_mnist(data_dir, split="test", limit=n_images)
        images, labels = data.images, data.labels
    if labels is None:
        raise InputError("held-out images need their labels")
    images, labels = images[:n_images], labels[:n_images]
    cond = TeacherConditioning(teacher, teacher.class_names or ["an image"])
    schedule = Schedule.of(student.scheduler_config)
    f = student_consistency_fn(student.unet.eval(), student.scheduler_config, cond, guidance, parameterization)
    decode = _decoder(student)
    images01 = (images + 1) / 2
    say(f"reconstruction: {len(images)} held-out images × {per_image} random timesteps")
    z0 = encode_images(student, images)
    errors = reconstruction_errors(f, z0, labels, schedule, per_image, seed, decode=decode, images01=images01)
    d = int(errors["latent_dim"])
    T = schedule.num_timesteps
    bins = {"latent_l2": bin_by_t(errors["t"], errors["latent_l2"], T),
            "latent_rms": bin_by_t(errors["t"], errors["latent_l2"] / math.sqrt(d), T),
            "pixel_rms": bin_by_t(errors["t"], errors["pixel_rms"], T)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_binned({k: bins[k] for k in ("latent_rms", "pixel_rms")},
                {"latent_rms": "‖f(z_t, t) − z₀‖ / √d (latent RMS)", "pixel_rms": "RMS(decode(f) − x₀), pixels in [0, 1]"},
                f"reconstruction of held-out test images vs t (w = {guidance:g}, {per_image} t per image)",
                out_dir / "reconstruction_vs_t.png")

    say("reconstructions at five timesteps")
    show = min(8, len(images))
    gen = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn((show, *z0.shape[1:]), generator=gen)
    noisy, recon = [], []
    for t in RECON_TIMESTEPS:
        tt = torch.full((show,), min(t, T - 1), dtype=torch.int64)
        z_t = schedule.noise(z0[:show], tt, eps)
        noisy.append(decode(z_t))
        recon.append(decode(f(z_t, tt, labels[:show])))
    plot_reconstruction_grid(images01[:show], noisy, recon, RECON_TIMESTEPS, out_dir / "reconstructions.png")

    say(f"self-consistency along {trajectories} teacher ODE trajectories")
    num_solver_steps = int(info.get("distill", {}).get("num_solver_steps")
                           or student.scheduler_config.get("original_inference_steps", 50))
    grid = distillation_grid(T, num_solver_steps)
    traj_labels = torch.arange(trajectories) % max(1, teacher.num_classes or len(teacher.class_names) or 1)
    size = int(teacher.unet.config.sample_size)
    noise = torch.randn((trajectories, teacher.latent_channels, size, size), generator=torch.Generator().manual_seed(seed + 2))
    path = teacher_trajectories(teacher_eps_fn(teacher.unet.eval(), cond, guidance), noise, traj_labels, schedule, grid)
    gaps = self_consistency_gaps(f, path, traj_labels, grid)
    plot_self_consistency(gaps["rows"], f"self-consistency along teacher DDIM trajectories (w = {guidance:g}, CFG)",
                          out_dir / "self_consistency.png")
    at_zero = errors["latent_l2"][errors["t"] == 0]
    result = {
        "student": student_dir, "teacher": teacher_dir, "guidance": guidance, "parameterization": parameterization,
        "held_out": {"images": len(images), "timesteps_per_image": per_image, "seed": seed,
                     "source": "Fashion-MNIST test split (first n)" if data_dir is not None or info else "given images"},
        "spaces": {"latent": f"VAE latent ({'×'.join(str(s) for s in z0.shape[1:])} = {d} values), L2 over the latent; "
                             "latent_rms = L2 / √d", "pixel": "decoded image in [0, 1], RMS over pixels"},
        "reconstruction": bins,
        "reconstruction_at_t0_latent_l2": float(at_zero.mean()) if at_zero.size else None,
        "self_consistency": {"grid": grid, "trajectories": trajectories, "solver": "ddim (the distiller's step), CFG at w",
                             "distance": "latent L2", "rows": gaps["rows"]},
        "plots": ["reconstruction_vs_t.png", "reconstructions.png", "self_consistency.png"],
    }
    atomic_write_text(out_dir / "consistency.json", json.dumps(result, indent=2) + "\n")
    return result


def render_consistency_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: the binned reconstruction error and the gap at a few grid points."""
    lines = ["| t bin | latent RMS ‖f − z₀‖/√d | pixel RMS |", "|---|---:|---:|"]
    for lat, pix in zip(result["reconstruction"]["latent_rms"], result["reconstruction"]["pixel_rms"], strict=True):
        lines.append(f"| {lat['t_lo']:.0f}–{lat['t_hi']:.0f} | {lat['mean']:.3f} ± {lat['std']:.3f} | "
                     f"{pix['mean']:.3f} ± {pix['std']:.3f} |")
    rows = result["self_consistency"]["rows"]
    lines += ["", "| t_n | adjacent gap | gap to trajectory end |", "|---:|---:|---:|"]
    for r in rows[:: max(1, len(rows) // 6)]:
        lines.append(f"| {r['t']} | {r['adjacent_mean']:.3f} ± {r['adjacent_std']:.3f} | "
                     f"{r['boundary_mean']:.3f} ± {r['boundary_std']:.3f} |")
    return "\n".join(lines) + "\n"
