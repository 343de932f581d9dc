"""Protocol I: how well are objects grounded in generated images? (The paper's Table 1.)

Test prompts fall into five categories over the world's seen/unseen split:

    one_seen         "a photograph of a {seen}"
    one_unseen       "a photograph of a {unseen}"
    two_seen         "a photograph of a {seen} and a {seen}"       two distinct seen classes
    two_seen_unseen  "a photograph of a {seen} and a {unseen}"     in random order
    two_unseen       "a photograph of a {unseen} and a {unseen}"   two distinct unseen classes

The prompt set is seeded by its own stream (`EvalConfig.seed`, never the training prompts'
`prompts.seed`), so no (prompt, seed) pair of the training table comes back at test time. Each
category's rows depend only on (seed, category, row), so a larger `per_category` extends a
category without changing its first rows.

Every batch is generated ONCE with both hooks active — `FeatureCapture` (the UNet features at
the capture step, for the grounding module) and `DAAMTrace` (cross-attention over all steps, for
the DAAM baseline); neither changes the images. The oracle then labels those very images: the
top-scoring instance of each prompted class is the ground truth (the paper's target). A
prompted class the oracle misses is excluded from BOTH methods' mIoU and counted; so both
methods are scored on exactly the same (image, class) pairs.

    ours: sigmoid(grounding logits) > mask_threshold (0.5)
    DAAM: min-max normalised heat map > daam_threshold (0.4)
    mIoU: mean IoU over a category's (image, class) pairs, in percent (see `groundiff.eval.metrics`)

Ours is also scored at the other thresholds of `THRESHOLD_GRID` (the threshold sweep in the
details and the report). Its seen-class row is how `synth_dataset.threshold` is chosen without
looking at an unseen class.

Test-time normalisation (`norm_at_test`). "running" runs the module in eval mode: BatchNorm uses
its running statistics and the spectral norm is frozen (torch's) or iterates without updating
(the released code's). "batch" reproduces the released test.py, which never calls `.eval()`: the
module runs in train mode, one image at a time (its batch size 1), so each image's mix convs are
normalised by that image's own statistics; as in that code, every call also moves BatchNorm's
running statistics and the spectral-norm vectors (torch's u, v or the released `u0`, `sv0`), so
later images see the state earlier ones left. That happens on a copy made here: the module passed
in, and the folder it was loaded from, are never changed. The headline (`ours`) is
`cfg.norm_at_test`; the other mode is scored on the same pairs, as the table's second row.

The authors released neither this evaluation code nor their PASCAL-sim / COCO-sim test sets;
the settings above are this project's documented choices (PAPER.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from groundiff.core.errors import ParamsError
from groundiff.data.prompts import CLASS_SEP, class_list
from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.pipeline import SamplingConfig, generate, image_size
from groundiff.diffusion.text import class_embeddings
from groundiff.figures import captioned_grid, overlay
from groundiff.eval.metric_names import protocol1_metric_names as flat_metrics
from groundiff.eval.metrics import mean_iou, pairwise_iou
from groundiff.worlds.base import ClassSplit
from groundiff.core.schema import EvalConfig

#: Table 1's columns, in the paper's order.
CATEGORIES: tuple[str, ...] = ("one_seen", "one_unseen", "two_seen", "two_seen_unseen", "two_unseen")
CATEGORY_LABELS = {
    "one_seen": "one seen", "one_unseen": "one unseen", "two_seen": "two seen",
    "two_seen_unseen": "two seen+unseen", "two_unseen": "two unseen",
}
METHODS: tuple[str, ...] = ("ours", "daam")

#: PAPER.md, Protocol I: PASCAL-sim mIoU (%), Stable Diffusion v1 + VOC classes, mean of 3 splits.
PAPER_PASCAL_SIM = {
    "daam": dict(zip(CATEGORIES, (64.84, 62.90, 48.21, 49.19, 50.95))),
    "ours": dict(zip(CATEGORIES, (90.30, 83.08, 79.10, 67.86, 55.74))),
}

#: Mask thresholds at which the grounding module is also scored (the threshold sweep).
THRESHOLD_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

PAIR_COLUMNS = ["index", "category", "prompt", "seed", "k", "class", "seen", "found", "score",
                "iou_ours", "iou_daam"]
#: norm_at_test -> the other mode, scored as the table's second row.
OTHER_NORM = {"running": "batch", "batch": "running"}
#: How reports name the two test-time modes.
NORM_LABELS = {"running": "eval mode, BatchNorm's running statistics",
               "batch": "train mode, each image's own statistics, as the released test.py runs it"}


# --- 1. the test prompts ----------------------------------------------------------------------


def check_against_training(cfg: EvalConfig, train_seed: int, train_capture_t: int, train_steps: int) -> str | None:
    """Refuse a test seed equal to the training prompts' (`prompts.seed`): a ParamsError. Returns a
    warning when the module is tested on features of another step than it was trained on
    (`synthesize.capture_t` of `synthesize.sampling.steps`), else None."""
    if cfg.seed == train_seed:
        raise ParamsError(
            f"params.yaml: eval_grounding.seed is {cfg.seed}, the same as prompts.seed: the test prompts "
            "need their own seed stream; pick another eval_grounding.seed"
        )
    if (train_capture_t, train_steps) != (cfg.capture_t, cfg.sampling.steps):
        return (f"the grounding module was trained on features at t={train_capture_t} of {train_steps} steps "
                f"(synthesize), but eval_grounding captures t={cfg.capture_t} of {cfg.sampling.steps}")
    return None


def _row_seed(seed: int, category: int, row: int) -> int:
    """A 31-bit generation seed for row `row` of category `category` (own stream per category)."""
    return int(np.random.SeedSequence([seed, category, row]).generate_state(1)[0] >> 1)


def _draw(category: str, row: int, split: ClassSplit, rng: np.random.Generator) -> list[str]:
    seen, unseen = split.seen, split.unseen
    if category == "one_seen":
        return [seen[row % len(seen)]]  # cycle: every class equally often
    if category == "one_unseen":
        return [unseen[row % len(unseen)]]
    if category == "two_seen":
        return [seen[i] for i in rng.choice(len(seen), size=2, replace=False)]
    if category == "two_unseen":
        return [unseen[i] for i in rng.choice(len(unseen), size=2, replace=False)]
    pair = [seen[rng.integers(len(seen))], unseen[rng.integers(len(unseen))]]
    return pair[::-1] if rng.random() < 0.5 else pair  # the unseen class first half the time


def protocol1_prompts(split: ClassSplit, cfg: EvalConfig) -> pd.DataFrame:
    """The test set: columns index, category, prompt, classes ('|'-joined), n_objects, seed."""
    if len(split.seen) < 2 or len(split.unseen) < 2:
        raise ValueError(
            f"Protocol I needs at least two seen and two unseen classes (two distinct classes per "
            f"two-object prompt); the {split.world} split has seen {list(split.seen)}, unseen {list(split.unseen)}"
        )
    rows = []
    for c, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([cfg.seed, c])
        for j in range(cfg.per_category):
            names = _draw(category, j, split, rng)
            template = cfg.template_one if len(names) == 1 else cfg.template_two
            rows.append((category, template.format(*names), CLASS_SEP.join(names), len(names),
                         _row_seed(cfg.seed, c, j)))
    table = pd.DataFrame(rows, columns=["category", "prompt", "classes", "n_objects", "seed"])
    table.insert(0, "index", range(len(table)))
    return table


# --- 2. evaluation ----------------------------------------------------------------------------


@dataclass
class Example:
    """One scored (image, class) pair, kept for figures."""

    category: str
    prompt: str
    class_name: str
    seen: bool
    image: np.ndarray  # (H, W, 3) uint8
    oracle: np.ndarray  # (H, W) bool: the ground truth
    ours: np.ndarray  # (H, W) bool
    daam: np.ndarray  # (H, W) bool
    iou_ours: float
    iou_daam: float


@dataclass
class Protocol1Result:
    metrics: dict[str, dict[str, float | None]]  # {"ours"|"daam": {category: mIoU %}}; None: no pair
    counts: dict[str, dict[str, int]]  # {category: images, pairs, evaluated, oracle_missed}
    per_class: dict[str, dict]  # {"ours"|"daam": {class: mIoU %}, "evaluated"|"oracle_missed": {class: n}}
    pairs: pd.DataFrame  # one row per (image, prompted class): PAIR_COLUMNS
    examples: list[Example]
    # ours' mIoU % at each THRESHOLD_GRID value: {category | "seen_classes": {str(threshold): mIoU}}
    threshold_curve: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # the test-time normalisation of `metrics["ours"]` (EvalConfig.norm_at_test)
    norm_at_test: str = "running"
    # ours in the other mode, on the same pairs: {category: mIoU %} (empty when not scored)
    other_norm: dict[str, float | None] = field(default_factory=dict)

    def details(self) -> dict:
        """What metrics/protocol1_details.json holds: counts, per-class mIoU, the threshold sweep, both test modes."""
        out = {"counts": self.counts, "per_class": self.per_class, "threshold_curve": self.threshold_curve}
        if self.other_norm:
            out["norm_at_test"] = {"headline": self.norm_at_test, "other": OTHER_NORM[self.norm_at_test],
                                   "ours_other": self.other_norm}
        return out

    def logged_metrics(self) -> dict[str, float]:
        """`flat_metrics` of the table, plus ours in the other test mode as `ours_norm_<mode>_<category>`."""
        other = {f"ours_norm_{OTHER_NORM[self.norm_at_test]}_{c}": v for c, v in self.other_norm.items() if v is not None}
        return {**flat_metrics(self.metrics), **other}

    def best_seen_threshold(self) -> float | None:
        """The grid threshold with the best mIoU over seen-class pairs (None if none was scored)."""
        curve = {float(t): v for t, v in self.threshold_curve.get("seen_classes", {}).items() if v is not None}
        return max(curve, key=lambda t: (curve[t], -abs(t - 0.5))) if curve else None

    def summary(self) -> str:
        """A few lines for the terminal: mIoU per category and method, pairs scored, best threshold."""
        def row(method: str) -> str:
            return " ".join(f"{c}={v if v is None else round(v, 1)}" for c, v in self.metrics[method].items())

        scored = sum(n["evaluated"] for n in self.counts.values())
        missed = sum(n["oracle_missed"] for n in self.counts.values())
        second = ""
        if self.other_norm:
            values = " ".join(f"{c}={v if v is None else round(v, 1)}" for c, v in self.other_norm.items())
            second = f"  ours, norm_at_test {OTHER_NORM[self.norm_at_test]}: {values}\n"
        return (f"mIoU (%) over {scored} (image, class) pairs ({missed} missed by the oracle, left out)\n"
                f"  ours (norm_at_test {self.norm_at_test}): {row('ours')}\n{second}  daam: {row('daam')}\n"
                f"  ours' best mask threshold on seen-class pairs: {self.best_seen_threshold()}")


def _percent(values) -> float | None:
    value = mean_iou(values)
    return None if np.isnan(value) else round(100 * value, 4)


def summarise(pairs: pd.DataFrame, classes: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """(metrics, counts, per_class) from the pair table; only found pairs are scored."""
    found = pairs[pairs["found"]]
    metrics = {m: {c: _percent(found.loc[found["category"] == c, f"iou_{m}"]) for c in CATEGORIES} for m in METHODS}
    counts = {}
    for c in CATEGORIES:
        rows = pairs[pairs["category"] == c]
        counts[c] = {"images": int(rows["index"].nunique()), "pairs": len(rows),
                     "evaluated": int(rows["found"].sum()), "oracle_missed": int((~rows["found"]).sum())}
    per_class: dict[str, dict] = {m: {k: _percent(found.loc[found["class"] == k, f"iou_{m}"]) for k in classes}
                                  for m in METHODS}
    per_class["evaluated"] = {k: int((found["class"] == k).sum()) for k in classes}
    per_class["oracle_missed"] = {k: int(((pairs["class"] == k) & ~pairs["found"]).sum()) for k in classes}
    return metrics, counts, per_class


def threshold_curve(pairs: pd.DataFrame, sweep: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Ours' mIoU % per category at each THRESHOLD_GRID value, and over all seen-class pairs.

    sweep: (len(pairs), len(THRESHOLD_GRID)) IoUs, NaN for the pairs the oracle missed.
    """
    groups = {c: (pairs["category"] == c).to_numpy() for c in CATEGORIES}
    groups["seen_classes"] = pairs["seen"].to_numpy(bool)
    return {name: {str(t): _percent(sweep[rows & pairs["found"].to_numpy(bool), j]) for j, t in enumerate(THRESHOLD_GRID)}
            for name, rows in groups.items()}


