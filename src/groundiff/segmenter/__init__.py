"""Protocol II: a MaskFormer trained on synthetic (and real seen-class) data, evaluated zero-shot.

    from groundiff.segmenter import DataSource, SegmenterConfig, Segmenter, train_segmenter, predict

    segmenter, summary = train_segmenter([DataSource("data/synth/segmentation", "one")], classes, cfg, work_dir)
    segmenter.save_pretrained("models/segmenter/A")
    labels = predict(Segmenter.from_pretrained("models/segmenter/A"), images)  # (H, W) uint8, 0..K
"""

from groundiff.segmenter.model import SegmenterConfig, Segmenter, build_model, predict, semantic_scores
from groundiff.segmenter.train import DataSource, SegmentationSet, label_to_targets, maskformer_loss, train_segmenter

__all__ = [
    "DataSource", "SegmentationSet", "Segmenter", "SegmenterConfig", "build_model", "label_to_targets",
    "maskformer_loss", "predict", "semantic_scores", "train_segmenter",
]
