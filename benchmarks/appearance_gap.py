"""Is a synthetic-only variant held back by how real images *look*, or by the shapes it learned?

    python -m benchmarks.appearance_gap                      # C, on 600 real train images
    python -m benchmarks.appearance_gap --variants A B C --images 1000
    python -m benchmarks.appearance_gap --figure reports/figures/generated_two_object_reading.png

A variant trained on generated images only (A, B, C) has never seen a real training image, so the
real *train* split is held-out data for it (val is not read). This scores the pipeline's trained
model (`models/segmenter/<variant>`) on the first `--images` real train images with every class
labelled, as eval_zs3 scores val (background ignored), and again with the real images made to
look more like the generated ones, one trait at a time:

    grey background   background pixels set to the generated images' median background colour
    blurred           a Gaussian blur (sigma 0.6 px): generated shapes have soft edges
    pastel            object pixels mixed 40% toward white: plain prompts come out pale

If a variant scores much higher on the altered images, the colour gap is what costs it; if not,
its errors lie in the shapes it learned. It also prints the variant's confusions on the images as
they are: where each class's pixels go.

Then the other way round: the real-data reference (`--reference`, default real_all, which never
saw a generated image) segments the synthetic dataset's splits, scored against their labels (the
grounding module's). Where it agrees, the generated shapes look like real ones of the prompted
class; where it does not, the diffusion model drew something else, or the labels are wrong. Needs
`dvc repro train_segmenter` for the variants and the reference, and the world's real data; about
10 s per model on one thread.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

AS_THEY_ARE = "as they are"
PASTEL_MIX = 0.4  # share of white mixed into object pixels
BLUR_SIGMA = 0.6  # pixels


def grey_background(image: np.ndarray, label: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Background pixels (label 0) painted `colour`; objects and ignored pixels untouched."""
    out = image.copy()
    out[label == 0] = colour
    return out


