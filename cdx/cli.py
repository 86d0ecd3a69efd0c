"""The `cdx` command line: thin verbs that parse options and call library functions tests call too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from cdx.quiet import quiet_third_party

quiet_third_party()

import typer  # noqa: E402

from cdx import __version__  # noqa: E402
from cdx.errors import CdxError, RegressionError, UnsupportedError  # noqa: E402

app = typer.Typer(
    name="cdx",
    help="Distill a latent diffusion model into a one-step consistency student and ship it on-device "
    "(Core ML, ExecuTorch, ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
teacher_app = typer.Typer(help="Train or inspect a teacher latent diffusion model.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
student_app = typer.Typer(help="Post-process a distilled student (its decoder).", no_args_is_help=True)
app.add_typer(student_app, name="student")


# the options both decoder fine-tunes (teacher and student) take, declared once
RealImages = Annotated[Path | None, typer.Option(help="Real training images: Fashion-MNIST IDX folder or class subfolders "
                                                  "(default: /usr/share/datasets/fashion-mnist).")]
DecoderSteps = Annotated[int, typer.Option(help="Decoder training steps.")]
DecoderLimit = Annotated[int | None, typer.Option(help="Use only the first N training images.")]
DecoderLr = Annotated[float, typer.Option(help="Peak learning rate (100 warm-up steps, cosine decay).")]
AdversarialStart = Annotated[int, typer.Option(help="Step the GAN term starts at (the critic trains from step 0).")]
CriticLr = Annotated[float, typer.Option(help="The critic's Adam learning rate.")]
CriticR1 = Annotated[float, typer.Option(help="> 0: R1 penalty on the critic's gradient at real images.")]
LatentNoise = Annotated[float, typer.Option(help="σ of Gaussian noise added to each training latent (in the diffusion "
                                            "latent space, on top of the posterior's spread): the decoder learns to "
                                            "draw the clean image from a latent a little off the encoder's, as a "
                                            "one-step student's are (0.1 fits the embedded one); 0 = off.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cdx {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """cdx: one-step consistency students for phones."""


@teacher_app.command("train")
def teacher_train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Pipeline folder to write.")] = Path("out/teacher"),
    data: Annotated[Path | None, typer.Option(help="Fashion-MNIST IDX folder or a folder of class subfolders "
                                              "(default: /usr/share/datasets/fashion-mnist); `emoji` (the Noto emoji "
                                              "cache of .ci/setup.sh) or an imagefolder with metadata.jsonl trains the "
                                              "text-to-image teacher.")] = None,
    vae_steps: Annotated[int | None, typer.Option(help="Autoencoder training steps.")] = None,
    unet_steps: Annotated[int | None, typer.Option(help="UNet training steps.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    work_dir: Annotated[Path | None, typer.Option(help="Text-to-image teacher: autoencoder + UNet checkpoints; a rerun "
                                                  "with the same folder resumes.")] = None,
) -> None:
    """Train the embedded class-conditional latent diffusion teacher (autoencoder + UNet) on Fashion-MNIST, or the
    text-to-image teacher (CLIP text encoder + cross-attention UNet) with --data emoji / a captioned imagefolder."""
    from cdx.atomic import atomic_directory
    from cdx.distill.data import load_dataset
    from cdx.distill.emoji import is_captioned_data
    from cdx.distill.teacher import TeacherRecipe, train_teacher
    from cdx.ui import console

    if data is not None and is_captioned_data(str(data)):
        from cdx.distill.text_teacher import run_text_teacher

        info = run_text_teacher(out, str(data), vae_steps, unet_steps, limit, seed, overwrite, work_dir)
        console.print(f"wrote {out} ({info['train_seconds']['total']:.0f} s)")
        return
    recipe = TeacherRecipe(seed=seed)
    if vae_steps is not None:
        recipe.vae_steps = vae_steps
    if unet_steps is not None:
        recipe.unet_steps = unet_steps
    dataset = load_dataset(data, "train", recipe.image_size, limit)
    with atomic_directory(out, overwrite=overwrite) as staging:
        info = train_teacher(staging, dataset, recipe)
    console.print(f"wrote {out} ({info['train_seconds']['total']:.0f} s)")


def _say_decoder_record(out: Path, record: dict) -> None:
    """The one line a decoder fine-tune ends with."""
    from cdx.ui import console

    console.print(f"wrote {out}: reconstruction RMSE {record['rmse_first_1000_before']:.4f} → "
                  f"{record['rmse_first_1000_after']:.4f} ({record['seconds']:.0f} s)")


@teacher_app.command("finetune-decoder")
def teacher_finetune_decoder(
    out: Annotated[Path, typer.Option("--out", "-o", help="Teacher folder to write (a copy with the new vae/).")],
    teacher: Annotated[str, typer.Option(help="Teacher pipeline folder (default: the embedded one).")] = "",
    data: RealImages = None,
    steps: DecoderSteps = 2000,
    limit: DecoderLimit = 20000,
    lr: DecoderLr = 1e-3,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the batch and posterior-sample draws.")] = 0,
    student: Annotated[list[str] | None, typer.Option(help="A student folder decoding with this teacher's VAE; "
                                                      "written with the new decoder to --student-out (repeatable).")] = None,
    student_out: Annotated[list[str] | None, typer.Option(help="Where each --student goes.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output folders.")] = False,
    adversarial_weight: Annotated[float, typer.Option(help="> 0: add a hinge GAN term from an image patch critic "
                                                      "trained here, balanced against the reconstruction loss at the "
                                                      "decoder's last layer (VQGAN); 0.5 is a good start.")] = 0.0,
    adversarial_start: AdversarialStart = 0,
    critic_lr: CriticLr = 2e-4,
    critic_r1: CriticR1 = 0.0,
    latent_noise: LatentNoise = 0.0,
) -> None:
    """Fine-tune the teacher VAE's decoder on real images with the encoder frozen (latent space unchanged, so the
    teacher's and the students' UNets stay valid): a better autoencoder ceiling for both without retraining them."""
    from cdx.defaults import default_teacher
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm, finetune_pipeline_decoder
    from cdx.errors import InputError

    students, outs = list(student or []), list(student_out or [])
    if len(students) != len(outs):
        raise InputError(f"{len(students)} --student but {len(outs)} --student-out: give one output per student")
    adversarial = AdversarialDecoderTerm(adversarial_weight, adversarial_start, critic_lr, critic_r1)
    record = finetune_pipeline_decoder(teacher or default_teacher(), out, steps, data, limit, lr, batch, seed,
                                       tuple(zip(students, outs, strict=True)), overwrite, adversarial=adversarial,
                                       latent_noise=latent_noise)
    _say_decoder_record(out, record)


@teacher_app.command("continue-unet")
def teacher_continue_unet(
    out: Annotated[Path, typer.Option("--out", "-o", help="Teacher folder to write (a copy with the new unet/).")],
    work_dir: Annotated[Path, typer.Option(help="Checkpoints (every --checkpoint-every steps); a rerun with the same "
                                           "folder resumes.")],
    steps: Annotated[int, typer.Option(help="More UNet training steps.")] = 10000,
    teacher: Annotated[str, typer.Option(help="Class-conditional teacher folder that `cdx teacher train` wrote "
                                         "(default: the embedded one).")] = "",
    data: RealImages = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the teacher's recipe).")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="EMA decay (default: the teacher's recipe).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the batch and noise draws (the embedded teacher's base run used "
                                      "0; 1 draws new ones).")] = 1,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Train a class-conditional teacher's UNet further on the latents of its frozen VAE (same latent space, so its
    decoder and every student stay valid): the embedded teacher's UNet had only 2,000 steps."""
    from cdx.defaults import default_teacher
    from cdx.distill.unet_continue import continue_teacher_unet
    from cdx.ui import console

    record = continue_teacher_unet(teacher or default_teacher(), out, steps, work_dir, data, lr, ema_decay, seed, limit,
                                   checkpoint_every, overwrite)
    console.print(f"wrote {out}: {record['steps']} more UNet steps ({record['seconds']:.0f} s of training)")


