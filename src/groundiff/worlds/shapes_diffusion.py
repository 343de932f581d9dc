"""The shapes world's text-to-image model: a small latent diffusion model in diffusers format.

Stable Diffusion in miniature, trained from scratch on rendered scenes of *all* classes, and saved
with `save_pretrained` so that `StableDiffusionPipeline.from_pretrained(folder)` loads it and the
paper's code path is the same for every world:

- `AutoencoderKL` with a single block (downsampling factor 1, no mid-block attention): close to
  an invertible colour map, so shape detail lives in the UNet (factor 2/4 VAEs blurred
  silhouettes in earlier measurements). Trained first, on the posterior mean.
- `CLIPTextModel` (2 layers, width 64) over a word-level tokenizer, trained jointly with the UNet.
- `UNet2DConditionModel` with cross-attention at 16x16 and 8x8 (none at 32x32, where
  self-attention would dominate the cost).
- DDPM cosine schedule for training; a DDIM scheduler with the same betas is saved for sampling.
- Classifier-free guidance: captions are dropped to "" with probability `uncond_prob`.
- An optional second cycle (`finetune_steps`, a warm restart): the first cycle's EMA weights are
  trained on for more steps on fresh data, with a new optimizer, its own lr schedule and
  optionally Min-SNR-gamma loss weighting (Hang et al., ICCV 2023), which spends the gradient on
  the noisy timesteps where the layout (which shape goes where) is decided.

Training is a pure function of the config: batch `s` is rendered from seeds derived from
`(seed, s)`, so a run resumed from a checkpoint continues exactly where it stopped. Every phase
runs `core.training`'s loop and ends by writing its weights (`vae.safetensors`,
`unet_cycle1.safetensors`, `unet_cycle2.safetensors`) with its fingerprint (VAE and cycle 1: the
first-cycle fields; cycle 2: all), so a finished phase is not redone for the same params;
`seed_first_cycle` writes the first two from a shipped pipeline, so that a longer second cycle
continues from shipped weights (`shapes_continue` finds them).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from groundiff.core import losslog
from groundiff.core.checkpoint import fingerprint, load_training_state, read_meta, read_tensors, save_training_state
from groundiff.core.training import TrainingLoop, load_finished, save_finished, state_path
from groundiff.worlds.shapes import BACKGROUND_COLOURS, CLASSES, OBJECT_COLOURS, Scene, SceneSpec, render_scene
from groundiff.worlds.tokenizer import build_word_tokenizer
from groundiff.core.schema import DiffusionConfig, RunOptions

#: Words of the shapes world's captions besides class and colour names.
TEMPLATE_WORDS = ("a", "an", "photograph", "of", "and", "on", "background", "the", "with")


# --- components -------------------------------------------------------------------------------


def vocabulary_words() -> list[str]:
    return [*CLASSES, *OBJECT_COLOURS, *BACKGROUND_COLOURS, *TEMPLATE_WORDS]


def build_components(cfg: DiffusionConfig) -> dict:
    """Freshly initialised (seeded) VAE, text encoder, tokenizer, UNet and schedulers."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    tokenizer = build_word_tokenizer(vocabulary_words(), cfg.max_length)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(cfg.vae_channels,),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, cfg.vae_channels),
        sample_size=cfg.image_size,
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    levels = len(cfg.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=min(16, cfg.block_out_channels[0]),
    )
    schedule = dict(num_train_timesteps=cfg.train_timesteps, beta_schedule="squaredcos_cap_v2",
                    prediction_type="epsilon", clip_sample=False)
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "noise_scheduler": DDPMScheduler(**schedule),
        "scheduler": DDIMScheduler(**schedule, set_alpha_to_one=True, steps_offset=1),
    }


# --- data -------------------------------------------------------------------------------------


def training_caption(scene: Scene, rng: np.random.Generator, cfg: DiffusionConfig) -> str:
    """A caption for a training scene, varied so the paper's plain template is covered."""
    if rng.random() < cfg.uncond_prob:
        return ""
    objects = list(scene.objects)
    if len(objects) > 1 and rng.random() < 0.5:
        objects.reverse()  # naming order carries no depth information
    coloured = rng.random() < cfg.colour_prob
    names = [f"{o.colour} {o.shape}" if coloured else o.shape for o in objects]
    caption = "a photograph of a " + " and a ".join(names)
    if rng.random() < cfg.background_prob:
        caption += f" on a {' and '.join(scene.background)} background"
    return caption


