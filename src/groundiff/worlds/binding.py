"""Does a world's text-to-image model bind class words to the objects it draws? (issue 26)

The grounding module and DAAM both read a class through its word: the text encoder's hidden state
at the class word's tokens (the class embedding) and the UNet's cross-attention to those tokens.
A world whose text encoder gives every class nearly the same state, or whose UNet attends to the
class word no more inside the object than outside, draws the right objects (world_fidelity) and
still gives both methods nothing to ground. Two measurements, on any diffusers
`StableDiffusionPipeline`:

1. `class_word_cosine`: the text encoder's last_hidden_state at the class word's tokens (mean over
   sub-tokens, as `groundiff.diffusion.text.class_embeddings` takes it), one prompt per class,
   pairwise cosine over classes (mean, min, max); the same at the `<eos>` position and for the
   input token embeddings, for comparison.
2. `attention_binding`: one-object images generated and traced as Protocol I does (one seeded
   generation per batch under `DAAMTrace`; the oracle's top-scoring instance of the prompted class
   is the ground truth; images where the oracle finds none are counted and skipped):
   - DAAM mIoU (%): the min-max normalised heat map > `daam_threshold` against the oracle's mask;
   - per cross-attention layer (every one, also those DAAM skips): the class word's attention
     inside vs outside the oracle's mask, and its pixel AUROC for the mask. Each layer's map is
     upsampled to the image as DAAM's is (`DAAMTrace.layer_maps`); the mask stays at image size.

    cfg = BindingConfig(per_class=2)
    metrics = {"cosine": class_word_cosine(pipe, classes), "attention": attention_binding(pipe, oracle, classes, cfg)}
    print(binding_report(metrics))

Bars for the shapes world's v2 model (`BARS`): class-word cosine <= 0.9; DAAM >= 40 mIoU; the class
word's attention higher inside the object than outside in most cross-attention layers.

This module is layer 2 (worlds); Protocol I lives in layer 4 (eval), so its IoU (`eval.metrics`)
and its private seed helper are not imported: `_iou` and `_image_seed` below are small local
equivalents (the tests check `_iou` against `eval.metrics.pairwise_iou`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from groundiff.core.schema import BindingConfig
from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.pipeline import generate, image_size
from groundiff.diffusion.text import class_embeddings, token_positions
from groundiff.worlds.bars import BINDING_BARS
from groundiff.worlds.oracle import Oracle

#: What a world model must reach (issue 26): see `bars_met`.
BARS = BINDING_BARS

#: The key of the DAAM map itself (mean of DAAM's layers, normalised) beside the layers' rows.
DAAM_ROW = "daam"


# --- 1. the text encoder: are class words distinct? --------------------------------------------


def _pairwise(vectors: torch.Tensor, names: Sequence[str]) -> dict:
    """Mean, min and max cosine over the pairs i < j of (K, D) vectors, and the closest pair."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    sim = unit @ unit.T  # (K, K)
    i, j = torch.triu_indices(len(names), len(names), offset=1)
    values = sim[i, j]
    best = int(values.argmax())
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
            "closest_pair": [names[int(i[best])], names[int(j[best])]]}


@torch.no_grad()
def class_word_cosine(pipe, classes: Sequence[str], template: str = "a photograph of a {}") -> dict:
    """Pairwise cosine over classes of: the text encoder's last_hidden_state at the class word (mean
    over its sub-tokens), at `<eos>`, and the class word's input token embedding (same tokens).

    Returns {"class_word" | "eos" | "input_embedding": {mean, min, max, closest_pair}, "classes",
    "template"}. 1.0 means the encoder cannot tell the classes apart.
    """
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"a pairwise cosine needs at least two classes, got {classes}")
    tokenizer = pipe.tokenizer
    prompts = [template.format(c) for c in classes]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(pipe.device)  # (K, T)
    hidden = pipe.text_encoder(ids)[0].float()  # (K, T, D) last_hidden_state
    eos = tokenizer.eos_token_id
    if eos is None or not bool((ids == eos).any(1).all()):
        raise ValueError("the tokenizer has no <eos> token in every prompt (eos_token_id "
                         f"{eos}); is the template too long for model_max_length {tokenizer.model_max_length}?")
    eos_pos = (ids == eos).int().argmax(1)  # the first <eos> (CLIP pads with <eos> too)
    rows = torch.arange(len(classes), device=ids.device)
    embed = pipe.text_encoder.get_input_embeddings()
    inputs = []
    for k, (prompt, name) in enumerate(zip(prompts, classes)):
        pos = token_positions(tokenizer, prompt, name)
        inputs.append(embed(ids[k, pos]).float().mean(0))  # (D,): mean over sub-tokens
    return {
        "classes": classes,
        "template": template,
        "class_word": _pairwise(class_embeddings(pipe, classes, template), classes),  # what the method reads
        "eos": _pairwise(hidden[rows, eos_pos], classes),
        "input_embedding": _pairwise(torch.stack(inputs), classes),
    }


