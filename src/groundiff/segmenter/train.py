"""Training a MaskFormer segmenter on concatenated VOC-layout sources; resumable and deterministic.

A training set is a list of `DataSource`s — (VOC root, split, label folder, labels to hide) —
concatenated, e.g. Model D = the real train split with unseen classes hidden + the synthetic
`one` and `two` splits. Batches are drawn uniformly from the union, so each source weighs by its
size — unless a source has a `share`: then that fraction of the samples comes from it, and the
sources without one split the rest by size.

Targets. A label map becomes MaskFormer's targets the way MaskFormer's semantic dataset mapper
makes them: one binary mask per label value present (background 0 included, it is class 0), with
that value as the mask's class. Pixels labelled 255 belong to no mask *and are left out of the
mask losses*: transformers' MaskFormer loss would count them as negatives of every mask, which in
zero-shot training teaches "an unseen object here is nothing" — exactly what the ignore label is
there to avoid. So the loss here is transformers' own (its Hungarian matcher and cross-entropy,
and the same focal + dice mask losses) with the mask terms averaged over labelled pixels only;
with no ignored pixels it equals `MaskFormerForInstanceSegmentation`'s loss (tested). Deep
supervision (`aux_loss`) is computed here too, as the original MaskFormer does it (see
`auxiliary_predictions` for why not transformers' own).

Determinism and resumption. Step `s` draws its batch, augmentation and dropout from seeds
derived from (seed, s) alone, so a run resumed from a checkpoint at step s continues exactly as
the uninterrupted run would. The state (model, AdamW, step) is one safetensors file; it is reused
only when the fingerprint of the config, classes and the data's bytes matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from groundiff.core import losslog
from groundiff.core.checkpoint import fingerprint
from groundiff.core.training import TrainingLoop
from groundiff.data.voc import IGNORE, load_label_png, split_ids
from groundiff.segmenter.model import MEAN, STD, SegmenterConfig, Segmenter, build_model

#: Mask logit given to ignored pixels when matching: sigmoid ~ 2e-22, so they cost nothing.
_IGNORE_LOGIT = -50.0
_PAD_COLOUR = tuple(int(round(255 * m)) for m in MEAN)  # padding normalises to 0


@dataclass(frozen=True)
class DataSource:
    """One VOC-layout split to train on."""

    root: str  # dataset folder (JPEGImages/, <labels>/, ImageSets/Segmentation/)
    split: str  # ImageSets/Segmentation/<split>.txt
    labels: str = "SegmentationClass"  # label folder
    ignore_labels: tuple[int, ...] = ()  # labels turned into 255 on load (hides unseen classes)
    share: float | None = None  # fraction of all samples drawn from this source; None: by its size
    synthetic: bool = False  # generated images (SegmenterConfig.color_aug "synthetic" distorts only these)

    def __post_init__(self) -> None:
        if self.share is not None and not 0.0 < self.share <= 1.0:
            raise ValueError(f"{self.root}:{self.split}: share must be in (0, 1], got {self.share}")

    def __str__(self) -> str:
        hidden = f", hiding labels {list(self.ignore_labels)}" if self.ignore_labels else ""
        share = f", {self.share:.0%} of samples" if self.share is not None else ""
        return f"{self.root}:{self.split} ({self.labels}{hidden}{share})"


def source_probabilities(shares: Sequence[float | None], sizes: Sequence[int],
                         names: Sequence[str] | None = None) -> np.ndarray | None:
    """Per-item sampling probabilities over the concatenation of sources with these `shares` and
    `sizes` items each (the module docstring); None when no source has a share (uniform). `names`
    label the sources in errors."""
    if all(share is None for share in shares):
        return None
    names = names or [f"source {i}" for i in range(len(shares))]
    for name, share, n in zip(names, shares, sizes):
        if share is not None and n == 0:
            raise ValueError(f"{name} has a share but no samples")
    fixed = sum(share for share in shares if share is not None)
    rest = sum(n for share, n in zip(shares, sizes) if share is None)
    if fixed > 1.0 + 1e-9 or (rest == 0 and abs(fixed - 1.0) > 1e-9):
        raise ValueError(f"source shares sum to {fixed:g}: they must sum to 1, or to less when some "
                         "sources have no share (those split the rest by size)")
    per_item = [(share / n if share is not None else (1.0 - fixed) / rest) if n else 0.0
                for share, n in zip(shares, sizes)]
    probs = np.concatenate([np.full(n, p) for p, n in zip(per_item, sizes)])
    return probs / probs.sum()


class SegmentationSet:
    """The concatenation of several sources' samples, loaded lazily (PASCAL VOC does not fit in memory)."""

    def __init__(self, sources: Sequence[DataSource]) -> None:
        if not sources:
            raise ValueError("no training data: give at least one DataSource")
        self.sources = tuple(sources)
        self.items = [(source, image_id) for source in self.sources for image_id in split_ids(Path(source.root), source.split)]
        if not self.items:
            raise ValueError(f"no training data: the splits {[str(s) for s in self.sources]} are all empty")
        self.probabilities = self._probabilities()

    def _probabilities(self) -> np.ndarray | None:
        """Per-item sampling probabilities from the sources' shares (None: uniform over the union)."""
        sizes = [sum(1 for source, _ in self.items if source == s) for s in self.sources]
        return source_probabilities([s.share for s in self.sources], sizes, [str(s) for s in self.sources])

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        """Samples per source."""
        out: dict[str, int] = {}
        for source, _ in self.items:
            out[str(source)] = out.get(str(source), 0) + 1
        return out

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, label (H, W) uint8) of sample `index`."""
        source, image_id = self.items[index]
        root = Path(source.root)
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as img:
            image = np.array(img.convert("RGB"))
        label = load_label_png(root / source.labels / f"{image_id}.png")
        if source.ignore_labels:
            label = np.where(np.isin(label, source.ignore_labels), IGNORE, label).astype(np.uint8)
        return image, label

    def check(self, num_labels: int) -> None:
        """Read every sample once, before training: a label a batch would meet only at step 464 of 4000
        fails now, naming its file. Labels must be palette PNGs of the image's size holding class
        indices 0..num_labels-1 or 255 (ignore)."""
        for source, image_id in tqdm(self.items, desc="checking training labels", mininterval=5, leave=False):
            root = Path(source.root)
            image_path, label_path = root / "JPEGImages" / f"{image_id}.jpg", root / source.labels / f"{image_id}.png"
            fix = (f"fix or remake the label, or drop {image_id} from "
                   f"{root / 'ImageSets' / 'Segmentation' / (source.split + '.txt')}")
            try:
                with Image.open(image_path) as img:
                    size = img.size
                label = load_label_png(label_path)
                if source.ignore_labels:  # hidden (unseen) classes are ignore, as load() makes them
                    label = np.where(np.isin(label, source.ignore_labels), IGNORE, label)
            except (OSError, ValueError) as err:
                raise ValueError(f"training data: {err}; {fix}") from err
            if label.shape != (size[1], size[0]):
                raise ValueError(f"training data: {label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                                 f"{image_path.name} is {size[0]}x{size[1]}; {fix}")
            bad = sorted(set(np.unique(label).tolist()) - set(range(num_labels)) - {IGNORE})
            if bad:
                raise ValueError(f"training data: {label_path} holds label value(s) {bad}, but the {num_labels - 1} "
                                 f"classes use 0..{num_labels - 1} (and {IGNORE} = ignore); {fix}")

    def fingerprint(self) -> str:
        """A hash of every sample's image and label bytes, in order: changed data never resumes."""
        h = hashlib.sha256()
        for source, image_id in self.items:
            root = Path(source.root)
            h.update(f"{source}|{image_id}|".encode())
            for path in (root / "JPEGImages" / f"{image_id}.jpg", root / source.labels / f"{image_id}.png"):
                h.update(path.read_bytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- samples -> targets


def augment(image: np.ndarray, label: np.ndarray, cfg: SegmenterConfig, rng: np.random.Generator | None,
            distort: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Resize to input_size x input_size; in training (rng given) with scale jitter and hflip.

    Scale jitter: resize to round(input_size * s), s ~ U(scale_jitter), then a random crop (s > 1)
    or random placement on a canvas of the mean colour whose label is 255 (s < 1). With `distort`
    (in training), the image is photometrically distorted (`photometric_distort`) before that.
    """
    size = cfg.input_size
    scale = rng.uniform(*cfg.scale_jitter) if rng is not None else 1.0
    n = max(1, int(round(size * scale)))
    img = np.array(Image.fromarray(image).resize((n, n), Image.BILINEAR)) if image.shape[:2] != (n, n) else image
    if rng is not None and distort:
        img = photometric_distort(img, rng)  # before padding: the canvas stays the mean colour
    lab = np.array(Image.fromarray(label).resize((n, n), Image.NEAREST)) if label.shape != (n, n) else label
    if n != size:
        y, x = (int(v) for v in rng.integers(0, abs(n - size) + 1, size=2)) if rng is not None else (abs(n - size) // 2,) * 2
        if n > size:  # crop
            img, lab = img[y:y + size, x:x + size], lab[y:y + size, x:x + size]
        else:  # pad
            canvas = np.empty((size, size, 3), np.uint8)
            canvas[:] = _PAD_COLOUR
            canvas_lab = np.full((size, size), IGNORE, np.uint8)
            canvas[y:y + n, x:x + n], canvas_lab[y:y + n, x:x + n] = img, lab
            img, lab = canvas, canvas_lab
    if rng is not None and cfg.hflip and rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


#: Photometric distortion as SSD defined it and MaskFormer's semantic configs use it: brightness
#: shift, contrast and saturation factors, and hue shift as a fraction of the colour circle.
BRIGHTNESS_DELTA, CONTRAST_RANGE, SATURATION_RANGE, HUE_DELTA = 32.0, (0.5, 1.5), (0.5, 1.5), 0.1


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same, with SSD's random photometric distortions.

    A brightness shift, then either contrast, saturation, hue or saturation, hue, contrast (each
    order with probability 1/2); every distortion applies with probability 1/2 and clips to
    0..255. Hue and saturation act in HSV (PIL's 8-bit HSV: the hue wraps around).
    """
    def linear(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).round().astype(np.uint8)

    def brightness(x: np.ndarray) -> np.ndarray:
        return linear(x, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)) if rng.random() < 0.5 else x

    def contrast(x: np.ndarray) -> np.ndarray:
        return linear(x, alpha=rng.uniform(*CONTRAST_RANGE)) if rng.random() < 0.5 else x

    def saturation(x: np.ndarray) -> np.ndarray:
        if rng.random() >= 0.5:
            return x
        hsv = np.array(Image.fromarray(x).convert("HSV"))
        hsv[..., 1] = linear(hsv[..., 1], alpha=rng.uniform(*SATURATION_RANGE))
        return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))

    def hue(x: np.ndarray) -> np.ndarray:
        if rng.random() >= 0.5:
            return x
        hsv = np.array(Image.fromarray(x).convert("HSV"))
        shift = int(round(256 * rng.uniform(-HUE_DELTA, HUE_DELTA)))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
        return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))

    out = brightness(np.asarray(image, np.uint8))
    order = (contrast, saturation, hue) if rng.random() < 0.5 else (saturation, hue, contrast)
    for distort in order:
        out = distort(out)
    return out