def scene_spec(cfg: DiffusionConfig) -> SceneSpec:
    """How the scenes the model trains on are sampled."""
    return SceneSpec(image_size=cfg.image_size, max_objects=cfg.max_objects)


def render_batch(cfg: DiffusionConfig, step: int, batch_size: int, stream: int) -> tuple[torch.Tensor, list[str]]:
    """Batch `step` of data stream `stream` (0: VAE, 1: UNet): images in [-1, 1] and captions."""
    seq = np.random.SeedSequence([cfg.seed, stream, step])
    seeds = seq.generate_state(batch_size, dtype=np.uint32)
    rng = np.random.default_rng(seq.spawn(1)[0])
    spec = scene_spec(cfg)
    scenes = [render_scene(int(s), spec) for s in seeds]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    images = images.float() / 127.5 - 1.0  # (B, 3, H, W)
    return images, [training_caption(s, rng, cfg) for s in scenes]


class _Batches(torch.utils.data.Dataset):
    """Batch `i` of a data stream: `render_batch` as a dataset, so worker processes can render ahead."""

    def __init__(self, cfg: DiffusionConfig, batch_size: int, stream: int, start: int, stop: int) -> None:
        self.cfg, self.batch_size, self.stream, self.start, self.stop = cfg, batch_size, stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str]]:
        return render_batch(self.cfg, self.start + i, self.batch_size, self.stream)


def batches(cfg: DiffusionConfig, batch_size: int, stream: int, start: int, stop: int, workers: int):
    """Batches `start`..`stop - 1` of a stream, in order; identical for any number of `workers`."""
    data = _Batches(cfg, batch_size, stream, start, stop)
    if not workers:
        return (data[i] for i in range(len(data)))
    return iter(torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=8, persistent_workers=False))


# --- training ---------------------------------------------------------------------------------


FIRST_CYCLE_FIELDS = tuple(f for f in DiffusionConfig.__dataclass_fields__ if not f.startswith("finetune_"))


def first_cycle_config(cfg: DiffusionConfig) -> dict:
    """The fields that decide the VAE and the first UNet cycle (all but `finetune_*`)."""
    return {name: getattr(cfg, name) for name in FIRST_CYCLE_FIELDS}


@dataclass(frozen=True)
class Cycle:
    """One UNet training cycle: its length, peak lr, loss weighting, batch size, data stream and files."""

    name: str  # "cycle1" | "cycle2"
    steps: int
    lr: float
    snr_gamma: float
    batch_size: int
    stream: int  # render_batch data stream: each cycle sees its own scenes
    freeze_cross_attention: bool = False  # train all but the cross-attention (the text pathway) layers

    @property
    def prefix(self) -> str:  # of the cycle's state and log in the work dir
        return f"unet_{self.name}_"

    @property
    def weights(self) -> str:
        return f"unet_{self.name}.safetensors"

    @property
    def log(self) -> str:
        return f"{self.prefix}log.csv"


def cycles(cfg: DiffusionConfig) -> list[Cycle]:
    out = [Cycle("cycle1", cfg.steps, cfg.lr, 0.0, cfg.batch_size, stream=1)]
    if cfg.finetune_steps:
        out.append(Cycle("cycle2", cfg.finetune_steps, cfg.finetune_lr, cfg.finetune_snr_gamma,
                         cfg.finetune_batch_size or cfg.batch_size, stream=3,
                         freeze_cross_attention=cfg.finetune_freeze_cross_attention))
    return out


