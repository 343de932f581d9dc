"""The benchmarks' pure parts: what they print is computed right."""

import importlib

import numpy as np
import pytest
from PIL import Image

from groundiff.data.voc import read_split, save_label_png, split_ids
from groundiff.worlds.oracle import Detections


def _load(name: str):
    return importlib.import_module(f"benchmarks.{name}")


def test_segmenter_seeds_table_means_spreads_and_shares():
    seeds = _load("segmenter_seeds")
    row = lambda h, s, u: {"hiou": h, "miou_seen": s, "miou_unseen": u}  # noqa: E731
    results = {("C", 0): row(30.0, 20.0, 40.0), ("C", 1): row(40.0, 30.0, 50.0),
               ("real_all", 0): row(50.0, 50.0, 50.0), ("real_all", 1): row(70.0, 60.0, 80.0)}
    lines = seeds.table(results, ["C", "real_all"], [0, 1]).splitlines()
    assert lines[0].startswith("| variant | hIoU seed 0 | hIoU seed 1 | hIoU mean ± sd |")
    assert lines[2] == "| C | 30.0 | 40.0 | 35.0 ± 7.1 | 25.0 ± 7.1 | 45.0 ± 7.1 | 58.3% |"
    assert lines[3] == "| real_all | 50.0 | 70.0 | 60.0 ± 14.1 | 55.0 ± 7.1 | 65.0 ± 21.2 | 100.0% |"


def test_segmenter_seeds_reuses_only_the_pipeline_seed(tmp_path):
    seeds = _load("segmenter_seeds")
    zs3 = tmp_path / "zs3.json"
    zs3.write_text('{"C": {"hiou": 48.0}, "real_all": {"hiou": 75.0}}')
    assert seeds.pipeline_rows(zs3, ["C", "real_all"], [0, 1], stage_seed=0) == {
        ("C", 0): {"hiou": 48.0}, ("real_all", 0): {"hiou": 75.0}}
    assert seeds.pipeline_rows(zs3, ["C"], [1, 2], stage_seed=0) == {}  # seed 0 not asked for: retrain all
    with pytest.raises(ValueError, match=r"no rows for \['X'\]"):
        seeds.pipeline_rows(zs3, ["C", "X"], [0], stage_seed=0)
    with pytest.raises(FileNotFoundError, match="dvc repro eval_zs3"):
        seeds.pipeline_rows(tmp_path / "none.json", ["C"], [0], stage_seed=0)