@torch.no_grad()
def _grounding_probs(model, features: list[torch.Tensor], embeddings: torch.Tensor, names: list[list[str]],
                     index_of: dict[str, int], size: int) -> list[np.ndarray]:
    """Per sample, (K_i, size, size) float32 mask probabilities sigmoid(logits)."""
    device = next(model.parameters()).device
    batch, kmax = len(names), max(len(n) for n in names)
    ids = torch.zeros(batch, kmax, dtype=torch.long)
    present = torch.zeros(batch, kmax, dtype=torch.bool)  # (B, K): True = a real class, not padding
    for i, sample in enumerate(names):
        ids[i, :len(sample)] = torch.tensor([index_of[n] for n in sample])
        present[i, :len(sample)] = True
    emb = embeddings.to(device)[ids.to(device)]  # (B, K, D)
    logits = model([f.to(device) for f in features], emb, present.to(device)).float()  # (B, K, S, S)
    if logits.shape[-1] != size:  # a module trained for another output size: compare at the image's
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    probs = torch.sigmoid(logits).cpu().numpy()
    return [probs[i, :len(sample)] for i, sample in enumerate(names)]


def _grounding_probs_one_by_one(model, features: list[torch.Tensor], embeddings: torch.Tensor,
                                names: list[list[str]], index_of: dict[str, int], size: int) -> list[np.ndarray]:
    """`_grounding_probs` image by image, in order: the released test.py's batch size 1 (norm_at_test "batch")."""
    return [_grounding_probs(model, [f[i:i + 1] for f in features], embeddings, [sample], index_of, size)[0]
            for i, sample in enumerate(names)]


