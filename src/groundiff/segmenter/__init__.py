"""Protocol II: a MaskFormer trained on synthetic (and real seen-class) data, evaluated zero-shot.

    from groundiff.segmenter import DataSource, SegmenterConfig, Segmenter, train_segmenter, predict

    segmenter, summary = train_segmenter([DataSource("data/synth/segmentation", "one")], classes, cfg, work_dir)
    segmenter.save_pretrained("models/segmenter/A")
    labels = predict(Segmenter.from_pretrained("models/segmenter/A"), images)  # (H, W) uint8, 0..K

`backends.train` / `backends.load_segmenter` do the same for either library (`SegmenterConfig.backend`:
transformers, or mmseg: `groundiff.segmenter.mmseg_backend`).
"""

from groundiff.segmenter.model import SegmenterConfig, Segmenter, TrainedSegmenter, build_model, predict, semantic_scores
from groundiff.segmenter.backends import load_segmenter, train
from groundiff.segmenter.train import DataSource, SegmentationSet, label_to_targets, maskformer_loss, train_segmenter

__all__ = [
    "DataSource", "SegmentationSet", "Segmenter", "SegmenterConfig", "TrainedSegmenter", "build_model", "label_to_targets",
    "load_segmenter", "maskformer_loss", "predict", "semantic_scores", "train", "train_segmenter",
]
