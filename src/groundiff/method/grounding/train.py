"""Training the grounding module on pseudo-labelled synthetic images (PAPER.md, "Training").

    model, metrics = train_grounding(pipe, "data/synth/train", "data/synth/train_labels",
                                     split.seen, TrainConfig(), work_dir, device="cpu")

1. Data. Every synthesized image with its capture-step latent, prompt and, per prompted class,
   the oracle's top-instance mask and whether the oracle found the class at all. Only *seen*
   classes are kept: an unseen class's instance is dropped and an image keeps its seen classes
   (its prompt, which made the image, is unchanged). All of it stays in memory; the UNet
   features (~3600x larger) are replayed per batch with one frozen UNet call.
2. Text side. One embedding per class, the class name's hidden states in "a photograph of a
   {class}" (frozen text encoder), computed once.
3. Loss. BCE with logits between each (image, class) logit map and its target mask, averaged
   over the map's pixels, summed over the batch's supervised (image, class) pairs and divided by
   the number of images (`grounding_loss`).
   - "without_zero_masks" (the paper's better variant): a class the oracle missed gives no loss;
     an image where it found none gives nothing, so it is left out of the data (with the paper's
     batch size 1 that is exactly "the step is skipped").
   - "normal": a missed class is supervised with an all-zero mask.
4. Optimisation. Adam, no weight decay, no schedule; only the grounding module trains. The run
   is a pure function of the config and the data: the module's initial weights come from
   `seed`, and epoch e visits the images in a permutation drawn from (seed, e).
5. Resumption. Every `checkpoint_every` steps the module, Adam's state and the step (which fixes
   the position in the shuffled order) go to `work_dir` in safetensors; a rerun with the same
   config, data and UNet resumes there and ends with the same weights as an uninterrupted run.

Departure from the paper, on purpose: the paper generates a fresh image every iteration (batch
1, up to 500k iterations, lr 1e-5). Here a fixed synthesized set is visited in shuffled epochs
with small batches, which fits a CPU budget; the lr is raised to match (see `TrainConfig.lr`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from groundiff.core import losslog
from groundiff.core.checkpoint import fingerprint
from groundiff.core.training import TrainingLoop
from groundiff.data.shards import complete_shards, read_shard
from groundiff.diffusion.capture import replay_features
from groundiff.diffusion.pipeline import image_size
from groundiff.diffusion.text import class_embeddings
from groundiff.method.grounding.model import GroundingConfig, GroundingModule
from groundiff.method.pseudo_label import load_mask, read_labels
from groundiff.core.schema import STRATEGIES, TrainConfig, check_strategy


#: TrainConfig fields that change how a run is carried out, not its result.
_RUN_OPTIONS = ("checkpoint_every", "log_every")


# --- 1. data ------------------------------------------------------------------------------------


@dataclass
class GroundingSample:
    """One training image: what replays its features, and its kept classes' targets."""

    shard: str
    index: int
    prompt: str  # the prompt the image was generated with (every class, seen or not)
    latent: Tensor  # (C, h, w) the UNet input at the capture step
    timestep: int  # the DDPM timestep of the capture step
    classes: list[str]  # the kept prompted classes, in prompt order (a class may repeat)
    masks: Tensor  # (K, H, W) bool: the oracle's top instance per kept class (empty if missed)
    found: Tensor  # (K,) bool: did the oracle find the class