def lr_factor(step: int, cfg: DiffusionConfig, steps: int | None = None) -> float:
    """Linear warm-up, constant, then linear decay to `final_lr_fraction`, over `steps` (default cfg.steps)."""
    steps = cfg.steps if steps is None else steps
    warmup = min(cfg.warmup_steps, max(steps // 10, 1))
    if step < warmup:
        return (step + 1) / warmup
    start = cfg.decay_start * steps
    if step < start:
        return 1.0
    frac = (step - start) / max(steps - start, 1)
    return 1.0 - (1.0 - cfg.final_lr_fraction) * min(frac, 1.0)


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma weights for epsilon prediction: min(SNR, gamma) / SNR (1 where gamma = 0)."""
    if gamma <= 0:
        return torch.ones_like(alphas_cumprod_t)
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    return torch.clamp(snr, max=gamma) / snr


class EMA:
    """Exponential moving average of a module's float parameters."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        floats, shadows = [], []
        for key, value in module.state_dict().items():
            if value.dtype.is_floating_point:
                floats.append(value)
                shadows.append(self.shadow[key])
            else:
                self.shadow[key].copy_(value)
        torch._foreach_lerp_(shadows, floats, 1.0 - self.decay)  # one fused call: the GPU is launch-bound


def _autocast(opts: RunOptions):
    device_type = "cuda" if opts.device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=opts.mixed_precision == "bf16")


def _fingerprints(cfg: DiffusionConfig) -> dict[str, str]:
    """Each phase's fingerprint: the VAE and cycle 1 depend on the first-cycle fields, cycle 2 on all."""
    first = fingerprint(first_cycle_config(cfg))
    return {"vae": first, "cycle1": first, "cycle2": fingerprint(asdict(cfg))}


def train_vae(vae, cfg: DiffusionConfig, opts: RunOptions, work_dir: Path,
              on_log: Callable[[dict], None] | None = None) -> dict:
    """Phase 1: the autoencoder, on the posterior mean (MSE + L1; tiny KL keeps latents bounded)."""
    fp, done = _fingerprints(cfg)["vae"], work_dir / "vae.safetensors"
    if load_finished(done, fp, {"vae": vae}):
        vae.to(opts.device).eval()
        return {"vae_steps": cfg.vae_steps}
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    report = on_log and (lambda m: on_log({"vae_loss": m["loss"], "vae_psnr": m["psnr"], "step": m["step"]}))
    loop = TrainingLoop(work_dir, fp, cfg.vae_steps, {"vae": vae}, {"vae": opt}, log_every=opts.log_every,
                        checkpoint_every=opts.checkpoint_every, desc="vae", on_log=report, prefix="vae_")
    loop.resume()
    vae.to(opts.device).train()

    def step(s: int) -> dict:
        for group in opt.param_groups:  # cosine decay: the VAE trains in minutes
            group["lr"] = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * s / cfg.vae_steps))
        images, _ = render_batch(cfg, s, cfg.vae_batch_size, stream=0)
        images = images.to(opts.device)
        with _autocast(opts):
            posterior = vae.encode(images).latent_dist
            recon = vae.decode(posterior.mean).sample
        recon = recon.float()
        mse = F.mse_loss(recon, images)
        kl = posterior.kl().mean() / images[0].numel()
        loss = mse + F.l1_loss(recon, images) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))  # images span [-1, 1]: peak^2 = 4
        return {"loss": loss.item(), "psnr": psnr}

    loop.run(step)
    vae.eval()
    loop.finish(done, {"vae": vae})
    return {"vae_steps": cfg.vae_steps}


@torch.no_grad()
def latent_scaling_factor(vae, cfg: DiffusionConfig, device: str, n_batches: int = 8) -> float:
    """1 / std of the VAE's latents over rendered scenes (Stable Diffusion's 0.18215, for us)."""
    latents = []
    for i in range(n_batches):
        images, _ = render_batch(cfg, i, 64, stream=2)
        latents.append(vae.encode(images.to(device)).latent_dist.mean.float().cpu())
    return float(1.0 / torch.cat(latents).std())


def _tokenize(tokenizer, captions: list[str], device: str) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids.to(device)