def label_to_targets(label: np.ndarray, num_labels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (H, W) label map -> MaskFormer targets.

    Returns masks (N, H, W) float 0/1, one per label value present (255 excluded), classes (N,)
    int64 = those values in increasing order (0 = background is a class), and valid (H, W) bool,
    False where the label is 255.
    """
    label = np.asarray(label)
    valid = label != IGNORE
    present = np.unique(label[valid])
    if present.size and present[-1] >= num_labels:
        raise ValueError(f"label map holds label {int(present[-1])}, but the segmenter knows labels 0..{num_labels - 1} "
                         "(background + classes); is the dataset from another vocabulary?")
    masks = (label[None] == present[:, None, None]).astype(np.float32)  # (N, H, W)
    return torch.from_numpy(masks), torch.from_numpy(present.astype(np.int64)), torch.from_numpy(valid)


# --------------------------------------------------------------------------- loss


def _masked_focal_dice(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, num_masks: float,
                       alpha: float = 0.25, gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `sigmoid_focal_loss` and `dice_loss` over (N, P) masks, ignored pixels left out.

    Focal: mean over each mask's labelled pixels; dice: sums over labelled pixels; both summed over
    masks and divided by num_masks. With `valid` all ones these equal transformers' functions.
    """
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    focal = ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))
    focal = ((focal * valid).sum(1) / valid.sum(1).clamp(min=1)).sum() / num_masks
    probs = probs * valid
    dice = 1 - (2 * (probs * targets).sum(1) + 1) / (probs.sum(1) + targets.sum(1) + 1)
    return focal, dice.sum() / num_masks