def test_segmenter_seeds_overrides_are_typed_config_fields():
    seeds = _load("segmenter_seeds")
    assert seeds.parse_overrides(["color_aug=synthetic", "steps=200", "scale_jitter=[1.0, 1.0]"]) == {
        "color_aug": "synthetic", "steps": 200, "scale_jitter": (1.0, 1.0)}
    with pytest.raises(ValueError, match="not a train_segmenter.segmenter key"):
        seeds.parse_overrides(["colour_aug=all"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        seeds.parse_overrides(["color_aug"])


def test_real_share_holdout_splits_train_and_scores_on_full_labels(tmp_path):
    """The dev split is drawn from real *train* only, disjoint from what trains, with every class labelled."""
    real = tmp_path / "real"
    (real / "ImageSets" / "Segmentation").mkdir(parents=True)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassFull"):
        (real / folder).mkdir()
    ids = [f"{i:04d}" for i in range(10)]
    (real / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (real / "ImageSets/Segmentation/val.txt").write_text("val_0\n")
    for i in ids:
        Image.new("RGB", (4, 4)).save(real / "JPEGImages" / f"{i}.jpg")
        save_label_png(real / "SegmentationClass" / f"{i}.png", np.full((4, 4), 255, np.uint8))  # unseen hidden
        save_label_png(real / "SegmentationClassFull" / f"{i}.png", np.full((4, 4), 3, np.uint8))  # every class

    share = _load("_common")  # real_share's and segmenter_seeds' --dev views
    fit, dev = share.holdout_roots(real, "train", "SegmentationClass", "SegmentationClassFull", 3, 0,
                                   tmp_path / "views")
    fit_ids, dev_ids = split_ids(fit, "train"), split_ids(dev, "dev")
    assert len(dev_ids) == 3 and len(fit_ids) == 7 and sorted(fit_ids + dev_ids) == ids
    assert all(label.max() == 3 for _, _, label in read_split(dev, "dev"))  # scored on the full labels
    assert all(label.min() == 255 for _, _, label in read_split(fit, "train"))  # trains on the hidden ones
    again = share.holdout_roots(real, "train", "SegmentationClass", "SegmentationClassFull", 3, 0,
                                tmp_path / "again")
    assert split_ids(again[1], "dev") == dev_ids  # seeded
    with pytest.raises(ValueError, match="held-out count must be in 1..9"):
        share.holdout_roots(real, "train", "SegmentationClass", "SegmentationClassFull", 10, 0, tmp_path / "x")


def test_oracle_labels_paint_each_prompted_class_once_most_confident_on_top():
    oracle = _load("oracle_labels")
    masks = np.zeros((4, 4, 6), bool)
    masks[0, :, :3] = True  # star 0.9: left half
    masks[1, :, 2:] = True  # ring 0.7: right half, overlapping the star in column 2
    masks[2, :, 5] = True  # star 0.6: a second star, not the top one
    masks[3, 0, :] = True  # heart 0.8: not prompted
    label_of = {"star": 1, "ring": 2, "heart": 3}
    det = Detections(["star", "heart", "ring", "star"], np.array([0.9, 0.8, 0.7, 0.6]), masks[[0, 3, 1, 2]])
    out = oracle.oracle_label_map(det, ["star", "ring"], label_of, min_score=0.5)
    assert out.tolist() == [[1, 1, 1, 2, 2, 2]] * 4  # star wins the overlap; the 2nd star and the heart are no labels
    weak = oracle.oracle_label_map(Detections(["star", "ring"], np.array([0.9, 0.4]), masks[[0, 1]]),
                                   ["star", "ring"], label_of, min_score=0.5)
    assert weak.tolist() == [[1, 1, 1, 0, 0, 0]] * 4  # ring below min_score: background


def test_appearance_gap_alterations_touch_only_what_they_name(tmp_path):
    gap = _load("appearance_gap")
    image = np.full((4, 4, 3), 10, np.uint8)
    label = np.zeros((4, 4), np.uint8)
    label[1:3, 1:3] = 2
    label[0, 0] = 255  # ignored pixels are neither background nor object
    grey = gap.grey_background(image, label, np.array([128, 128, 128], np.uint8))
    assert (grey[label == 0] == 128).all() and (grey[label == 2] == 10).all() and (grey[0, 0] == 10).all()
    pale = gap.pastel(image, label, mix=0.5)
    assert (pale[label == 2] == 132).all() and (pale[label != 2] == 10).all()  # 0.5 * 10 + 0.5 * 255 = 132.5
    assert gap.blurred(image, label).shape == image.shape and (gap.blurred(image, label) == 10).all()

    root = tmp_path / "synth"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    for i, (bg, split) in enumerate(((100, "one"), (120, "two"), (140, "two"))):
        Image.fromarray(np.full((4, 4, 3), bg, np.uint8)).save(root / "JPEGImages" / f"s{i}.jpg", quality=100)
        save_label_png(root / "SegmentationClass" / f"s{i}.png", label)
        with open(root / "ImageSets" / "Segmentation" / f"{split}.txt", "a") as f:
            f.write(f"s{i}\n")
    assert gap.median_background(root, ["one", "two"]).tolist() == [120, 120, 120]
    assert gap.median_background(root, ["one"]).tolist() == [100, 100, 100]


def test_appearance_gap_top_confusions_are_shares_of_the_true_class():
    gap = _load("appearance_gap")
    conf = np.array([[9, 0, 0],   # background row: not a true class here
                     [1, 6, 3],   # circle: 10% to background, 30% to ring
                     [0, 1, 3]])  # ring: 25% to circle
    out = gap.top_confusions(conf, ["background", "circle", "ring"], k=2)
    assert out == [("circle", "ring", 30.0), ("ring", "circle", 25.0)]


def test_appearance_gap_object_reading_splits_misses_by_where_they_go():
    gap = _load("appearance_gap")
    label = np.array([[1, 1, 2, 2],
                      [0, 0, 255, 255]], np.uint8)
    pred = np.array([[1, 2, 0, 3],     # circle: right, read as the image's other class; ring: background, class 3
                     [5, 5, 5, 5]], np.uint8)  # background and ignored pixels are not counted
    assert gap.object_reading(pred, label).tolist() == [1, 1, 1, 1]



def test_cpu_precision_records_the_capability_and_the_ratio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _load("cpu_precision").main(["--size", "16", "--rounds", "1"])
    written = __import__("json").loads((tmp_path / "reports/benchmarks/cpu_precision.json").read_text())
    assert written == result and result["cpu_capability"] and result["bf16_over_fp32_time"] > 0


def _paper_scale_result() -> dict:
    stage = {"seconds": 10.0, "cpu_seconds": 8.0, "peak_rss_gb": 5.5}
    return {
        "what": "SD v1.5's architecture with random weights",
        "settings": {"image_size": 512, "images": 1, "ddim_steps": 3, "batch": 1, "rounds": 2, "precision": "fp32", "train_batch": 1},
        "machine": {"gpu": None, "cpu_capability": "AVX2", "threads": 1, "torch": "2.x"},
        "parameters": {"unet": 859_520_964, "grounding_module": 18_796_560},
        "stages": {"plain_round0": stage, "captured_round0": {**stage, "cpu_seconds": 8.4}},
        "ratios": {"clock": "cpu_seconds", "capture_overhead": 1.05, "synthesize_over_plain": 1.01,
                   "labelling_over_plain": 1.2, "train_step_over_plain_image": 0.5},
        "derived": {"clock": "cpu_seconds", "plain_seconds_per_image": 8.0, "plain_seconds_per_unet_step": 2.7,
                    "train_step_seconds": 4.0, "feature_bytes_per_image": 63 * 2**20,
                    "latent_bytes_per_image": 65536, "peak_rss_gb": 6.0},
    }


def test_paper_scale_page_and_docs_block(tmp_path):
    scale = _load("paper_scale")
    text = scale.markdown(_paper_scale_result())
    assert "| captured_round0 | 10.0 | 8.4 | 5.50 |" in text and "Ratios and times below are of CPU time" in text
    assert "**1.050x**" in text and "63 MiB vs a stored latent of 64 KiB" in text
    docs = tmp_path / "gpu.md"
    docs.write_text(f"before\n{scale.BEGIN}\nold numbers\n{scale.END}\nafter\n")
    scale.update_docs(_paper_scale_result(), docs)
    written = docs.read_text()
    assert written.startswith("before\n") and written.endswith(f"{scale.END}\nafter\n")
    assert "old numbers" not in written and "**1.050x**" in written
    docs.write_text("no markers")
    with pytest.raises(ValueError, match="no block between"):
        scale.update_docs(_paper_scale_result(), docs)


def test_paper_scale_builds_the_unet_the_released_module_reads():
    """SD v1.5's UNet config as the dry run builds it gives the released module's input widths."""
    from groundiff.method.grounding.model import GroundingConfig
    from groundiff.method.grounding.official import official_shapes

    scale = _load("paper_scale")
    cfg = GroundingConfig.from_unet_config(scale.SD15_UNET, scale.SD15_TEXT["hidden_size"], 512)
    shapes = official_shapes()
    widths = [sum(cfg.feature_channels[i] for i in b) for b in cfg.buckets]
    names = ("low", "mid", "high", "highest")
    assert widths == [shapes[f"{n}_feature_conv.0.weight"][1] for n in names]
    assert shapes["to_q.weight"][1] == scale.SD15_TEXT["hidden_size"]


def test_paper_scale_runs_its_whole_flow_on_a_tiny_sd(tmp_path):
    """The dry run's every step (build, plain / captured generation, synthesize, a training step with
    replay, synth_dataset's labelling) on a tiny SD-architecture pipeline, and the files it writes."""
    import json

    scale = _load("paper_scale")
    out = tmp_path / "paper_scale.json"
    result = scale.main(["--tiny", "--images", "2", "--steps", "2", "--batch", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result and out.with_suffix(".md").is_file()
    assert set(result["stages"]) == {"build", "plain_round0", "captured_round0", "plain_round1", "captured_round1",
                                     "synthesize", "train_step_round0", "train_step_round1", "synth_dataset_labelling"}
    assert all(v["cpu_seconds"] >= 0 and v["peak_rss_gb"] > 0 for v in result["stages"].values())
    assert result["ratios"]["clock"] == "cpu_seconds" and result["ratios"]["capture_overhead"] > 0
    assert result["derived"]["feature_bytes_per_image"] > result["derived"]["latent_bytes_per_image"]