def train_unet(components: dict, cfg: DiffusionConfig, opts: RunOptions, work_dir: Path,
               scaling_factor: float, cycle: Cycle, on_log: Callable[[dict], None] | None = None) -> dict:
    """One UNet cycle: epsilon-prediction MSE, EMA of what trains. The text encoder trains with the
    UNet (`text_encoder: joint`) or stays frozen (`clip`: pretrained by `shapes_text`).

    Cycle 2 starts from cycle 1's EMA weights (`unet_cycle1.safetensors`) with a fresh optimizer.
    At the end the EMA weights are loaded into the models and saved as the cycle's weights.
    """
    vae, unet, text_encoder = components["vae"], components["unet"], components["text_encoder"]
    tokenizer, noise_scheduler = components["tokenizer"], components["noise_scheduler"]
    fp, log_path, done = _fingerprints(cfg)[cycle.name], work_dir / cycle.log, work_dir / cycle.weights
    models = {"unet": unet, "text": text_encoder}
    dev = opts.device
    if load_finished(done, fp, models):
        unet.to(dev).eval()
        text_encoder.to(dev).eval()
        return {f"{cycle.name}_steps": cycle.steps, "final_loss": _mean_tail(log_path)}
    if cycle.name != "cycle1":
        load_training_state(work_dir / cycles(cfg)[0].weights, models, {})
    joint = cfg.text_encoder == "joint"
    unet.to(dev).train()
    for name, p in unet.named_parameters():
        p.requires_grad_(not (cycle.freeze_cross_attention and ".attn2." in name))
    text_encoder.to(dev).train(joint).requires_grad_(joint)
    vae.to(dev).eval().requires_grad_(False)
    params = [p for p in unet.parameters() if p.requires_grad] + (list(text_encoder.parameters()) if joint else [])
    opt = torch.optim.AdamW(params, lr=cycle.lr, weight_decay=cfg.weight_decay)
    ema_unet = EMA(unet, cfg.ema_decay)
    ema = {"ema_unet": ema_unet.shadow}
    if joint:
        ema_text = EMA(text_encoder, cfg.ema_decay)
        ema["ema_text"] = ema_text.shadow
    seen = [0]  # images this call, for the rate

    def report(m: dict) -> None:  # curves over both cycles share one step axis
        on_log({"unet_loss": m["loss"], "images_per_s": seen[0] / m["seconds"],
                "step": m["step"] + _offset(cfg, cycle)})

    loop = TrainingLoop(work_dir, fp, cycle.steps, {**models, **ema},
                        {"main": opt}, log_every=opts.log_every, checkpoint_every=opts.checkpoint_every,
                        desc=f"unet {cycle.name}", on_log=on_log and report, prefix=cycle.prefix)
    start = loop.resume()
    alphas = noise_scheduler.alphas_cumprod.to(dev)
    data = batches(cfg, cycle.batch_size, cycle.stream, start, cycle.steps, opts.data_workers)

    def step(s: int) -> dict:
        images, captions = next(data)
        for group in opt.param_groups:
            group["lr"] = cycle.lr * lr_factor(s, cfg, cycle.steps)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s + (cycle.stream - 1) * 7_919)
        with torch.no_grad(), _autocast(opts):
            latents = vae.encode(images.to(dev)).latent_dist.mean.float() * scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(dev)
        timesteps = torch.randint(0, cfg.train_timesteps, (latents.shape[0],), generator=gen).to(dev)
        a = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        ids = _tokenize(tokenizer, captions, dev)
        with _autocast(opts), torch.set_grad_enabled(joint):
            hidden = text_encoder(ids).last_hidden_state
        with _autocast(opts):
            pred = unet(noisy, timesteps, hidden).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas[timesteps], cycle.snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        if joint:
            ema_text.update(text_encoder)
        seen[0] += latents.shape[0]
        # The logged loss is the plain MSE in every cycle, so the curves stay comparable.
        return {"loss": per_sample.mean().item(), "lr": opt.param_groups[0]["lr"]}

    loop.run(step)
    # The cycle's result is its EMA weights.
    unet.load_state_dict(ema_unet.shadow)
    if joint:
        text_encoder.load_state_dict(ema_text.shadow)
    unet.eval()
    text_encoder.eval()
    loop.finish(done, models)
    return {f"{cycle.name}_steps": cycle.steps, "final_loss": _mean_tail(log_path)}


def _offset(cfg: DiffusionConfig, cycle: Cycle) -> int:
    """Steps before `cycle`, so that curves over both cycles share one step axis."""
    return 0 if cycle.name == "cycle1" else cfg.steps


# --- the EMA UNet of an unfinished cycle: checks during a long run ------------------------------