def load_training_set(synth_root: Path, labels_root: Path,
                      classes: Sequence[str] | None) -> tuple[list[GroundingSample], dict]:
    """Synthesis shards joined with their pseudo-labels, keeping only `classes` (None: all).

    Returns the samples (images left with no kept class are dropped) and counts of what was
    read and dropped.
    """
    synth_root, labels_root = Path(synth_root), Path(labels_root)
    shards = complete_shards(synth_root)
    if not shards:
        raise FileNotFoundError(f"{synth_root}: no synthesis shards (synthesize writes them)")
    labels = read_labels(labels_root)
    by_image = {key: rows.sort_values("k") for key, rows in labels.groupby(["shard", "index"])}
    keep = None if classes is None else set(classes)
    samples: list[GroundingSample] = []
    stats = {"images_read": 0, "instances_read": 0, "instances_dropped_unseen": 0}
    for shard in shards:
        for s in read_shard(shard):
            rows = by_image.get((shard.name, s.index))
            if rows is None or rows["k"].tolist() != list(range(len(s.classes))):
                raise FileNotFoundError(
                    f"{labels_root / shard.name}: no pseudo-labels for image {s.index} of {shard} "
                    "(pseudo_label writes them)"
                )
            if rows["class"].tolist() != s.classes:
                raise ValueError(
                    f"{labels_root / shard.name}: labels of image {s.index} name {rows['class'].tolist()} "
                    f"but its prompt has {s.classes}: the labels belong to another synthesis run; "
                    "rerun pseudo_label"
                )
            stats["images_read"] += 1
            stats["instances_read"] += len(s.classes)
            kept = [(int(k), name, bool(found))
                    for k, name, found in rows[["k", "class", "found"]].itertuples(index=False, name=None)
                    if keep is None or name in keep]
            stats["instances_dropped_unseen"] += len(s.classes) - len(kept)
            if not kept:
                continue
            h, w = s.image.shape[:2]
            masks = torch.stack([
                torch.from_numpy(load_mask(labels_root, shard.name, s.index, k)) if found
                else torch.zeros(h, w, dtype=torch.bool)
                for k, _, found in kept
            ])  # (K, H, W)
            samples.append(GroundingSample(
                shard=shard.name, index=s.index, prompt=s.prompt, latent=s.latent, timestep=s.timestep,
                classes=[name for _, name, _ in kept], masks=masks,
                found=torch.tensor([found for _, _, found in kept], dtype=torch.bool),
            ))
    stats["images_with_kept_class"] = len(samples)
    stats["instances_kept"] = sum(len(s.classes) for s in samples)
    stats["instances_found"] = int(sum(int(s.found.sum()) for s in samples))
    return samples, stats


@dataclass
class Batch:
    latents: Tensor  # (B, C, h, w)
    timesteps: list[int]  # (B,)
    prompts: list[str]  # (B,)
    class_ids: Tensor  # (B, K) long: rows of the class-embedding table (0 at padding)
    class_mask: Tensor  # (B, K) bool: True = a real class, False = padding
    targets: Tensor  # (B, K, H, W) float: target masks (zeros at padding)
    found: Tensor  # (B, K) bool: did the oracle find the class (False at padding)


def collate(samples: Sequence[GroundingSample], class_index: dict[str, int]) -> Batch:
    """Pad the samples' classes to the batch's largest count K."""
    B, K = len(samples), max(len(s.classes) for s in samples)
    H, W = samples[0].masks.shape[-2:]
    class_ids = torch.zeros(B, K, dtype=torch.long)
    class_mask = torch.zeros(B, K, dtype=torch.bool)
    targets = torch.zeros(B, K, H, W)
    found = torch.zeros(B, K, dtype=torch.bool)
    for i, s in enumerate(samples):
        k = len(s.classes)
        class_ids[i, :k] = torch.tensor([class_index[c] for c in s.classes])
        class_mask[i, :k] = True
        targets[i, :k] = s.masks.float()
        found[i, :k] = s.found
    return Batch(torch.stack([s.latent for s in samples]), [s.timestep for s in samples],
                 [s.prompt for s in samples], class_ids, class_mask, targets, found)


def replay_batch(pipe, latents: Tensor, timesteps: Sequence[int], prompts: Sequence[str]) -> list[Tensor]:
    """`replay_features` for a batch whose samples may come from different capture timesteps.

    One UNet call per distinct timestep (one in all for a single synthesis run), reassembled in
    batch order.
    """
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(timesteps):
        groups.setdefault(int(t), []).append(i)
    if len(groups) == 1:
        return replay_features(pipe, latents, next(iter(groups)), list(prompts))
    parts = [replay_features(pipe, latents[idx], t, [prompts[i] for i in idx]) for t, idx in groups.items()]
    order = torch.tensor([i for idx in groups.values() for i in idx])
    inverse = torch.argsort(order)  # position of each batch sample in the concatenated groups
    return [torch.cat([p[j] for p in parts])[inverse.to(parts[0][j].device)] for j in range(len(parts[0]))]


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches: a permutation of range(n) drawn from (seed, epoch), chunked."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n).tolist()
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


# --- 3. loss ------------------------------------------------------------------------------------


