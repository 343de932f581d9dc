"""The synthetic semantic-segmentation dataset: diffusion + grounding module, every class labelled.

Prompts name classes from the *whole* vocabulary — seen and unseen — and the grounding module
labels each generated image: a pixel takes the prompted class with the highest probability,
background where no prompted class is confident (`threshold`), and 255 (ignore) where the best
class is only half-confident (`ignore_below` <= p < `threshold`; off by default). With
`labels: oracle` the world's oracle detector labels the images instead (`groundiff.method.oracle_labels`,
a study's reference), and each shard counts the pixels on which the two label sets agree.

The output is a PASCAL VOC-layout folder, so the segmenter reads it exactly like real data:

    <root>/JPEGImages/  SegmentationClass/  ImageSets/Segmentation/{one,two,complicated}.txt

Work is sharded: a shard is finished when its marker `shards/shard_XXXXX.json` exists, the split
lists are rebuilt from the markers, so a killed run resumes and never lists half-written files.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from groundiff.core.checkpoint import write_text_atomic
from groundiff.data.prompts import CLASS_SEP, row_seed
from groundiff.data.voc import IGNORE, save_label_png
from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.features import feature_specs
from groundiff.diffusion.pipeline import SamplingConfig, generate, image_size
from groundiff.diffusion.text import class_embeddings
from groundiff.method.oracle_labels import oracle_label_maps
from groundiff.method.synthesis import ShardPlan, check_shards, prepare_output, shard_rows
from groundiff.worlds.base import ClassSplit
from groundiff.worlds.oracle import Oracle
from groundiff.core.schema import SynthDatasetConfig

KINDS = ("one", "two", "complicated")


def synth_prompts(classes: tuple[str, ...], cfg: SynthDatasetConfig) -> pd.DataFrame:
    """Columns: index, kind, prompt, classes ('|'-joined), seed. Classes uniform over the vocabulary."""
    rng = np.random.default_rng(cfg.seed)
    rows = []

    def pick(k: int) -> list[str]:
        return [classes[i] for i in rng.integers(len(classes), size=k)]

    for _ in range(cfg.n_one):
        (c,) = pick(1)
        rows.append(("one", cfg.template_one.format(c), [c]))
    for _ in range(cfg.n_two):
        a, b = pick(2)
        rows.append(("two", cfg.template_two.format(a, b), [a, b]))
    for _ in range(cfg.n_complicated):
        names = pick(int(rng.integers(1, 3)))
        parts = []
        for name in names:
            attr = cfg.attributes[rng.integers(len(cfg.attributes))] + " " if cfg.attributes else ""
            parts.append(f"{attr}{name}")
        prompt = "a photograph of a " + " and a ".join(parts)
        if cfg.contexts:
            prompt += " " + cfg.contexts[rng.integers(len(cfg.contexts))]
        rows.append(("complicated", prompt, names))
    table = pd.DataFrame(rows, columns=["kind", "prompt", "class_list"])
    table.insert(0, "index", range(len(table)))
    table["classes"] = table.pop("class_list").map(CLASS_SEP.join)
    table["seed"] = [row_seed(cfg.seed, i) for i in range(len(table))]
    return table


def label_map(logits: torch.Tensor, labels: list[int], threshold: float, ignore_below: float) -> np.ndarray:
    """(K, H, W) logits of the prompted classes -> (H, W) uint8 label map.

    argmax over prompted classes; 0 where the best probability < ignore_below; 255 where it is in
    [ignore_below, threshold). A class prompted twice simply has two rows with the same label.
    """
    probs = torch.sigmoid(logits.float())  # (K, H, W)
    best_p, best = probs.max(0)
    out = torch.as_tensor(labels, dtype=torch.uint8)[best]
    out[best_p < threshold] = IGNORE
    out[best_p < ignore_below] = 0
    return out.numpy()


def _fingerprint(table: pd.DataFrame, cfg: SynthDatasetConfig, model_ids: list[str]) -> str:
    # where the grounding module lives is not what it is: it enters by content, through model_ids.
    # The oracle settings enter only when the oracle labels: the grounding module's dataset keeps the
    # fingerprint (and so the shards) it had before they existed; the oracle's id is then in model_ids
    skip = {"grounding_dir"} | ({"labels", "oracle_score"} if cfg.labels == "grounding" else set())
    settings = {k: v for k, v in asdict(cfg).items() if k not in skip}
    payload = json.dumps({"cfg": settings, "models": model_ids, "rows": table[["prompt", "seed"]].values.tolist()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def check_models(pipe, module) -> None:
    """Fail before any output is touched if `module` was not built for this pipeline.

    A grounding module reads one UNet's feature maps and one text encoder's embeddings; one
    trained for another world (e.g. SD v1 vs the shapes model) would otherwise fail, or worse
    make wrong-sized label maps, only in the middle of the first shard.
    """
    have = module.config
    specs = feature_specs(pipe.unet.config)
    sample = pipe.unet.config.sample_size
    want = {
        "feature_channels": tuple(2 * s.channels for s in specs),  # uncond || cond
        "feature_strides": tuple(s.stride for s in specs),
        "latent_size": sample if isinstance(sample, int) else sample[0],
        "text_dim": pipe.text_encoder.config.hidden_size,
        "image_size": image_size(pipe),
    }
    wrong = [f"{k} {_plain(getattr(have, k))} (pipeline: {_plain(v)})" for k, v in want.items()
             if _plain(getattr(have, k)) != _plain(v)]
    if wrong:
        raise ValueError(
            f"the grounding module was built for another pipeline: {'; '.join(wrong)}. Train it on this "
            "world's diffusion model (train_grounding) or point the stage at the matching one"
        )


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def plan_dataset(split: ClassSplit, cfg: SynthDatasetConfig, root: Path, model_ids: list[str],
                 shards: list[int] | None = None) -> tuple[pd.DataFrame, ShardPlan]:
    """The prompt table, and `root` prepared (fingerprint) with the shards still to make listed."""
    table = synth_prompts(split.classes, cfg)
    n_shards = math.ceil(len(table) / cfg.shard_size)
    requested = check_shards(shards, n_shards)
    prepare_output(root, _fingerprint(table, cfg, model_ids), marker="synth_dataset.json",
                   subdirs=("JPEGImages", "SegmentationClass", "shards", "ImageSets/Segmentation"))
    todo = [s for s in requested if not _intact_shard(root, s)]
    return table, ShardPlan(n_shards, todo, len(requested) - len(todo))


def _intact_shard(root: Path, shard: int) -> bool:
    """A finished shard whose every image and label still reads whole; a damaged one loses its marker
    (with a warning naming the file) and is made again."""
    marker = root / "shards" / f"shard_{shard:05d}.json"
    if not marker.is_file():
        return False
    try:
        for image_id, _ in json.loads(marker.read_text())["samples"]:
            for path in (root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"):
                with Image.open(path) as img:
                    img.load()
    except Exception as err:  # noqa: BLE001 (a missing or unreadable file, or marker: redo the shard)
        import warnings

        warnings.warn(f"{marker}: shard damaged ({type(err).__name__}: {err}); making it again", stacklevel=2)
        marker.unlink()
        return False
    return True


def dataset_embeddings(pipe, split: ClassSplit, cfg: SynthDatasetConfig) -> dict[str, torch.Tensor]:
    """Every class's text embedding, as the grounding module was trained with (class -> (text_dim,))."""
    return dict(zip(split.classes, class_embeddings(pipe, split.classes, cfg.grounding_template)))