def _layer_loss(model, class_logits: torch.Tensor, mask_logits: torch.Tensor, mask_labels: list[torch.Tensor],
                class_labels: list[torch.Tensor], valid: torch.Tensor, num_masks: float) -> dict[str, torch.Tensor]:
    """One decoder layer's (cross-entropy, focal, dice) after Hungarian matching."""
    h, w = mask_logits.shape[-2:]
    valid_low = F.interpolate(valid[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0  # (B, h, w)
    match_logits = mask_logits.detach().masked_fill(~valid_low[:, None], _IGNORE_LOGIT)  # (B, Q, h, w)
    indices = model.matcher(match_logits, class_logits.detach(), mask_labels, class_labels)
    ce = model.criterion.loss_labels(class_logits, class_labels, indices)["loss_cross_entropy"]
    b_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    q_idx = torch.cat([src for src, _ in indices])
    targets = torch.cat([m[tgt] for m, (_, tgt) in zip(mask_labels, indices)])  # (N, H, W)
    pred = mask_logits[b_idx, q_idx]  # (N, h, w)
    pred = F.interpolate(pred[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    focal, dice = _masked_focal_dice(pred.flatten(1), targets.flatten(1), valid[b_idx].flatten(1).float(), num_masks)
    return {"loss_cross_entropy": ce, "loss_mask": focal, "loss_dice": dice}


def auxiliary_predictions(model, outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(class logits, mask logits) of every decoder layer but the last, as the original MaskFormer:
    each layer's output through the decoder's final LayerNorm, then the class and mask heads.

    Why not transformers' `use_auxiliary_loss`: in 5.24 its forward then fails unless
    `output_hidden_states=True` is passed, and its auxiliary set includes the decoder's all-zero
    *input* and takes the final prediction from a different tensor than the plain forward.
    outputs: the model's output with `output_hidden_states=True` (hidden states = input, layer
    1 .. L-1 outputs, final normalised output).
    """
    states = outputs.transformer_decoder_hidden_states
    if states is None:
        raise ValueError("auxiliary predictions need the decoder's hidden states: call the model with output_hidden_states=True")
    norm = model.model.transformer_module.decoder.layernorm
    pixels = outputs.pixel_decoder_last_hidden_state  # (B, C, h, w)
    out = []
    for hidden in states[1:-1]:  # (B, Q, D) per intermediate layer
        hidden = norm(hidden)
        masks = torch.einsum("bqc,bchw->bqhw", model.mask_embedder(hidden), pixels)  # (B, Q, h, w)
        out.append((model.class_predictor(hidden), masks))
    return out


def maskformer_loss(model, outputs, mask_labels: list[torch.Tensor], class_labels: list[torch.Tensor],
                    valid: torch.Tensor, aux: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """MaskFormer's weighted loss (cross-entropy + mask_weight * focal + dice_weight * dice), with
    pixels where `valid` (B, H, W) is False ignored; with `aux`, also on every intermediate decoder
    layer (deep supervision; the outputs must hold the decoder's hidden states).

    Returns the total and its three parts (summed over layers, weighted) as floats.
    """
    num_masks = float(max(sum(len(c) for c in class_labels), 1))
    layers = [(outputs.class_queries_logits, outputs.masks_queries_logits)]
    if aux:
        layers += auxiliary_predictions(model, outputs)
    parts = {k: 0.0 for k in model.weight_dict}
    total = outputs.class_queries_logits.new_zeros(())
    for class_logits, mask_logits in layers:
        for key, value in _layer_loss(model, class_logits, mask_logits, mask_labels, class_labels, valid, num_masks).items():
            weighted = model.weight_dict[key] * value
            total = total + weighted
            parts[key] += float(weighted.detach())
    return total, parts


# --------------------------------------------------------------------------- training


def _lr_factor(step: int, cfg: SegmenterConfig) -> float:
    """Linear warmup, then MaskFormer's poly decay (power 0.9)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    return warm * (1 - step / cfg.steps) ** 0.9


def _distorts(cfg: SegmenterConfig, source: DataSource) -> bool:
    """Whether `cfg.color_aug` photometrically distorts this source's training images."""
    return cfg.color_aug == "all" or (cfg.color_aug == "synthetic" and source.synthetic)


def step_indices(rng: np.random.Generator, n: int, batch_size: int, probabilities: np.ndarray | None) -> np.ndarray:
    """A step's sample indices out of `n`: uniform, or by `probabilities` (`source_probabilities`);
    both backends draw with it from rng(seed, step)."""
    if probabilities is None:
        return rng.integers(n, size=batch_size)
    return rng.choice(n, size=batch_size, p=probabilities)


def _batch(data: SegmentationSet, cfg: SegmenterConfig, step: int, num_labels: int, device):
    """Step `step`'s batch: sample indices and augmentation from rng(seed, step) only."""
    rng = np.random.default_rng([cfg.seed, step])
    indices = step_indices(rng, len(data), cfg.batch_size, data.probabilities)
    samples = [augment(*data.load(int(i)), cfg, rng, distort=_distorts(cfg, data.items[int(i)][0])) for i in indices]
    images = np.stack([s[0] for s in samples]).astype(np.float32) / 255.0
    x = torch.from_numpy((images - MEAN) / STD).permute(0, 3, 1, 2).contiguous().to(device)  # (B, 3, S, S)
    targets = [label_to_targets(s[1], num_labels) for s in samples]
    mask_labels = [t[0].to(device) for t in targets]  # B x (N_i, S, S)
    class_labels = [t[1].to(device) for t in targets]  # B x (N_i,)
    valid = torch.stack([t[2] for t in targets]).to(device)  # (B, S, S)
    return x, mask_labels, class_labels, valid


def train_segmenter(sources: Sequence[DataSource], classes: Sequence[str], cfg: SegmenterConfig, work_dir: Path,
                    device: str = "cpu", on_log: Callable[[dict], None] | None = None,
                    progress: bool = True) -> tuple[Segmenter, dict]:
    """Train a MaskFormer on the concatenated sources; resume from `work_dir` when it matches.

    classes: the vocabulary, label k + 1 = classes[k] (labels beyond it in the data are an error).
    work_dir: training state (`state.safetensors`), loss log (`log.csv`: step, loss, parts, lr).
    on_log: called every `log_every` steps with {"step", "loss", <parts>, "lr", "seconds"}.
    Returns the trained segmenter (eval mode) and a summary: samples per source, final loss,
    this session's seconds and seconds per step.
    """
    with _cpu_threads(cfg.num_threads if device == "cpu" else 0):
        return _train(sources, classes, cfg, work_dir, device, on_log, progress)


@contextmanager
def _cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to `n` (0: unchanged) for the block, then restored."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(sources: Sequence[DataSource], classes: Sequence[str], cfg: SegmenterConfig, work_dir: Path,
           device: str, on_log: Callable[[dict], None] | None, progress: bool) -> tuple[Segmenter, dict]:
    # 1. data and model
    data = SegmentationSet(sources)
    num_labels = len(classes) + 1
    data.check(num_labels)  # every label, before the first step
    model = build_model(cfg, classes).to(device)
    encoder = model.model.pixel_level_module.encoder
    backbone_ids = {id(p) for p in encoder.parameters()}
    opt = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) in backbone_ids], "lr_mult": cfg.backbone_lr_mult},
        {"params": [p for p in model.parameters() if id(p) not in backbone_ids], "lr_mult": 1.0},
    ], lr=cfg.lr, weight_decay=cfg.weight_decay)

    # 2. resume when config, classes and data are unchanged
    fp = fingerprint([asdict(cfg), list(classes), [asdict(s) for s in data.sources], data.fingerprint()])
    loop = TrainingLoop(work_dir, fp, cfg.steps, {"model": model}, {"main": opt}, log_every=cfg.log_every,
                        checkpoint_every=cfg.checkpoint_every, desc="segmenter", on_log=on_log, progress=progress)
    start = loop.resume()

    # 3. train
    model.train()

    def step(s: int) -> dict:
        lr = cfg.lr * _lr_factor(s, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        torch.manual_seed(cfg.seed * 1_000_003 + s)  # dropout: a function of (seed, step) only
        x, mask_labels, class_labels, valid = _batch(data, cfg, s, num_labels, device)
        outputs = model(pixel_values=x, output_hidden_states=cfg.aux_loss)
        loss, parts = maskformer_loss(model, outputs, mask_labels, class_labels, valid, aux=cfg.aux_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return {"loss": float(loss.detach()), **parts, "lr": lr}

    run = loop.run(step)
    model.eval()
    last, seconds = run.last, run.seconds
    if last is None and loop.log.exists():  # nothing left to train: report the logged end
        tail = losslog.read_rows(loop.log)[-cfg.log_every:]
        last = {"loss": float(np.mean([float(r["loss"]) for r in tail]))} if tail else None
    summary = {
        "samples": data.counts(), "steps": cfg.steps, "resumed_from": start,
        "final_loss": last["loss"] if last else None, "seconds": seconds,
        "seconds_per_step": seconds / (cfg.steps - start) if cfg.steps > start else None,
    }
    return Segmenter(model, classes, cfg.input_size), summary