def supervised(class_mask: Tensor, found: Tensor, strategy: str) -> Tensor:
    """(B, K) bool: which (image, class) maps give a loss. Padding never does."""
    check_strategy(strategy)
    return class_mask & found if strategy == "without_zero_masks" else class_mask.clone()


def grounding_loss(logits: Tensor, targets: Tensor, found: Tensor, class_mask: Tensor,
                   strategy: str) -> tuple[Tensor, int]:
    """The paper's loss and the number of (image, class) maps it supervises.

    logits: (B, K, S, S); targets: (B, K, S, S) in {0, 1}; found, class_mask: (B, K) bool.
    Each supervised map's BCE is averaged over its pixels; the maps' values are summed and
    divided by B, the number of images ("summed over (image, class) and divided by batch size").
    "normal" supervises a missed class with an all-zero mask whatever `targets` holds there.
    """
    weight = supervised(class_mask, found, strategy)  # (B, K)
    if strategy == "normal":
        targets = targets * found[..., None, None]  # a missed class's target is all zero
    per_map = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    per_map = per_map.mean(dim=(-2, -1))  # (B, K): mean over pixels
    loss = torch.where(weight, per_map, torch.zeros_like(per_map)).sum() / logits.shape[0]
    return loss, int(weight.sum())


# --- 5. log and fingerprint -----------------------------------------------------------------


