"""Pseudo-labels: the oracle detector labels generated images, no human in the loop.

For every prompted class of every image, the top-scoring instance of that class is its mask (the
paper's target; not the union of instances). Classes the detector does not find are recorded as
missing: "normal" training supervises them with an all-zero mask, "without zero masks" skips them.

    <root>/shard_00000/masks/000000_0.png     binary mask (0/255) of the image's k-th prompted class
    <root>/shard_00000/labels.csv             index, k, class, found, score
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from groundiff.data.shards import complete_shards, content_digest, damaged_files, manifest_source, read_shard, write_manifest
from groundiff.worlds.oracle import Oracle
from groundiff.core.schema import PseudoLabelConfig

LABEL_COLUMNS = ["index", "k", "class", "found", "score"]


def label_shard(oracle: Oracle, shard: Path, out: Path, cfg: PseudoLabelConfig) -> pd.DataFrame:
    """Label one synthesis shard into `out/<shard name>/` atomically; returns its label table."""
    samples = read_shard(shard)
    final = out / shard.name
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "masks").mkdir(parents=True)
    rows = []
    for i in range(0, len(samples), cfg.batch_size):
        chunk = samples[i:i + cfg.batch_size]
        for sample, det in zip(chunk, oracle.detect([s.image for s in chunk])):
            for k, name in enumerate(sample.classes):
                mask, score = det.best_mask(name)
                found = mask is not None and score >= cfg.score_threshold
                if not found:
                    mask = np.zeros(sample.image.shape[:2], bool)
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                    partial / "masks" / f"{sample.index:06d}_{k}.png")
                rows.append((sample.index, k, name, bool(found), float(score)))
    table = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    table.to_csv(partial / "labels.csv", index=False)
    write_manifest(partial, source=content_digest(shard))  # keyed on the images it labelled
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return table


def pseudo_label(oracle: Oracle, synth_root: Path, out_root: Path, cfg: PseudoLabelConfig,
                 oracle_id: str = "") -> dict:
    """Label every finished synthesis shard, skipping shards already labelled (resumable)."""
    shards = complete_shards(synth_root)
    if not shards:
        raise FileNotFoundError(f"{synth_root}: no synthesis shards")
    # Labels of other synthesis outputs (or other settings) cannot be resumed from: start over.
    source = (synth_root / "synthesis.json").read_text() if (synth_root / "synthesis.json").is_file() else ""
    stamp = json.dumps({"source": source, "cfg": asdict(cfg), "oracle": oracle_id})
    marker = out_root / "source.json"
    if out_root.exists() and (not marker.is_file() or marker.read_text() != stamp):
        shutil.rmtree(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    marker.write_text(stamp)
    tables = []
    for shard in tqdm(shards, desc="pseudo_label shards", mininterval=5):
        done = out_root / shard.name
        reuse = reusable_labels(done, shard)
        tables.append(pd.read_csv(done / "labels.csv") if reuse else label_shard(oracle, shard, out_root, cfg))
    labels = pd.concat(tables, ignore_index=True)
    return {
        "images": int(labels["index"].nunique()),
        "class_instances": len(labels),
        "found_rate": float(labels["found"].mean()),
        "found_rate_per_class": labels.groupby("class")["found"].mean().round(4).to_dict(),
    }


def reusable_labels(labels: Path, shard: Path) -> bool:
    """Whether a finished label shard can be reused: intact, and made from exactly the images `shard`
    holds now (its manifest records their digest). A changed, replaced or regenerated image, or a
    label shard without that record, is labelled again: an old label never passes for a new image."""
    if not (labels / "labels.csv").is_file():
        return False
    if manifest_source(labels) != content_digest(shard) or damaged_files(labels):
        import warnings

        warnings.warn(f"{labels}: not the labels of {shard} as it is now (or damaged); labelling it again",
                      stacklevel=2)
        return False
    return True


def read_labels(root: Path) -> pd.DataFrame:
    """All label tables, with the shard each row belongs to."""
    tables = [pd.read_csv(p / "labels.csv").assign(shard=p.name) for p in sorted(Path(root).glob("shard_*"))
              if (p / "labels.csv").is_file() and not p.name.endswith(".partial")]
    if not tables:
        raise FileNotFoundError(f"{root}: no pseudo-labels")
    return pd.concat(tables, ignore_index=True)


def load_mask(root: Path, shard: str, index: int, k: int) -> np.ndarray:
    with Image.open(Path(root) / shard / "masks" / f"{index:06d}_{k}.png") as img:
        return np.array(img) > 127