def write_split_lists(root: Path) -> dict[str, int]:
    """Rebuild ImageSets/Segmentation/<kind>.txt from the finished shards' markers."""
    ids: dict[str, list[str]] = {k: [] for k in KINDS}
    for marker in sorted((root / "shards").glob("shard_*.json")):
        for image_id, kind in json.loads(marker.read_text())["samples"]:
            ids[kind].append(image_id)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for kind, names in ids.items():
        write_text_atomic(lists / f"{kind}.txt", "".join(f"{n}\n" for n in names))
    return {k: len(v) for k, v in ids.items()}


def check_oracle(cfg: SynthDatasetConfig, oracle: Oracle | None) -> None:
    """An oracle is passed exactly when `cfg.labels` is oracle."""
    if (cfg.labels == "oracle") != (oracle is not None):
        raise ValueError(f"synth_dataset: labels: {cfg.labels} " + ("needs the world's oracle detector; pass it"
                         if oracle is None else "labels with the grounding module; pass no oracle"))


@torch.no_grad()
def make_shard(pipe, module, rows: pd.DataFrame, split: ClassSplit, cfg: SynthDatasetConfig,
               embeddings: dict[str, torch.Tensor], root: Path, shard: int, oracle: Oracle | None = None) -> dict:
    """Generate, ground and write one shard; returns its class pixel counts.

    With `oracle` (cfg.labels: oracle) the written labels are the oracle's on the images as saved
    (what the segmenter reads), and the marker counts the pixels where they equal the grounding module's.
    """
    check_oracle(cfg, oracle)
    call = capture_call_for(cfg.sampling.steps, cfg.capture_t)
    device = next(module.parameters()).device
    samples, pixels, agree, total = [], {}, 0, 0
    for i in range(0, len(rows), cfg.sampling.batch_size):
        chunk = rows.iloc[i:i + cfg.sampling.batch_size]
        with FeatureCapture(pipe.unet, call) as cap:
            images = generate(pipe, list(chunk["prompt"]), list(chunk["seed"]), cfg.sampling, fp32_call=call)
        features = [f.to(device) for f in cap.result()]
        names = [c.split(CLASS_SEP) for c in chunk["classes"]]
        k_max = max(len(n) for n in names)
        emb = torch.zeros(len(chunk), k_max, next(iter(embeddings.values())).shape[-1], device=device)
        mask = torch.zeros(len(chunk), k_max, dtype=torch.bool, device=device)
        for b, sample_names in enumerate(names):
            for k, name in enumerate(sample_names):
                emb[b, k], mask[b, k] = embeddings[name], True
        logits = module(features, emb, mask)  # (B, K, S, S)
        labs, image_ids = [], []
        for b, (row, image) in enumerate(zip(chunk.itertuples(index=False), images)):
            k = len(names[b])
            labs.append(label_map(logits[b, :k], [split.label(n) for n in names[b]], cfg.threshold, cfg.ignore_below))
            image_ids.append(f"synth_{int(row.index):06d}")
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_ids[-1]}.jpg", quality=95, subsampling=0)
        if oracle is not None:
            saved = [np.array(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in image_ids]
            grounded, labs = labs, oracle_label_maps(oracle, saved, names, split, cfg.oracle_score)
            agree += sum(int((g == o).sum()) for g, o in zip(grounded, labs))
            total += sum(o.size for o in labs)
        for row, image_id, lab in zip(chunk.itertuples(index=False), image_ids, labs):
            save_label_png(root / "SegmentationClass" / f"{image_id}.png", lab)
            samples.append((image_id, row.kind))
            for value, count in zip(*np.unique(lab, return_counts=True)):
                pixels[int(value)] = pixels.get(int(value), 0) + int(count)
    marker = {"samples": samples, "pixels": pixels}
    if oracle is not None:
        marker["label_agreement"] = [agree, total]  # pixels where the oracle's label = the grounding module's
    write_text_atomic(root / "shards" / f"shard_{shard:05d}.json", json.dumps(marker))
    return pixels


def dataset_stats(root: Path, split: ClassSplit, plan: ShardPlan) -> dict:
    """Rebuild the split lists from the finished shards and summarise them."""
    counts = write_split_lists(root)
    pixels: dict[int, int] = {}
    agreement = [0, 0]
    for m in (root / "shards").glob("shard_*.json"):
        marker = json.loads(m.read_text())
        for value, count in marker["pixels"].items():
            pixels[int(value)] = pixels.get(int(value), 0) + count
        agreement = [a + b for a, b in zip(agreement, marker.get("label_agreement", (0, 0)))]
    total = max(sum(pixels.values()), 1)
    names = {0: "background", IGNORE: "ignore", **{split.label(c): c for c in split.classes}}
    stats = {
        "images": counts,
        "shards": plan.n_shards,
        "resumed_shards": plan.resumed,
        "pixel_share": {names[v]: round(c / total, 5) for v, c in sorted(pixels.items())},
    }
    if agreement[1]:  # labels: oracle: the share of pixels on which the oracle and the grounding module agree
        stats["label_agreement"] = round(agreement[0] / agreement[1], 5)
    return stats


def synth_dataset(pipe, module, split: ClassSplit, cfg: SynthDatasetConfig, root: Path,
                  model_ids: list[str], shards: list[int] | None = None, oracle: Oracle | None = None) -> dict:
    """Build (or resume) the dataset under `root`, serially in this process; returns statistics.

    `oracle`: the world's detector, exactly when `cfg.labels` is oracle (its id belongs in `model_ids`).
    `groundiff.method.distributed.synth_dataset_distributed` runs the same plan and `make_shard` on a
    Dask cluster.
    """
    check_models(pipe, module)
    check_oracle(cfg, oracle)
    embeddings = dataset_embeddings(pipe, split, cfg)
    table, plan = plan_dataset(split, cfg, root, model_ids, shards)
    for s in tqdm(plan.todo, desc="synth_dataset shards", mininterval=5):
        make_shard(pipe, module, shard_rows(table, cfg.shard_size, s), split, cfg, embeddings, root, s, oracle)
    return dataset_stats(root, split, plan)