# --- 2. the UNet's cross-attention: is the class word attended where the object is? ------------


def binding_prompts(classes: Sequence[str], cfg: BindingConfig) -> list[tuple[str, str, int]]:
    """(class, prompt, seed) for `per_class` images of each class, class by class."""
    return [(name, cfg.template.format(name), _image_seed(cfg.seed, k, r))
            for k, name in enumerate(classes) for r in range(cfg.per_class)]


def _image_seed(seed: int, k: int, r: int) -> int:
    """A 31-bit seed for image r of class k: a larger per_class extends each class's images."""
    return int(np.random.SeedSequence([seed, k, r]).generate_state(1)[0] >> 1)


def _iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Protocol I's IoU of two boolean masks (both empty -> 1), as `eval.metrics.pairwise_iou`."""
    union = np.count_nonzero(pred | target)
    return 1.0 if union == 0 else np.count_nonzero(pred & target) / union


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) area under the ROC curve, ties counted half; NaN without both labels."""
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # average 1-based rank of each tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def inside_outside(values: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(mean inside the mask, mean outside, AUROC) of one map; NaN where a side is empty."""
    inside = float(values[mask].mean()) if mask.any() else float("nan")
    outside = float(values[~mask].mean()) if (~mask).any() else float("nan")
    return inside, outside, auroc(values, mask)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def attention_binding(pipe, oracle: Oracle, classes: Sequence[str], cfg: BindingConfig = BindingConfig(),
                      progress: bool = False) -> dict:
    """Generate `per_class` one-object images per class, score DAAM against the oracle and read every
    cross-attention layer's class-word map inside vs outside the oracle's mask.

    Per layer: "inside" / "outside" are the mean over scored images of the class word's mean
    attention probability (per step, mean over heads) inside / outside the mask; "inside_gt_outside"
    the fraction of images where inside > outside; "auroc" the mean per-image pixel AUROC of the map
    for the mask; "daam" whether DAAM averages this layer; "resolution" its map's side. The row
    `DAAM_ROW` is DAAM's own normalised heat map. "layers_inside_gt_outside" counts the layers
    (not the DAAM row) whose mean inside exceeds their mean outside.
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in oracle.classes]
    if unknown:
        raise ValueError(f"the oracle cannot detect {unknown}; it knows {list(oracle.classes)}")
    table = binding_prompts(classes, cfg)
    size, steps, step = image_size(pipe), cfg.sampling.steps, cfg.sampling.batch_size
    per_image: list[dict] = []
    stats: dict[str, dict[str, list[float]]] = {}  # row -> inside / outside / auroc, one value per scored image
    layer_info: dict[str, dict] = {}
    for start in tqdm(range(0, len(table), step), desc="binding batches", mininterval=5, disable=not progress):
        rows = table[start:start + step]
        names = [name for name, _, _ in rows]
        prompts, seeds = [p for _, p, _ in rows], [s for _, _, s in rows]
        words = [[name] for name in names]
        # 1. one generation per batch, every cross-attention layer traced (the images are unchanged)
        with DAAMTrace(pipe, all_layers=True) as trace:
            images = generate(pipe, prompts, seeds, cfg.sampling)  # (B, H, W, 3) uint8
        heat = [m[0].cpu().numpy() for m in trace.heat_maps(prompts, words, size)]  # (H, W) in [0, 1]
        layers = trace.layer_maps(prompts, words, size)  # per image {layer: (1, H, W)}
        for name in trace.recorded:
            layer_info.setdefault(name, {"daam": name in trace.layers,
                                         "resolution": int(round(trace.store[name].shape[1] ** 0.5))})
        del trace
        # 2. the oracle's top-scoring instance of the prompted class is the ground truth
        for i, det in enumerate(oracle.detect(list(images))):
            mask, score = det.best_mask(names[i])
            record = {"class": names[i], "seed": seeds[i], "score": float(score), "found": False, "iou": None}
            per_image.append(record)
            if mask is None or score < cfg.oracle_score_threshold:
                continue  # the model did not draw it (as the oracle sees it): skipped, counted
            target = np.asarray(mask, bool)  # (H, W)
            record.update(found=True, iou=_iou(heat[i] > cfg.daam_threshold, target))
            maps = {DAAM_ROW: heat[i], **{n: m[0].cpu().numpy() / steps for n, m in layers[i].items()}}
            for row, values in maps.items():
                inside, outside, area = inside_outside(values, target)
                row_stats = stats.setdefault(row, {"inside": [], "outside": [], "gt": [], "auroc": []})
                row_stats["inside"].append(inside)
                row_stats["outside"].append(outside)
                row_stats["gt"].append(float(inside > outside) if np.isfinite(inside) and np.isfinite(outside)
                                       else float("nan"))
                row_stats["auroc"].append(area)
    # 3. summaries: DAAM's mIoU over the scored images, per class and overall; per-layer means
    scored = [r for r in per_image if r["found"]]

    def miou(records: list[dict]) -> float | None:
        return round(100 * float(np.mean([r["iou"] for r in records])), 4) if records else None

    per_class = {c: {"scored": sum(r["class"] == c for r in scored),
                     "skipped": sum(r["class"] == c and not r["found"] for r in per_image),
                     "daam_miou": miou([r for r in scored if r["class"] == c])} for c in classes}
    rows_out = {}
    for row in [*layer_info, DAAM_ROW]:
        s = stats.get(row, {"inside": [], "outside": [], "gt": [], "auroc": []})
        info = layer_info.get(row, {"daam": True, "resolution": size})
        rows_out[row] = {**info, "inside": _mean(s["inside"]), "outside": _mean(s["outside"]),
                         "inside_gt_outside": _mean(s["gt"]), "auroc": _mean(s["auroc"])}
    count = sum(1 for name in layer_info
                if rows_out[name]["inside"] is not None and rows_out[name]["outside"] is not None
                and rows_out[name]["inside"] > rows_out[name]["outside"])
    return {
        "images": len(per_image),
        "scored": len(scored),
        "skipped": len(per_image) - len(scored),
        "daam_miou": miou(scored),
        "per_class": per_class,
        "layers": rows_out,
        "layers_inside_gt_outside": count,
        "n_layers": len(layer_info),
        "maps": "each layer's class-word map upsampled to the image as DAAM does (bicubic to the latent, clamped "
                "at 0, mean over heads, bicubic to the image), divided by the steps (mean attention probability "
                "per step); the oracle's mask at image size",
        "config": asdict(cfg),
        "per_image": per_image,
    }


# --- 3. the bars and a report -----------------------------------------------------------------


def bars_met(metrics: dict) -> dict[str, bool | None]:
    """Each of `BARS`, met or not (None: not measured). metrics: {"cosine": ..., "attention": ...}."""
    cos, att = metrics.get("cosine"), metrics.get("attention")
    out: dict[str, bool | None] = {k: None for k in BARS}
    if cos is not None:
        out["class_word_cosine_mean_at_most"] = cos["class_word"]["mean"] <= BARS["class_word_cosine_mean_at_most"]
    if att is not None:
        out["daam_miou_at_least"] = (None if att["daam_miou"] is None
                                     else att["daam_miou"] >= BARS["daam_miou_at_least"])
        out["layers_inside_gt_outside"] = 2 * att["layers_inside_gt_outside"] > att["n_layers"]
    return out


def binding_report(metrics: dict) -> str:
    """A short markdown report of {"cosine": class_word_cosine(...), "attention": attention_binding(...)}
    (either may be missing): the headline against the bars, then one row per cross-attention layer."""
    met = bars_met(metrics)

    def fmt(v, digits: int = 3) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    def verdict(key: str) -> str:
        return {None: "—", True: "met", False: "**not met**"}[met[key]]

    lines = ["| measure | value | bar | |", "|---|---|---|---|"]
    cos, att = metrics.get("cosine"), metrics.get("attention")
    if cos is not None:
        c = cos["class_word"]
        lines += [
            f"| class-word hidden state, pairwise cosine mean (min–max) over {len(cos['classes'])} classes "
            f"| {fmt(c['mean'])} ({fmt(c['min'])}–{fmt(c['max'])}) | ≤ {BARS['class_word_cosine_mean_at_most']} "
            f"| {verdict('class_word_cosine_mean_at_most')} |",
            f"| `<eos>` hidden state, pairwise cosine mean | {fmt(cos['eos']['mean'])} | | |",
            f"| class-word input embedding, pairwise cosine mean | {fmt(cos['input_embedding']['mean'])} | | |",
        ]
    if att is not None:
        lines += [
            f"| DAAM mIoU (%) on one-object images ({att['scored']} scored, {att['skipped']} skipped: oracle "
            f"found no instance) | {fmt(att['daam_miou'], 2)} | ≥ {BARS['daam_miou_at_least']:g} "
            f"| {verdict('daam_miou_at_least')} |",
            f"| cross-attention layers with class-word attention inside > outside | "
            f"{att['layers_inside_gt_outside']} / {att['n_layers']} | most | {verdict('layers_inside_gt_outside')} |",
            "",
            "| layer | side | in DAAM | inside | outside | images inside > outside | AUROC |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in att["layers"].items():
            label = "DAAM heat map (normalised)" if name == DAAM_ROW else f"`{name.removesuffix('.processor')}`"
            share = "—" if row["inside_gt_outside"] is None else f"{100 * row['inside_gt_outside']:.0f}%"
            lines.append(f"| {label} | {row['resolution']} | {'yes' if row['daam'] else 'no'} | {fmt(row['inside'], 4)} "
                         f"| {fmt(row['outside'], 4)} | {share} | {fmt(row['auroc'])} |")
    return "\n".join(lines) + "\n"