def blurred(image: np.ndarray, label: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.array(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def pastel(image: np.ndarray, label: np.ndarray, mix: float = PASTEL_MIX) -> np.ndarray:
    """Object pixels (labels 1..K) mixed `mix` of the way toward white."""
    out = image.astype(np.float32)
    objects = (label > 0) & (label != 255)
    out[objects] = (1 - mix) * out[objects] + mix * 255.0
    return np.rint(out).astype(np.uint8)


def median_background(root: Path, splits: list[str]) -> np.ndarray:
    """The median RGB of the background pixels (label 0) over a VOC-layout dataset's splits."""
    from groundiff.data.voc import read_split

    pixels = [image[label == 0] for split in splits for _, image, label in read_split(root, split)]
    return np.median(np.concatenate(pixels), axis=0).round().astype(np.uint8)


def top_confusions(conf: np.ndarray, names: list[str], k: int = 6) -> list[tuple[str, str, float]]:
    """(true class, predicted class, % of the true class's pixels) for the k largest off-diagonal
    entries of a [true, predicted] confusion matrix whose row/column 0 is background."""
    rows = conf.sum(axis=1)
    cells = [(100.0 * conf[t, p] / rows[t], t, p) for t in range(1, len(names)) for p in range(len(names))
             if t != p and rows[t]]
    return [(names[t], names[p], share) for share, t, p in sorted(cells, reverse=True)[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["C"], help="synthetic-only variants (A, B, C)")
    parser.add_argument("--images", type=int, default=600, help="real train images scored (the first N)")
    parser.add_argument("--reference", default="real_all",
                        help="a model trained on real data alone, run on the generated images")
    parser.add_argument("--figure", type=Path, default=None, metavar="PNG",
                        help="also draw the first --figure-images two-object samples: image | label | reference's reading")
    parser.add_argument("--figure-images", type=int, default=12)
    args = parser.parse_args()

    from groundiff.data.voc import IGNORE, read_split
    from groundiff.eval.metrics import confusion_matrix
    from groundiff.segmenter import Segmenter
    from groundiff.core.params import Params
    from groundiff.core.paths import SEGMENTERS as MODELS, SYNTH_SEGMENTATION as SYNTH
    from groundiff.eval.zs3 import prediction_figure, score_confusion
    from groundiff.worlds.active import World

    params = Params()
    world = World(params)
    split, real = world.split, world.real_data
    variants = params.section("train_segmenter")
    for name in args.variants:
        if variants.variant(name).real != "none":
            parser.error(f"{name} trained on the real train images, so they are not held out for it; "
                         "pick synthetic-only variants (A, B, C)")
        if not (MODELS / name).is_dir():
            parser.error(f"{MODELS / name}: not trained; run `dvc repro train_segmenter@{name}`")
    if variants.variant(args.reference).synthetic:
        parser.error(f"--reference {args.reference} trained on generated images; pick one trained on real data alone")
    if not (MODELS / args.reference).is_dir():
        parser.error(f"{MODELS / args.reference}: not trained; run `dvc repro train_reference@{args.reference}`")
    if args.images <= 0:
        parser.error(f"--images must be positive, got {args.images}")

    data = []
    for _, image, label in read_split(Path(real.root), real.split, labels=real.full_labels):
        data.append((image, label))
        if len(data) == args.images:
            break
    colour = median_background(SYNTH, ["one", "two"])
    alterations: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        AS_THEY_ARE: lambda image, label: image,
        f"grey background {tuple(int(c) for c in colour)}": lambda image, label: grey_background(image, label, colour),
        f"blurred (sigma {BLUR_SIGMA})": blurred,
        f"pastel ({PASTEL_MIX:.0%} white)": pastel,
    }
    n = len(split.classes) + 1
    names = ["background"] + list(split.classes)

    def confusion(preds: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
        """[true, predicted] pixel counts with background ignored, as eval_zs3 scores."""
        return sum(confusion_matrix(pred, np.where(label == 0, IGNORE, label), n) for pred, label in zip(preds, labels))

    print(f"{len(data)} real train images, every class labelled, background ignored (val not read)\n")
    print("| variant | real images | hIoU | seen | unseen |\n|---|---|---|---|---|")
    labels = [label for _, label in data]
    confusions = {}
    for variant in args.variants:
        segmenter = Segmenter.from_pretrained(MODELS / variant, device=params.world.device)
        for what, alter in alterations.items():
            conf = confusion(segmenter.predict([alter(image, label) for image, label in data], batch_size=64), labels)
            if what == AS_THEY_ARE:
                confusions[variant] = conf
            scores = score_confusion(conf, split)
            print(f"| {variant} | {what} | {scores['hiou']:.1f} | {scores['miou_seen']:.1f} | "
                  f"{scores['miou_unseen']:.1f} |", flush=True)
    for variant, conf in confusions.items():
        print_confusions(f"{variant}, real images as they are", conf, names)

    reference = Segmenter.from_pretrained(MODELS / args.reference, device=params.world.device)
    print(f"\n{args.reference} (real data only) on the generated images, against their labels\n")
    print("| generated split | images | hIoU | seen | unseen | object pixels read as: their label | "
          "background | the image's other labelled class | a class not labelled in the image |")
    print("|---|---|---|---|---|---|---|---|---|")
    generated = {}
    for name in ("one", "two"):
        images, labels = zip(*[(image, label) for _, image, label in read_split(SYNTH, name)])
        preds = reference.predict(list(images), batch_size=64)
        conf = generated[name] = confusion(preds, labels)
        reading = sum(object_reading(pred, label) for pred, label in zip(preds, labels))
        scores = score_confusion(conf, split)
        if name == "two" and args.figure:
            k = args.figure_images
            prediction_figure(images[:k], labels[:k], {args.reference: preds[:k]}, split, args.figure,
                              truth_caption="label (grounding)")
        shares = " | ".join(f"{100 * count / reading.sum():.1f}%" for count in reading)
        print(f"| {name} | {len(images)} | {scores['hiou']:.1f} | {scores['miou_seen']:.1f} | "
              f"{scores['miou_unseen']:.1f} | {shares} |", flush=True)
    for name, conf in generated.items():
        print_confusions(f"{args.reference} on the generated {name}-object images", conf, names)
    if args.figure:
        print(f"\nwrote {args.figure}")


def object_reading(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Pixel counts over one image's labelled objects (labels 1..K, not 255): [the labelled class,
    background, another class labelled in the same image, a class not labelled in it]."""
    objects = (label > 0) & (label != 255)
    truth, read = label[objects], pred[objects]
    other = (read != truth) & (read != 0)
    in_image = np.isin(read, np.unique(truth))
    return np.array([(read == truth).sum(), (read == 0).sum(), (other & in_image).sum(), (other & ~in_image).sum()])


def print_confusions(title: str, conf: np.ndarray, names: list[str]) -> None:
    print(f"\n{title}: where object pixels go")
    print(f"  predicted background: {100 * conf[1:, 0].sum() / conf[1:].sum():.1f}% of object pixels")
    for true, pred, share in top_confusions(conf, names):
        print(f"  {true} -> {pred}: {share:.1f}%")


if __name__ == "__main__":
    main()
