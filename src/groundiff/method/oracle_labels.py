"""The oracle's labels for generated images: what a grounding module that agreed with the oracle
everywhere would paint (`synth_dataset.labels: oracle`).

Protocol I scores the grounding module against the oracle detector's masks. Labelling the synthetic
dataset with those masks instead asks how much of a synthetic variant's gap to real data the
grounding module's labels explain: if the oracle's labels lift the variant little, the labels are
not what holds it back, the generated images are (how many, and how far they are from real ones).

For each class a prompt names, the oracle's top-scoring instance of that class (the paper's target,
`Detections.best_mask`) becomes its label when it scores at least `min_score`; instances are painted
from the lowest score up, so where two overlap the more confident one wins; a class the oracle
misses stays background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from groundiff.worlds.base import ClassSplit
from groundiff.worlds.oracle import Detections, Oracle


def oracle_label_map(det: Detections, prompted: Sequence[str], label_of: dict[str, int],
                     min_score: float) -> np.ndarray:
    """(H, W) uint8 label map from one image's detections, over the prompted classes only."""
    found = []
    for name in dict.fromkeys(prompted):  # a class prompted twice is labelled once
        mask, score = det.best_mask(name)
        if mask is not None and score >= min_score:
            found.append((score, name, mask))
    out = np.zeros(det.masks.shape[1:], np.uint8)  # (H, W)
    for _, name, mask in sorted(found, key=lambda item: item[0]):
        out[np.asarray(mask, bool)] = label_of[name]
    return out


def oracle_label_maps(oracle: Oracle, images: Sequence[np.ndarray], prompted: Sequence[Sequence[str]],
                      split: ClassSplit, min_score: float) -> list[np.ndarray]:
    """The oracle's label map of each (H, W, 3) uint8 image, given the classes its prompt named."""
    if len(images) != len(prompted):
        raise ValueError(f"{len(images)} images but {len(prompted)} class lists: one per image")
    label_of = {c: split.label(c) for c in split.classes}
    unknown = sorted({n for names in prompted for n in names} - set(label_of))
    if unknown:
        raise ValueError(f"prompted classes {unknown} are not in the world's vocabulary ({', '.join(split.classes)})")
    detections = oracle.detect(list(images))
    return [oracle_label_map(det, names, label_of, min_score) for det, names in zip(detections, prompted)]


__all__ = ["oracle_label_map", "oracle_label_maps"]