def read_loss_log(path: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a training log."""
    return [(int(r["step"]), float(r["loss"])) for r in losslog.read_rows(path)]


def _data_fingerprint(samples: Sequence[GroundingSample], synth_root: Path, labels_root: Path) -> str:
    """What the training data is: the listing, and the stamps synthesis / pseudo-labelling left."""
    stamps = [p.read_text() if p.is_file() else "" for p in
              (Path(synth_root) / "synthesis.json", Path(labels_root) / "source.json")]
    listing = [(s.shard, s.index, s.classes, s.found.tolist()) for s in samples]
    # cheap checksums of the tensors themselves (a regenerated set may list the same classes)
    sums = [float(sum(s.latent.double().sum() for s in samples)), int(sum(int(s.masks.sum()) for s in samples))]
    return fingerprint({"stamps": stamps, "listing": listing, "sums": sums})


def _unet_fingerprint(unet: torch.nn.Module) -> str:
    """The UNet's config and a checksum of its weights: features come from both."""
    with torch.no_grad():
        checksum = float(sum(p.detach().double().sum() for p in unet.parameters()))
    return fingerprint({"config": dict(unet.config), "checksum": checksum})


# --- the training loop --------------------------------------------------------------------------


def train_grounding(pipe, synth_root: Path, labels_root: Path, seen_classes: Sequence[str],
                    cfg: TrainConfig, work_dir: Path, device: str | torch.device = "cpu",
                    on_log: Callable[[dict], None] | None = None) -> tuple[GroundingModule, dict]:
    """Train a grounding module for `pipe`'s UNet (resuming from `work_dir`); returns it in eval mode.

    `on_log` gets the loop's report ({"loss" (the mean since the last report), "step", "seconds"})
    every `log_every` steps. `work_dir` keeps the resumable state and the loss log (`log.csv`: step, loss).
    """
    started = time.time()
    check_strategy(cfg.strategy)
    if cfg.seen_only and not seen_classes:
        raise ValueError("no seen classes to train on: pass the world's seen classes (or seen_only=False)")

    # 1. data: seen classes only. Without zero masks an image whose classes were all missed
    # gives no loss (the paper skips its step): leave it out rather than let it take a seat in
    # a batch, where it would still shift the BatchNorm statistics and the division by B.
    samples, stats = load_training_set(synth_root, labels_root, seen_classes if cfg.seen_only else None)
    if cfg.strategy == "without_zero_masks":
        samples = [s for s in samples if bool(s.found.any())]
    stats["images_used"] = len(samples)
    stats["images_skipped_nothing_found"] = stats["images_with_kept_class"] - len(samples)
    if not samples:
        raise ValueError(
            f"nothing to learn from: of {stats['images_read']} images in {synth_root}, none has a "
            f"{'seen ' if cfg.seen_only else ''}class the oracle found ({stats['instances_found']} found "
            f"instances), and strategy {cfg.strategy!r} only learns from found ones. Check the "
            "pseudo-labels' found_rate (metrics/pseudo_label.json) or use strategy 'normal'"
        )

    # the frozen text side: one embedding per class, computed once
    names = sorted({c for s in samples for c in s.classes})
    class_index = {c: i for i, c in enumerate(names)}
    table = class_embeddings(pipe, names, cfg.template).to(device)  # (N, D)

    # the module, initialised from the seed without touching the global RNG
    gcfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=table.shape[1],
                                            image_size=image_size(pipe), **cfg.model_overrides())
    size = tuple(samples[0].masks.shape[-2:])
    if size != (gcfg.image_size, gcfg.image_size):
        raise ValueError(
            f"pseudo-label masks are {size[0]}x{size[1]} but the pipeline makes "
            f"{gcfg.image_size}x{gcfg.image_size} images: were the labels made for another world?"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = GroundingModule(gcfg)
    if gcfg.standardize_text:
        if len(names) < 2:
            raise ValueError(f"standardize_text needs at least two training classes to standardise against; the "
                             f"training data holds only {names}. Set train_grounding.standardize_text: false")
        model.set_text_statistics(table)  # the training classes only (seen ones, when seen_only)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)  # paper: no decay, no schedule

    # resume when the saved state was made by this very config, data and UNet
    result_fields = {k: v for k, v in asdict(cfg).items() if k not in _RUN_OPTIONS}
    fp = fingerprint({"train": result_fields, "model": asdict(gcfg), "unet": _unet_fingerprint(pipe.unet),
                      "data": _data_fingerprint(samples, synth_root, labels_root)})
    loop = TrainingLoop(work_dir, fp, cfg.steps, {"module": model}, {"adam": opt}, log_every=cfg.log_every,
                        checkpoint_every=cfg.checkpoint_every, desc="train_grounding", on_log=on_log)

    # A batch cannot hold more images than there are: say so, and record the size the batches have.
    batch_size = min(cfg.batch_size, len(samples))
    if batch_size < cfg.batch_size:
        warnings.warn(f"train_grounding.batch_size is {cfg.batch_size}, but there are only {len(samples)} training "
                      f"images: every batch holds {batch_size} (recorded as batch_size in the metrics)", stacklevel=2)

    # step s is batch s % n_batches of epoch s // n_batches (the "rng position")
    n_batches = -(-len(samples) // cfg.batch_size)
    order: dict[int, list[list[int]]] = {}  # the current epoch's batches

    def step(s: int) -> dict:
        epoch, pos = divmod(s, n_batches)
        if epoch not in order:
            order.clear()
            order[epoch] = batch_order(len(samples), cfg.batch_size, cfg.seed, epoch)
        # every image here has a supervised class (see 1.), so every batch has something to learn
        batch = collate([samples[i] for i in order[epoch][pos]], class_index)
        feats = replay_batch(pipe, batch.latents, batch.timesteps, batch.prompts)  # frozen UNet, no grad
        feats = [f.to(device) for f in feats]
        class_mask = batch.class_mask.to(device)
        emb = table[batch.class_ids.to(device)] * class_mask[..., None]  # (B, K, D), zeros at padding
        logits = model(feats, emb, class_mask)  # (B, K, S, S)
        loss, _ = grounding_loss(logits, batch.targets.to(device), batch.found.to(device),
                                 class_mask, cfg.strategy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    run = loop.run(step)

    # summary
    losses = [v for _, v in read_loss_log(loop.log)] if loop.log.exists() else []
    tail = losses[-50:]
    seconds = run.train_seconds
    metrics = {
        **stats,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),  # mean of the last 50 steps
        "first_loss": losses[0] if losses else float("nan"),
        "steps": cfg.steps,
        "epochs": cfg.steps / n_batches,
        "strategy": cfg.strategy,
        "lr": cfg.lr,
        "batch_size": batch_size,
        **({"batch_size_requested": cfg.batch_size} if batch_size < cfg.batch_size else {}),
        "classes": names,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 2),  # the training loop, across resumptions
        "seconds_per_step": round(seconds / cfg.steps, 4),
        "seconds": round(time.time() - started, 2),  # this call, data loading included
    }
    return model.eval(), metrics


__all__ = [
    "STRATEGIES", "Batch", "GroundingSample", "TrainConfig", "batch_order", "collate", "grounding_loss",
    "load_training_set", "read_loss_log", "replay_batch", "supervised", "train_grounding",
]