@student_app.command("finetune-decoder")
def student_finetune_decoder(
    out: Annotated[Path, typer.Option("--out", "-o", help="Student folder to write (a copy with the new vae/).")],
    student: Annotated[str, typer.Option(help="Student pipeline folder (default: the embedded one).")] = "",
    data: RealImages = None,
    steps: DecoderSteps = 2000,
    limit: DecoderLimit = 20000,
    lr: DecoderLr = 2e-4,
    batch: Annotated[int, typer.Option(help="Batch size (real images, and as many student samples).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the draws; the student's samples use seeds from 1,000,003 + seed "
                                      "(never `cdx evaluate`'s).")] = 0,
    samples: Annotated[int, typer.Option(help="One-step student samples drawn once, before training, for the critic "
                                         "(0: none; then --latent-noise is what fits the decoder to the "
                                         "student).")] = 10000,
    adversarial_weight: Annotated[float, typer.Option(help="The GAN term's weight, relative to the reconstruction "
                                                      "loss (VQGAN balance).")] = 0.5,
    adversarial_start: AdversarialStart = 0,
    critic_lr: CriticLr = 2e-4,
    critic_r1: CriticR1 = 0.0,
    latent_noise: Annotated[str, typer.Option(help="σ of Gaussian noise added to each training latent (diffusion "
                                              "latent space, on top of the posterior's spread), so the decoder "
                                              "draws the clean image from a latent as far off as the student's one "
                                              "step; `auto`: σ = the measured RMS miss of its one-step latents from "
                                              "its teacher's DDIM-50 latents (same noise); 0 = off.")] = "0",
    teacher: Annotated[str, typer.Option(help="With --latent-noise auto: the teacher to measure against (default: "
                                         "the one the student's cdx.json names).")] = "",
    miss_samples: Annotated[int, typer.Option(help="With --latent-noise auto: samples the miss is measured "
                                              "on.")] = 256,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Fit a student's decoder to its own one-step samples (encoder frozen, so its UNet stays valid): the
    reconstruction loss on real images keeps what the decoder draws, a patch critic judges the decodes of the
    student's samples against real images. The new decoder decodes one-step samples (`vae/`); the one it replaces
    stays as `multistep_vae/` and decodes 2+ steps."""
    from cdx.defaults import default_student
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm, finetune_student_decoder

    adversarial = AdversarialDecoderTerm(adversarial_weight, adversarial_start, critic_lr, critic_r1)
    record = finetune_student_decoder(student or default_student(), out, steps, data, limit, lr, batch, seed,
                                      adversarial, samples, overwrite, latent_noise=_latent_noise(latent_noise),
                                      teacher=teacher or None, miss_samples=miss_samples)
    if measured := record.get("latent_noise_measured"):
        print(f"--latent-noise auto: σ = {measured['rms']} (one-step miss over {measured['samples']} samples, "
              f"teacher DDIM {measured['teacher_steps']})")
    _say_decoder_record(out, record)


def _latent_noise(value: str) -> float | str:
    """`auto`, or a σ >= 0; anything else is one line."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise CdxError(f"--latent-noise {value!r}: give a σ >= 0 (e.g. 0.1) or `auto`") from None


@student_app.command("deepen")
def student_deepen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Student folder to write (a copy with the deeper unet/).")],
    layers_per_block: Annotated[int, typer.Option(help="Resnets per down block of the new UNet (more than now).")],
    student: Annotated[str, typer.Option(help="Student pipeline folder (default: the embedded one).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the added layers' initial weights (their outputs start at 0).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Give a student more capacity than its teacher without changing its outputs: more resnets per UNet block,
    added as identity layers (zero last convolution), ready for `cdx distill --init-student OUT`."""
    from cdx.defaults import default_student
    from cdx.distill.deepen import deepen_student_folder
    from cdx.ui import console

    record = deepen_student_folder(student or default_student(), out, layers_per_block, seed, overwrite)
    before, after = record["parameters"]
    console.print(f"wrote {out}: layers per block {record['layers_per_block'][0]} → {layers_per_block}, "
                  f"{before / 1e6:.2f} M → {after / 1e6:.2f} M parameters (same outputs)")


@teacher_app.command("tiny")
def teacher_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write the tiny pipeline to.")],
    kind: Annotated[str, typer.Option(help="sd: text-conditioned SD-shaped LCM pipeline; unet2d: unconditional.")] = "sd",
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Build a tiny random-weight diffusers pipeline (for trying the pipeline offline)."""
    from cdx.atomic import atomic_directory
    from cdx.tiny_models import build_tiny_sd, build_tiny_unet2d

    builders = {"sd": build_tiny_sd, "unet2d": build_tiny_unet2d}
    if kind not in builders:
        raise CdxError(f"unknown --kind {kind!r}; valid: {', '.join(builders)}")
    with atomic_directory(out, overwrite=overwrite) as staging:
        builders[kind](staging, seed=seed)
    typer.echo(f"wrote {out}")


@app.command()
def distill(
    teacher: Annotated[str, typer.Option(help="Teacher diffusers folder (or hf:org/name from the Hub).")] = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="Student pipeline folder to write.")] = Path("out/student"),
    data: Annotated[str | None, typer.Option(help="Training images: an imagefolder with metadata.jsonl (file_name, text), "
                                             "WebDataset .tar shards (a .tar, a folder of them, a glob or {000..009} "
                                             "range), class subfolders, a Fashion-MNIST IDX folder (the default), or "
                                             "hf:org/name (a Hub dataset; needs the network), or emoji (the "
                                             "Noto emoji cache of .ci/setup.sh).")] = None,
    cache_latents: Annotated[Path | None, typer.Option(help="Encode the data once with the teacher's VAE into this "
                                                       "folder; later runs read the latents from it.")] = None,
    caption_dropout: Annotated[float, typer.Option(help="Text teachers: replace a caption by the empty prompt with this "
                                                   "probability.")] = 0.0,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable image (default: skip it, count at the end).")] = (
        False),
    resolution: Annotated[int | None, typer.Option(help="Training image side (default: the teacher's).")] = None,
    shuffle_buffer: Annotated[int, typer.Option(help="WebDataset shuffle buffer (samples held in memory).")] = 1000,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    lr_warmup_steps: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps (LCM's script uses 500).")] = 0,
    lr_schedule: Annotated[str, typer.Option(help="After the warm-up: constant | linear | cosine (decay to 0 at "
                                             "--steps).")] = "constant",
    solver: Annotated[str, typer.Option(help="Teacher ODE solver: ddim | euler | heun.")] = "ddim",
    num_solver_steps: Annotated[int, typer.Option(help="N of the solver grid; skipping step k = T/N.")] = 50,
    solver_substeps: Annotated[int, typer.Option(help="Teacher sub-steps per hop of the grid (a coarse grid with a "
                                                 "fine ODE target; teacher calls × this).")] = 1,
    parameterization: Annotated[str, typer.Option(help="Boundary condition: lcm | edm.")] = "lcm",
    loss: Annotated[str, typer.Option(help="l2 | huber (pseudo-Huber).")] = "huber",
    huber_c: Annotated[float, typer.Option(help="Pseudo-Huber c.")] = 0.001,
    ema_decay: Annotated[float, typer.Option(help="Target network EMA rate.")] = 0.95,
    export_ema_decay: Annotated[float, typer.Option(help="Save a slow EMA of the student at this rate (diffusers' "
                                                    "EMAModel with warm-up; e.g. 0.999) instead of the consistency "
                                                    "target; 0 = off.")] = 0.0,
    guidance_min: Annotated[float, typer.Option(help="Lowest CFG scale sampled for w-distillation.")] = 1.0,
    guidance_max: Annotated[float, typer.Option(help="Highest CFG scale sampled.")] = 4.0,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    mixed_precision: Annotated[str, typer.Option(help="no | fp16 | bf16 (Accelerate).")] = "no",
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint interval (steps).")] = 250,
    sample_every: Annotated[int, typer.Option(help="Sample-grid interval (steps); 0 = never.")] = 250,
    lora_rank: Annotated[int, typer.Option(help="LCM-LoRA: train a rank-R LoRA on the frozen teacher UNet and save only "
                                           "the LoRA (diffusers' pytorch_lora_weights.safetensors); 0 = full student.")] = 0,
    method: Annotated[str, typer.Option(help="cd (distil the teacher) | ct (consistency training, no teacher) | ect (easy "
                                        "consistency tuning) | bootstrap (target two timesteps earlier).")] = "cd",
    variance_reduction: Annotated[bool, typer.Option(help="ct/ect/bootstrap: posterior-weighted x̂₀ over the batch in "
                                                     "the target (stable target fields).")] = False,
    rollout_cache: Annotated[Path | None, typer.Option(help="CD: write the teacher's solver steps to this folder once "
                                                       "(resumable shards, sha256 index); runs with it make no teacher "
                                                       "calls.")] = None,
    init_student: Annotated[Path | None, typer.Option(help="Start from this student folder's UNet (same architecture "
                                                      "as the teacher) instead of the teacher: e.g. re-distill on a "
                                                      "coarser --num-solver-steps grid.")] = None,
    ode_regression_weight: Annotated[float, typer.Option(help="CD: add this weight × the loss between the one-step "
                                                       "output f(z, T) and the teacher's guided DDIM solution of z "
                                                       "(fresh noise each update; Luhman & Luhman 2021, DMD's "
                                                       "regression term); 0 = off.")] = 0.0,
    ode_regression_steps: Annotated[int, typer.Option(help="Teacher DDIM steps of that solution.")] = 4,
    ode_regression_batch: Annotated[int, typer.Option(help="Noises per update for the regression term.")] = 16,
    ode_regression_space: Annotated[str, typer.Option(help="Where the regression is measured: latent | decoded (both "
                                                      "through the frozen VAE decoder: an error costs what it "
                                                      "changes in the image).")] = "latent",
    adversarial_weight: Annotated[float, typer.Option(help="CD: add this weight × −critic(f(z, T)) on those noises, a "
                                                    "class- or prompt-projection patch critic on clean latents trained "
                                                    "here with the hinge loss (real latents vs one-step outputs; DMD2, "
                                                    "LADD); 0 = off.")] = 0.0,
    adversarial_start: Annotated[int, typer.Option(help="Step the adversarial term starts at (its critic trains from "
                                                   "step 0).")] = 0,
    critic_lr: Annotated[float, typer.Option(help="The critic's Adam learning rate.")] = 2e-4,
    critic_r1: Annotated[float, typer.Option(help="R1 penalty γ on the critic's gradient at real latents; 0 = off.")] = 0.0,
    critic_input: Annotated[str, typer.Option(help="What the critic judges: latent (clean latents) | decoded (real and "
                                              "one-step latents through the frozen VAE decoder: the images the "
                                              "metrics see).")] = "latent",
    critic_depth: Annotated[int, typer.Option(help="The critic's stride-2 convolutions (each doubling its width): "
                                              "2 = 8×8 scores on 32 px; 3 sees wider patches.")] = 2,
    critic_steps: Annotated[int, typer.Option(help="The critic judges the student's 1..K-step samples of its noises "
                                              "(k >= 2: the k-step sampler from the one-step output, its last step "
                                              "trained), not only the one-step outputs.")] = 1,
    dmd_weight: Annotated[float, typer.Option(help="CD: add this weight × the distribution-matching term (DMD) on those "
                                            "one-step outputs: a fake denoiser trained here on them, against the "
                                            "teacher's guided denoiser; 0 = off.")] = 0.0,
    dmd_start: Annotated[int, typer.Option(help="Step the DMD term starts at (its fake denoiser trains from step 0).")] = 0,
    fake_score_lr: Annotated[float, typer.Option(help="The fake denoiser's AdamW learning rate.")] = 1e-4,
    fake_score_updates: Annotated[int, typer.Option(help="Fake-denoiser steps per student update (DMD2's two "
                                                    "time-scale rule uses 5).")] = 1,
    dmd_gan_weight: Annotated[float, typer.Option(help="With --dmd-weight: add this weight × DMD2's GAN term, a head on "
                                                "the fake denoiser's bottleneck telling noised real latents from "
                                                "noised one-step outputs (DMD2 uses 3e-3); 0 = off.")] = 0.0,
    dmd_critic_weight: Annotated[float, typer.Option(help="The weight of that head's loss in the fake denoiser's "
                                                   "update (DMD2 uses 1e-2).")] = 1e-2,
    dmd_gan_heads: Annotated[str, typer.Option(help="Where the GAN head sits: mid (DMD2: the fake denoiser's "
                                               "bottleneck) | mid+up (also its last up block, the finest feature "
                                               "map).")] = "mid",
    work_dir: Annotated[Path | None, typer.Option(help="Checkpoints + grids (default: OUT.work).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint in the work dir.")] = True,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Consistency-distill a one-step student from a teacher (LCM-style, guidance distilled)."""
    from cdx.defaults import default_teacher
    from cdx.distill.batches import DataOptions
    from cdx.distill.distiller import DistillConfig, distill_student
    from cdx.ui import console

    config = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, lr_warmup_steps=lr_warmup_steps,
                           lr_schedule=lr_schedule,
                           ema_decay=ema_decay, export_ema_decay=export_ema_decay, solver=solver,
                           num_solver_steps=num_solver_steps, solver_substeps=solver_substeps,
                           parameterization=parameterization, loss=loss,
                           huber_c=huber_c, guidance_range=(guidance_min, guidance_max), gradient_accumulation=grad_accum,
                           mixed_precision=mixed_precision, checkpoint_every=checkpoint_every, sample_every=sample_every,
                           seed=seed, caption_dropout=caption_dropout, resolution=resolution, lora_rank=lora_rank,
                           init_student=str(init_student) if init_student else None,
                           ode_regression_weight=ode_regression_weight, ode_regression_steps=ode_regression_steps,
                           ode_regression_batch=ode_regression_batch, ode_regression_space=ode_regression_space,
                           adversarial_weight=adversarial_weight,
                           adversarial_start=adversarial_start, critic_lr=critic_lr, critic_r1=critic_r1,
                           critic_input=critic_input, critic_depth=critic_depth, critic_steps=critic_steps,
                           dmd_weight=dmd_weight, dmd_start=dmd_start, fake_score_lr=fake_score_lr,
                           fake_score_updates=fake_score_updates, dmd_gan_weight=dmd_gan_weight,
                           dmd_critic_weight=dmd_critic_weight, dmd_gan_heads=dmd_gan_heads)
    config.validate()  # every option, before any model or data is loaded (the teacher-dependent checks follow)
    from cdx.distill.consistency_training import METHODS

    if method not in METHODS:
        raise CdxError(f"unknown --method {method!r}; valid: {', '.join(METHODS)}")
    config.method, config.variance_reduction = method, variance_reduction
    if data == "emoji":  # the Noto emoji cache (.ci/setup.sh), train split, as an imagefolder at the run's size
        from cdx.distill.emoji import emoji_imagefolder

        data = str(emoji_imagefolder(resolution or 32))
    result = distill_student(teacher or default_teacher(), out, config, data=data, work_dir=work_dir, resume=resume,
                             overwrite=overwrite, limit=limit, rollout_cache=rollout_cache,
                             data_options=DataOptions(cache_latents, strict, shuffle_buffer))
    if result["main_process"]:
        console.print(f"wrote {out} ({result['steps']} steps, {result['seconds']:.0f} s, final loss {result['final_loss']:.4g})")


@app.command("distill-decoder")
def distill_decoder(
    model: Annotated[str, typer.Option(help="Student pipeline folder: its VAE decoder is the teacher, its UNet makes the "
                                       "sample latents (default: the embedded Fashion-MNIST student).")] = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="AutoencoderTiny folder to write.")] = Path("out/tiny_decoder"),
    data: Annotated[str | None, typer.Option(help="Training images (the formats `cdx distill --data` takes; default "
                                             "Fashion-MNIST).")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Latents per batch (images + student samples).")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    width: Annotated[int, typer.Option(help="Channels of every AutoencoderTiny block (TAESD: 64).")] = 64,
    depth: Annotated[int, typer.Option(help="AutoencoderTiny blocks per level (TAESD: 3).")] = 3,
    sample_fraction: Annotated[float, typer.Option(help="Share of each batch from one-step student samples.")] = 0.5,
    pixel_loss: Annotated[str, typer.Option(help="l1 | l2 | l1+l2.")] = "l1+l2",
    adversarial_weight: Annotated[float, typer.Option(help="Weight of a hinge GAN term (a patch critic trained here); "
                                                     "0 = pixel loss only.")] = 0.0,
    adversarial_start: Annotated[int, typer.Option(help="Step the adversarial term starts at.")] = 0,
    encoder_weight: Annotated[float, typer.Option(help="Weight of the tiny encoder's latent loss (0 = leave it "
                                                  "untrained; generation uses only the decoder).")] = 1.0,
    mixed_precision: Annotated[str, typer.Option(help="no | fp16 | bf16 (Accelerate).")] = "no",
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint interval (steps).")] = 500,
    resolution: Annotated[int | None, typer.Option(help="Training image side (default: the teacher's).")] = None,
    validation_size: Annotated[int, typer.Option(help="Held-out latents of each kind for the card's drift.")] = 64,
    work_dir: Annotated[Path | None, typer.Option(help="Checkpoints (default: OUT.work).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint in the work dir.")] = True,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Distill the VAE decoder into a tiny AutoencoderTiny (TAESD architecture) for `cdx convert --decoder`."""
    from cdx.defaults import default_student
    from cdx.distill.decoder import DecoderDistillConfig
    from cdx.distill.decoder import distill_decoder as run_distill_decoder
    from cdx.ui import console

    config = DecoderDistillConfig(steps=steps, batch_size=batch_size, lr=lr, width=width, depth=depth,
                                  sample_fraction=sample_fraction, pixel_loss=pixel_loss,
                                  adversarial_weight=adversarial_weight, adversarial_start=adversarial_start,
                                  encoder_weight=encoder_weight, mixed_precision=mixed_precision,
                                  checkpoint_every=checkpoint_every, seed=seed, resolution=resolution,
                                  validation_size=validation_size)
    config.validate()
    result = run_distill_decoder(model or default_student(), out, config, data=data, work_dir=work_dir, resume=resume,
                                 overwrite=overwrite, limit=limit)
    if result["main_process"]:
        drift = result["info"]["drift"]["student_samples"]
        console.print(f"wrote {out} ({result['steps']} steps, {result['seconds']:.0f} s; on student samples "
                      f"PSNR {drift['psnr_db']:.1f} dB, SSIM {drift['ssim']:.3f} vs the full decoder)")


@app.command()
def sample(
    model: Annotated[str, typer.Option(help="Student (or teacher) pipeline folder.")] = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")] = Path("out/samples.png"),
    steps: Annotated[int, typer.Option(help="Sampling steps (students: 1-4; teachers: DDIM steps).")] = 1,
    per_class: Annotated[int, typer.Option(help="Images per class (one row per class).")] = 8,
    guidance: Annotated[float, typer.Option(help="Guidance scale.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
) -> None:
    """Sample an image grid from a student (consistency sampler) or a teacher (DDIM + CFG)."""
    from cdx.defaults import default_student
    from cdx.distill.sampling import sample_grid
    from cdx.ui import console

    path = sample_grid(model or default_student(), out, steps=steps, per_class=per_class, guidance=guidance, seed=seed)
    console.print(f"wrote {path}")


@app.command()
def convert(
    model: Annotated[str | None, typer.Argument(
        help="Student: a diffusers folder (or hf:org/name from the Hub). Default: the embedded Fashion-MNIST student.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: out/<target>).")] = None,
    target: Annotated[str, typer.Option(help="onnx | executorch | coreml")] = "onnx",
    quant: Annotated[list[str], typer.Option(
        help="Precision(s), repeat for several. onnx: none, fp16, int8-dynamic, int8-static, ort; "
        "executorch: none, int8, coreml; coreml: none/fp32, fp16, int8, palettize6, palettize4.")] = ["none"],  # noqa: B006
    mode: Annotated[str, typer.Option(help="generator: one graph noise → image; components: step + decoder graphs.")] = (
        "generator"),
    steps: Annotated[int, typer.Option(help="Consistency steps (baked into the generator; listed in the manifest).")] = 1,
    renoise: Annotated[str, typer.Option(help="Between the steps (--steps 2+): fresh (LCMScheduler's new noise) or "
                                         "ddim (the deterministic DDIM hop; no step_noise input).")] = "fresh",
    latent_size: Annotated[list[int], typer.Option(help="Latent size(s); one static graph each. Default: the UNet's.")] = [],  # noqa: B006
    num_seeds: Annotated[int, typer.Option(help="Seeds for golden data and the parity gate.")] = 4,
    calibration_samples: Annotated[int, typer.Option(help="Seeded inputs for int8 static calibration.")] = 8,
    exporter: Annotated[str, typer.Option(help="ONNX exporter: dynamo (torch.export) | torchscript.")] = "dynamo",
    passes: Annotated[str | None, typer.Option(
        help="ExecuTorch graph rewrites, comma-separated ('' = none). Default: all of "
        "plain_attention, decompose_group_norm, decompose_layer_norm, delegate_friendly_upsample.")] = None,
    coreml_target: Annotated[str, typer.Option(help="Core ML minimum deployment target: iOS17 | iOS18.")] = "iOS17",
    force: Annotated[bool, typer.Option(help="Keep artifacts that fail the parity gate (recorded as forced).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    lora: Annotated[str | None, typer.Option(help="An LCM-LoRA folder (cdx distill --lora-rank): MODEL is then its base "
                                             "(teacher) pipeline; the LoRA is fused into the UNet before export.")] = None,
    decoder: Annotated[str | None, typer.Option(help="An AutoencoderTiny folder (cdx distill-decoder, or TAESD) in place "
                                                "of the VAE decoder; the manifest records it and its drift.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Text students: a UTF-8 file, one prompt per line (>= 2), encoded by "
                                                "the student's text encoder for golden data, int8 calibration and the "
                                                "parity gate. Default: the captions in its cdx.json, else built-ins.")] = None,
    text_encoder: Annotated[bool, typer.Option(help="Text students: also export the text encoder graph (input_ids → "
                                               "text_embedding) and the tokenizer files, so a device can take a prompt.")] = True,
    chunks: Annotated[int, typer.Option(help="Core ML with --mode components: the UNet step as N sequential .mlpackages "
                                        "(weight-balanced, as Apple's --chunk-unet) so each piece fits an app's memory.")] = 1,
) -> None:
    """Export a student to a target runtime, parity-check every artifact, and write the manifest."""
    from cdx.convert.export import ConvertOptions
    from cdx.convert.export import convert as run_convert
    from cdx.ui import stages

    chosen_passes = None if passes is None else tuple(p.strip() for p in passes.split(",") if p.strip())
    options = ConvertOptions(target=target, quants=tuple(quant), mode=mode, steps=steps, renoise_with=renoise,
                             latent_sizes=tuple(latent_size),
                             seeds=tuple(range(num_seeds)), exporter=exporter, force=force, overwrite=overwrite,
                             passes=chosen_passes, coreml_target=coreml_target, calibration_samples=calibration_samples,
                             lora=lora, decoder=decoder, prompts=prompts, text_encoder=text_encoder,
                             chunks=chunks)
    options.validate()
    if model is None:
        from cdx.defaults import default_student

        model = default_student()
    with stages(f"convert → {target}") as say:
        manifest = run_convert(model, out or Path("out") / target, options, progress=say)
    _print_manifest_summary(manifest)


def _print_manifest_summary(manifest_path: Path) -> None:
    from cdx.convert.export import parity_line
    from cdx.manifest import load_manifest
    from cdx.ui import console

    data = load_manifest(manifest_path.parent, verify=False)
    for m in data["models"]:
        console.print(f"  {m['name']}: {m['target']}/{m['precision']} → {m['file']}  {parity_line(m['parity'])}")
    console.print(f"wrote {manifest_path}")


@app.command(context_settings={"allow_interspersed_args": True})
def bench(
    artifacts: Annotated[list[str], typer.Argument(
        help="Folder(s) written by `cdx convert` (or `ingest FILE...`, or `device --local FOLDER`).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: FIRST/bench).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs after warm-up.")] = 20,
    warmup: Annotated[int, typer.Option(help="Warm-up runs.")] = 3,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: min(4, cores)).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeded inputs for drift and quality.")] = 64,
    time_budget: Annotated[float, typer.Option(
        "--time-budget", help="Seconds for the whole bench: seeds, warm-up and runs shrink to fit, picked from "
        "measured call times (0 = none).")] = 900.0,
    teacher: Annotated[str | None, typer.Option(help="Teacher to time at full steps and DDIM 8/4/2/1 "
                                                "(default: the student's own, '' = none).")] = None,
    plots: Annotated[bool, typer.Option(help="Write the PNG plots.")] = True,
    compare: Annotated[Path | None, typer.Option(help="An older report.json: print what got slower or drifted.")] = None,
    max_slowdown: Annotated[float, typer.Option(help="With --compare: fail when a median grows past this ratio.")] = 1.25,
    max_psnr_drop: Annotated[float, typer.Option(help="With --compare: fail when PSNR vs eager drops more (dB).")] = 1.0,
    report: Annotated[Path | None, typer.Option(help="ingest: the report.json to merge device results into.")] = None,
    local: Annotated[bool, typer.Option(help="device: measure on this machine (phones run the apps/native runners).")] = False,
    adb: Annotated[bool, typer.Option(help="device: push BUNDLE + --runner to a connected Android phone, run, pull.")] = False,
    runner: Annotated[Path | None, typer.Option(help="device --adb: the native runner built with the Android NDK.")] = None,
    lib: Annotated[list[Path], typer.Option(help="device --adb: shared libraries the runner needs (repeat).")] = [],  # noqa: B006
    serial: Annotated[str | None, typer.Option(help="device --adb: the phone's serial (adb -s).")] = None,
) -> None:
    """Latency and drift of every artifact vs the eager float student (+ the teacher): report.json, report.md, plots.

    `cdx bench ingest FILE... --report REPORT.json` merges phone results; `cdx bench device FOLDER --local -o FILE`
    writes this machine's results in the phones' format.
    """
    from cdx.ui import console

    if artifacts[0] == "ingest":
        _bench_ingest(artifacts[1:], report)
        return
    if artifacts[0] == "device":
        if adb:
            _bench_adb(artifacts[1:], runner, lib, serial, out, runs, warmup)
        else:
            _bench_device(artifacts[1:], local, out, runs, warmup, threads)
        return
    from cdx.benchmarks.bench import BenchOptions
    from cdx.benchmarks.bench import bench as run_bench
    from cdx.benchmarks.report import load_report, render_markdown, write_report
    from cdx.ui import stages

    options = BenchOptions(runs=runs, warmup=warmup, seeds=seeds, teacher=teacher, time_budget_s=time_budget or None)
    if threads is not None:
        options.threads = threads
    old = load_report(compare) if compare else None
    with stages("bench") as say:
        result = run_bench(list(artifacts), options, progress=say)
    json_path, md_path = write_report(result, out or Path(artifacts[0]) / "bench", plots=plots)
    print(render_markdown(result))
    console.print(f"wrote {json_path} and {md_path}")
    if old is not None:
        from cdx.benchmarks.compare import Thresholds, compare_reports

        found = compare_reports(old, result, Thresholds(max_slowdown, max_psnr_drop))
        for line in found["notes"]:
            console.print(f"  {line}")
        for line in found["regressions"]:
            console.print(f"  [red]REGRESSION[/red] {line}")
        if found["regressions"]:
            raise RegressionError(f"{len(found['regressions'])} regression(s) against {compare}")
        console.print(f"no regression against {compare}")


def _bench_ingest(files: list[str], report: Path | None) -> None:
    from cdx.benchmarks.device import ingest
    from cdx.ui import console

    if not files:
        raise CdxError("cdx bench ingest: give one or more device-results files")
    if report is None:
        raise CdxError("cdx bench ingest: --report REPORT.json is required (the report to merge into)")
    merged = ingest(report, [Path(f) for f in files])
    console.print(f"merged {len(files)} file(s) into {report} ({len(merged['device_results'])} device result file(s))")


def _write_device_results(document: dict, folder: str, out: Path | None) -> None:
    """Write a `cdx-device-results/1` document atomically to `out` (default: FOLDER/device_results.json)."""
    import json

    from cdx.atomic import atomic_write_text
    from cdx.ui import console

    target = out or Path(folder) / "device_results.json"
    atomic_write_text(target, json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {target}")


def _bench_adb(args: list[str], runner: Path | None, libs: list[Path], serial: str | None, out: Path | None,
               runs: int, warmup: int) -> None:
    from cdx.benchmarks.adb import adb_device_results

    if len(args) != 1 or runner is None:
        raise CdxError("cdx bench device --adb: give one bundle folder and --runner PATH")
    _write_device_results(adb_device_results(args[0], runner, list(libs), serial, runs=runs, warmup=warmup), args[0], out)


def _bench_device(args: list[str], local: bool, out: Path | None, runs: int, warmup: int, threads: int | None) -> None:
    from cdx.benchmarks.device import local_device_results

    if not local:
        raise UnsupportedError("cdx bench device: give --local (this machine) or --adb --runner RUNNER (a connected "
                               "Android phone); iPhones run ios_demo's benchmark mode and write the same file")
    if len(args) != 1:
        raise CdxError("cdx bench device: give one artifact folder")
    _write_device_results(local_device_results(args[0], runs=runs, warmup=warmup, threads=threads), args[0], out)


@app.command()
def evaluate(
    teacher: Annotated[str, typer.Option(help="Teacher pipeline folder (default: the embedded one).")] = "",
    student: Annotated[str, typer.Option(help="Student pipeline folder (default: the embedded one).")] = "",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: out/quality, or "
                                             "out/consistency with --consistency).")] = None,
    n: Annotated[int | None, typer.Option(help="Samples per row, matched against the first n real test images "
                                          "(default 1000; with --consistency: held-out images, default 100).")] = None,
    guidance: Annotated[float, typer.Option(help="Guidance scale for teacher CFG and the student's w.")] = 3.0,
    inception: Annotated[bool, typer.Option(help="Inception FID + KID, the headline (needs the weights: "
                                            "`make fid-weights`); --no-inception: classifier FD only (fast).")] = True,
    rows: Annotated[str, typer.Option(help="Comma-separated rows (teacher50,teacher8,teacher4,teacher2,teacher1,"
                                      "student4,student2,student1); default all. Also on request: "
                                      "student4-ddim,student2-ddim (the deterministic DDIM hop between the "
                                      "student's steps instead of fresh noise).")] = "",
    batch: Annotated[int, typer.Option(help="Sampling batch (the seeds are per batch: keep it to compare runs).")] = 250,
    noise_seed: Annotated[int, typer.Option(help="Batch b of every row samples from seed NOISE_SEED + b. Keep the "
                                            "default to compare with published rows; another value is a held-out "
                                            "sample set for a model chosen on the default one.")] = 1000,
    timing: Annotated[bool, typer.Option(help="Also time each row at batch 1 (the speed-up column).")] = True,
    consistency: Annotated[bool, typer.Option("--consistency", help="The seed's protocol instead: reconstruction "
                                              "distance vs t, reconstructions at five t, self-consistency along teacher "
                                              "ODE trajectories (JSON + PNG plots; needs the Fashion-MNIST test set).")] = False,
    timesteps_per_image: Annotated[int, typer.Option(help="With --consistency: random timesteps per image.")] = 256,
    trajectories: Annotated[int, typer.Option(help="With --consistency: teacher ODE trajectories.")] = 32,
    write_model_cards: Annotated[bool, typer.Option(help="Also write README.md model cards into both folders.")] = False,
) -> None:
    """Inception FID/KID (+ classifier FD, accuracy, time): teacher DDIM 50/8/4/2/1 vs student 1/2/4 steps."""
    from cdx.defaults import default_student, default_teacher
    from cdx.ui import stages

    teacher, student = teacher or default_teacher(), student or default_student()
    if consistency:
        from cdx.benchmarks.consistency_eval import evaluate_consistency, render_consistency_summary

        with stages("evaluate --consistency") as say:
            result = evaluate_consistency(student, teacher, out or Path("out/consistency"), n_images=n or 100,
                                          per_image=timesteps_per_image, trajectories=trajectories, guidance=guidance,
                                          progress=say)
        print(render_consistency_summary(result))
        return
    from cdx.benchmarks.distill_eval import evaluate_distillation, parse_rows, render_quality_markdown

    with stages("evaluate") as say:
        result = evaluate_distillation(teacher, student, out or Path("out/quality"), n=n or 1000, guidance=guidance,
                                       inception=inception, specs=parse_rows(rows), batch=batch, progress=say,
                                       timing=timing, noise_seed=noise_seed)
    print(render_quality_markdown(result))
    if write_model_cards:
        import shlex
        import sys

        from cdx.benchmarks.distill_eval import write_model_cards as write_cards

        command = "cdx " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--write-model-cards")
        for card in write_cards(teacher, student, result, command):
            print(f"wrote {card}")


@app.command()
def bundle(
    source: Annotated[Path, typer.Argument(help="A folder written by `cdx convert` (or, with --verify, a bundle).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle folder (default: SOURCE.bundle).")] = None,
    model: Annotated[list[str], typer.Option(help="Model name(s) to include (default: all).")] = [],  # noqa: B006
    as_zip: Annotated[bool, typer.Option("--zip", help="Also write OUT.zip.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Only check a bundle (folder or .zip): sha256 + paths.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
) -> None:
    """Package artifacts + manifest + golden data (raw .bin + PNG) for a phone, a native runner or the web demo."""
    from cdx.bundle import make_bundle, open_bundle
    from cdx.ui import console

    if verify:
        with open_bundle(source) as (_, manifest):  # a zip is unpacked to a temporary folder, removed on exit
            pass
        names = ", ".join(m["name"] for m in manifest["models"])
        console.print(f"ok: {source}: {len(manifest['files'])} files verified (sha256), models: {names}")
        return
    written = make_bundle(source, out or source.with_name(f"{source.name}.bundle"), list(model), as_zip, overwrite)
    console.print(f"wrote {written}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where to write the artifacts and the report.")] = Path("out/demo"),
    runs: Annotated[int, typer.Option(help="Timed runs per runtime.")] = 20,
    distill: Annotated[bool, typer.Option("--distill", help="Re-distill the student from the committed teacher first.")] = False,
    distill_steps: Annotated[int | None, typer.Option(help="With --distill: override the recipe's step count.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Use a non-empty --workdir, replacing the demo's own folders in it.")] = (
        False),
    model: Annotated[str, typer.Option(help="fashion: the class-conditional Fashion-MNIST student; emoji: the "
                                       "text-to-image emoji student (prompts, text encoder graph); or a student folder.")] = (
        "fashion"),
) -> None:
    """The main job on an embedded student: convert → bench → report (no download, no training)."""
    from cdx.demo import run_demo

    run_demo(workdir, runs=runs, distill=distill, distill_steps=distill_steps, overwrite=overwrite, model=model)


def main() -> None:
    """Entry point: CdxError → one line on stderr and its exit code; everything else is a bug."""
    try:
        app(standalone_mode=False)
    except CdxError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(err.exit_code) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except typer.Abort:
        raise SystemExit(1) from None
    except Exception as exc:  # click usage errors (typer vendors click, so matched by its API, not its class)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise

if __name__ == "__main__":
    main()