def newest_checkpoint(cfg: DiffusionConfig, work_dir: Path) -> tuple[Cycle, Path]:
    """The newest UNet cycle that has a training state in `work_dir`, and that state's file."""
    started = [c for c in cycles(cfg) if state_path(work_dir, c.prefix).exists()]
    if not started:
        raise FileNotFoundError(f"no UNet cycle has a checkpoint in {work_dir} yet: train first")
    return started[-1], state_path(work_dir, started[-1].prefix)


def save_ema_snapshot(cfg: DiffusionConfig, work_dir: Path, path: Path) -> int:
    """Copy the EMA UNet of the newest cycle's checkpoint to `path` (the state's own key names, so
    `read_ema_snapshot` reads either); returns its UNet step on the axis both cycles share."""
    cycle, state = newest_checkpoint(cfg, work_dir)
    step = read_meta(state)["step"]
    unet_step = _offset(cfg, cycle) + step
    save_training_state(path, {"ema_unet": read_tensors(state, "ema_unet.")}, {},
                        {"step": step, "cycle": cycle.name, "unet_step": unet_step})
    return unet_step


def read_ema_snapshot(cfg: DiffusionConfig, path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """(UNet step on the shared axis, EMA UNet state dict) from a snapshot or a cycle's training state."""
    meta = read_meta(path)
    if "unet_step" in meta:
        return meta["unet_step"], read_tensors(path, "ema_unet.")
    cycle = next((c for c in cycles(cfg) if path == state_path(path.parent, c.prefix)), None)
    if cycle is None:
        raise ValueError(f"{path} is neither an EMA snapshot (save_ema_snapshot) nor a UNet cycle's state")
    return _offset(cfg, cycle) + meta["step"], read_tensors(path, "ema_unet.")


def loss_curve(cfg: DiffusionConfig, work_dir: Path) -> list[dict]:
    """Every cycle's logged loss rows on one step axis."""
    rows = []
    for cycle in cycles(cfg):
        rows += [{"step": int(r["step"]) + _offset(cfg, cycle), "loss": float(r["loss"]), "cycle": cycle.name}
                 for r in losslog.read_rows(work_dir / cycle.log)]
    return rows


def write_loss_plot(rows: list[dict], path: Path, every: int = 20) -> None:
    """A loss curve (`loss_curve`'s rows) as CSV (step, loss): the mean of each `every`-step window."""
    windows: dict[int, list[float]] = {}
    for r in rows:
        windows.setdefault((int(r["step"]) - 1) // every, []).append(float(r["loss"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        for w, losses in sorted(windows.items()):
            writer.writerow([(w + 1) * every, sum(losses) / len(losses)])


def _mean_tail(log_path: Path, n: int = 200) -> float:
    losses = [float(r["loss"]) for r in losslog.read_rows(log_path)][-n:]
    return sum(losses) / max(len(losses), 1)


def assemble_pipeline(components: dict, scaling_factor: float):
    """The components as a diffusers StableDiffusionPipeline (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    components["vae"].register_to_config(scaling_factor=scaling_factor)
    # Tokenizing during training leaves padding / truncation switched on in the fast tokenizer's
    # backend, which save_pretrained would write into tokenizer.json: switch it off, so the saved
    # folder is the same whether or not this process trained (callers pass both explicitly).
    components["tokenizer"].backend_tokenizer.no_padding()
    components["tokenizer"].backend_tokenizer.no_truncation()
    return StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def seed_first_cycle(pipeline_dir: Path, cfg: DiffusionConfig, work_dir: Path,
                     loss_rows: list[dict] | None = None) -> None:
    """Write the VAE and first-cycle weights of a shipped pipeline into `work_dir` as finished phases.

    The caller vouches that `pipeline_dir` was trained with `cfg`'s first-cycle fields
    (`seed_from_shipped` checks dvc.lock); the architecture is checked here. Training then goes
    straight to the second cycle. `loss_rows` ({"step", "loss"}) keep the first cycle's curve in the plots.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    components = build_components(cfg)
    try:
        unet = UNet2DConditionModel.from_pretrained(pipeline_dir / "unet")
        vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae")
        text = CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{pipeline_dir}: not a loadable diffusers pipeline ({err})") from err
    for name, loaded in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        want = {k: v.shape for k, v in components[name].state_dict().items()}
        have = {k: v.shape for k, v in loaded.state_dict().items()}
        if want != have:
            raise ValueError(f"{pipeline_dir}/{name} does not have the architecture world_diffusion.model "
                             "describes; it cannot seed the first cycle")
    work_dir.mkdir(parents=True, exist_ok=True)
    for path in [*work_dir.glob("unet_cycle*"), *work_dir.glob("vae*")]:
        path.unlink()
    fps = _fingerprints(cfg)
    save_finished(work_dir / "vae.safetensors", {"vae": vae}, fps["vae"], cfg.vae_steps)
    save_finished(work_dir / cycles(cfg)[0].weights, {"unet": unet, "text": text}, fps["cycle1"], cfg.steps)
    if loss_rows:
        losslog.append_rows(work_dir / cycles(cfg)[0].log, loss_rows)


def _load_pretrained(folder: Path, name: str, cls, target: torch.nn.Module) -> torch.nn.Module:
    """`folder/name` loaded with `cls`, checked to have `target`'s architecture."""
    try:
        loaded = cls.from_pretrained(folder / name)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"init_pipeline {folder}: no loadable {name} ({err})") from err
    want = {k: v.shape for k, v in target.state_dict().items()}
    if want != {k: v.shape for k, v in loaded.state_dict().items()}:
        raise ValueError(f"init_pipeline {folder}/{name} does not have the architecture world_diffusion.model "
                         "describes: a warm start needs the same VAE and UNet sizes")
    return loaded


def warm_start(components: dict, cfg: DiffusionConfig) -> None:
    """Load `cfg.init_pipeline`'s VAE and UNet into the components; then re-initialise (seeded) every
    cross-attention's key and value projections and zero its output weight, so the UNet starts as the
    old model without its text pathway and learns to read the new, frozen text encoder from scratch."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(cfg.init_pipeline)
    for name, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel)):
        components[name].load_state_dict(_load_pretrained(folder, name, cls, components[name]).state_dict())
    torch.manual_seed(cfg.seed + 29)
    for module_name, module in components["unet"].named_modules():
        if module_name.endswith("attn2"):
            module.to_k.reset_parameters()
            module.to_v.reset_parameters()
            torch.nn.init.zeros_(module.to_out[0].weight)


def _clip_batches(cfg: DiffusionConfig) -> Callable[[int, int], tuple[torch.Tensor, list[str]]]:
    """The mini-CLIP's data: data stream 4, every caption naming the scene (no caption dropout)."""
    from dataclasses import replace

    named = replace(cfg, uncond_prob=0.0)
    return lambda step, batch_size: render_batch(named, step, batch_size, stream=4)


def train_diffusion(cfg: DiffusionConfig, opts: RunOptions, out_dir: Path, work_dir: Path,
                    on_log: Callable[[dict], None] | None = None) -> dict:
    """Train the world's diffusion model (resuming from `work_dir`) and save it to `out_dir`.

    Returns summary metrics. `work_dir` holds each phase's resumable state, loss log and, once the
    phase is done, its weights; each is used only for the params it was made with (changing only
    `finetune_*` keeps the VAE and cycle 1).
    """
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    components = build_components(cfg)
    metrics: dict = {}
    if cfg.text_encoder == "clip":
        from groundiff.worlds.shapes_text import train_text_encoder

        metrics.update(train_text_encoder(components["text_encoder"], components["tokenizer"], cfg, opts,
                                          work_dir, _clip_batches(cfg), on_log))
    if cfg.init_pipeline:
        warm_start(components, cfg)
        components["vae"].to(opts.device).eval()
        metrics["vae_steps"] = 0
    else:
        metrics.update(train_vae(components["vae"], cfg, opts, work_dir, on_log))
    scaling = latent_scaling_factor(components["vae"], cfg, opts.device)
    for cycle in cycles(cfg):
        metrics.update(train_unet(components, cfg, opts, work_dir, scaling, cycle, on_log))
    metrics["unet_steps"] = cfg.steps + cfg.finetune_steps
    metrics["scaling_factor"] = scaling
    pipe = assemble_pipeline({k: v.to("cpu") if hasattr(v, "to") and k != "tokenizer" else v
                              for k, v in components.items()}, scaling)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return metrics