def evaluate(pipe, oracle, model, table: pd.DataFrame, split: ClassSplit, cfg: EvalConfig,
             progress: bool = True) -> Protocol1Result:
    """Generate every row of `table` once, score the grounding module and DAAM on the same pairs.

    pipe: the world's StableDiffusionPipeline; oracle: anything with `.detect(images)` returning
    `Detections`; model: a `GroundingModule` (put in eval mode here, otherwise never changed: the
    "batch" test mode runs a train-mode copy).
    """
    names_all = [class_list(c) for c in table["classes"]]
    split.check_known([n for names in names_all for n in names], "Protocol I prompts")
    model.eval()
    # norm_at_test "batch": a copy in train mode, whose running statistics and spectral-norm vectors
    # move image after image as in the released test.py; `model` itself stays as it was loaded
    modes = {"running": model, "batch": copy.deepcopy(model).train()}
    other = OTHER_NORM[cfg.norm_at_test]
    size = image_size(pipe)
    call = capture_call_for(cfg.sampling.steps, cfg.capture_t)
    embeddings = class_embeddings(pipe, split.classes, cfg.template_one)  # (K_all, D)
    index_of = {name: i for i, name in enumerate(split.classes)}
    unseen = set(split.unseen)
    records: list[tuple] = []
    other_iou: list[float] = []  # per pair, ours' IoU in the other test mode
    sweeps: list[np.ndarray] = []  # per pair, ours' IoU at each THRESHOLD_GRID value
    examples: list[Example] = []
    wanted = {c: cfg.examples_per_category for c in CATEGORIES}
    step = cfg.sampling.batch_size
    batches = range(0, len(table), step)
    for start in tqdm(batches, desc="eval_grounding batches", mininterval=5, disable=not progress):
        rows = table.iloc[start:start + step]
        names = names_all[start:start + step]
        prompts, seeds = list(rows["prompt"]), [int(s) for s in rows["seed"]]
        # 1. one generation per batch (`generate` makes one pipeline call for <= batch_size rows),
        #    both hooks on: features at the capture step and cross-attention over all steps
        with FeatureCapture(pipe.unet, call) as cap, DAAMTrace(pipe) as trace:
            images = generate(pipe, prompts, seeds, cfg.sampling, fp32_call=call)  # (B, H, W, 3) uint8
        # 2. both methods' masks, from that single generation; ours in both test modes
        features = cap.result()
        by_mode = {"running": _grounding_probs(modes["running"], features, embeddings, names, index_of, size),
                   "batch": _grounding_probs_one_by_one(modes["batch"], features, embeddings, names, index_of, size)}
        probs, probs_other = by_mode[cfg.norm_at_test], by_mode[other]
        ours = [p > cfg.mask_threshold for p in probs]
        daam = [m.cpu().numpy() > cfg.daam_threshold for m in trace.heat_maps(prompts, names, size)]
        del cap, trace, features, by_mode  # the captured features are large (SD v1: 130 MiB per image)
        # 3. the oracle's top-scoring instance per prompted class is the ground truth
        detections = oracle.detect(list(images))
        pairs_here = []  # (i, k, class, score, oracle mask or None when missed)
        for i, det in enumerate(detections):
            for k, name in enumerate(names[i]):
                mask, score = det.best_mask(name)
                found = mask is not None and score >= cfg.oracle_score_threshold
                pairs_here.append((i, k, name, score, np.asarray(mask, bool) if found else None))
        # 4. IoU on the found pairs only, the same pairs for both methods
        scored = [j for j, p in enumerate(pairs_here) if p[4] is not None]
        iou = {m: np.full(len(pairs_here), np.nan) for m in (*METHODS, "other")}
        sweep = np.full((len(pairs_here), len(THRESHOLD_GRID)), np.nan)
        if scored:
            targets = np.stack([pairs_here[j][4] for j in scored])  # (N, H, W)
            ours_other = [p > cfg.mask_threshold for p in probs_other]
            for m, preds in (("ours", ours), ("daam", daam), ("other", ours_other)):
                iou[m][scored] = pairwise_iou(np.stack([preds[pairs_here[j][0]][pairs_here[j][1]] for j in scored]),
                                              targets)
            scored_probs = np.stack([probs[pairs_here[j][0]][pairs_here[j][1]] for j in scored])
            for g, t in enumerate(THRESHOLD_GRID):
                sweep[scored, g] = pairwise_iou(scored_probs > t, targets)
        sweeps.append(sweep)
        other_iou.extend(iou["other"].tolist())
        for j, (i, k, name, score, target) in enumerate(pairs_here):
            row = rows.iloc[i]
            records.append((int(row["index"]), row["category"], row["prompt"], int(row["seed"]), k, name,
                            name not in unseen, target is not None, float(score),
                            float(iou["ours"][j]), float(iou["daam"][j])))
            if target is not None and wanted[row["category"]] > 0:
                wanted[row["category"]] -= 1
                examples.append(Example(row["category"], row["prompt"], name, name not in unseen, images[i].copy(),
                                        target, ours[i][k], daam[i][k], float(iou["ours"][j]), float(iou["daam"][j])))
    pairs = pd.DataFrame(records, columns=PAIR_COLUMNS)
    metrics, counts, per_class = summarise(pairs, split.classes)
    curve = threshold_curve(pairs, np.concatenate(sweeps) if sweeps else np.zeros((0, len(THRESHOLD_GRID))))
    pairs["iou_ours_other"] = other_iou  # ours in the other test mode (NaN where the oracle missed)
    found = pairs[pairs["found"]]
    second = {c: _percent(found.loc[found["category"] == c, "iou_ours_other"]) for c in CATEGORIES}
    return Protocol1Result(metrics, counts, per_class, pairs, examples, curve, cfg.norm_at_test, second)


# --- 3. reports -------------------------------------------------------------------------------


def markdown_report(result: Protocol1Result, cfg: EvalConfig, setting: str = "") -> str:
    """Table 1 in this project's world, pair counts, and the paper's PASCAL-sim numbers beneath."""
    head = "| method | " + " | ".join(CATEGORY_LABELS[c] for c in CATEGORIES) + " |"
    rule = "|---" * (len(CATEGORIES) + 1) + "|"

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    def row(label: str, values: dict) -> str:
        return f"| {label} | " + " | ".join(fmt(values[c]) for c in CATEGORIES) + " |"

    counts = "| (image, class) pairs scored / prompted | " + " | ".join(
        f"{result.counts[c]['evaluated']} / {result.counts[c]['pairs']}" for c in CATEGORIES) + " |"
    s = cfg.sampling
    lines = [
        "# Protocol I: grounding on generated images",
        "",
        f"mIoU (%) over (image, class) pairs{f' — {setting}' if setting else ''}. {cfg.per_category} "
        f"generated images per category (seed {cfg.seed}), DDIM {s.steps} steps, guidance {s.guidance_scale}; "
        f"UNet features at t={cfg.capture_t} (steps from the end). Ground truth: the oracle's top-scoring "
        f"instance of each prompted class (score >= {cfg.oracle_score_threshold}); a class the oracle misses "
        "is left out for both methods. Ours: sigmoid(logit) > "
        f"{cfg.mask_threshold}; DAAM: normalised heat map > {cfg.daam_threshold}.",
        "",
        head, rule,
        row("DAAM", result.metrics["daam"]),
        row("ours (grounding module)", result.metrics["ours"]),
        *([row(f"ours, norm_at_test: {OTHER_NORM[result.norm_at_test]}", result.other_norm)] if result.other_norm else []),
        counts,
        "",
        *([f"Ours is tested with `norm_at_test: {result.norm_at_test}` ({NORM_LABELS[result.norm_at_test]}); the "
           f"second row is the same module and pairs with `{OTHER_NORM[result.norm_at_test]}` "
           f"({NORM_LABELS[OTHER_NORM[result.norm_at_test]]}). The paper's published numbers were made the "
           "released test.py's way, `batch`.", ""] if result.other_norm else []),
        "**The paper's numbers, for reference (not this run):** Table 1, PASCAL-sim — Stable Diffusion v1 "
        "with PASCAL VOC classes and a COCO Mask R-CNN oracle, mean over the three VOC splits (PAPER.md).",
        "",
        head, rule,
        row("DAAM (paper, PASCAL-sim)", PAPER_PASCAL_SIM["daam"]),
        row("Grounded Diffusion (paper, PASCAL-sim)", PAPER_PASCAL_SIM["ours"]),
        "",
    ]
    if result.threshold_curve:
        best = result.best_seen_threshold()
        groups = [*CATEGORIES, "seen_classes"]
        labels = {**CATEGORY_LABELS, "seen_classes": "**all seen-class pairs**"}
        lines += [
            "## Ours at other mask thresholds",
            "",
            "The same pairs, the grounding module's mask at each threshold. The seen-class row (pairs of a "
            "seen class, in any category) picks `synth_dataset.threshold` without looking at an unseen class"
            + (f": best here **{best}**." if best is not None else "."),
            "",
            "| pairs | " + " | ".join(str(t) for t in THRESHOLD_GRID) + " |",
            "|---" * (len(THRESHOLD_GRID) + 1) + "|",
            *(f"| {labels[g]} | " + " | ".join(fmt(result.threshold_curve[g][str(t)]) for t in THRESHOLD_GRID) + " |"
              for g in groups),
            "",
        ]
    return "\n".join(lines)


def overlay_figure(examples: list[Example], tile: int = 128) -> Image.Image:
    """Rows of (image | oracle | ours | DAAM) overlays, each captioned (seen and unseen classes)."""
    if not examples:
        canvas = Image.new("RGB", (4 * tile, 40), "white")
        ImageDraw.Draw(canvas).text((4, 12), "no (image, class) pair was found by the oracle", fill="black")
        return canvas
    scale = max(1, tile // examples[0].image.shape[0])
    tiles, captions = [], []
    for ex in examples:
        status = "seen" if ex.seen else "UNSEEN"
        tiles += [ex.image, overlay(ex.image, [ex.oracle]), overlay(ex.image, [ex.ours]), overlay(ex.image, [ex.daam])]
        captions += [
            f"{CATEGORY_LABELS[ex.category]}: {ex.prompt.removeprefix('a photograph of ')}",
            f"oracle: {ex.class_name} ({status})",
            f"ours: IoU {100 * ex.iou_ours:.0f}",
            f"DAAM: IoU {100 * ex.iou_daam:.0f}",
        ]
    chars = max(18, examples[0].image.shape[0] * scale // 7)
    return captioned_grid(tiles, captions, columns=4, scale=scale, chars_per_line=chars)
