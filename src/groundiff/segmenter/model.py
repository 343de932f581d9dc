"""The Protocol II segmenter: a transformers MaskFormer, built from a config, with semantic inference.

Why MaskFormer (not Mask2Former): the paper trains "MaskFormer" on the synthetic dataset
(Protocol II), and MaskFormer's per-query (class, mask) formulation is what ZegFormer — the
baseline of the same table — builds on. transformers ships both; we take the paper's.

Label space. On disk a label map holds 0 = background, 1..K = the world's classes in vocabulary
order, 255 = ignore. MaskFormer classifies each query into `num_labels` classes plus its own
"no object" slot, so we set `num_labels = K + 1` and use the label value itself as the MaskFormer
class id: background is an ordinary class (id 0) — the synthetic images and real images alike
have background everywhere but the objects, and a segmenter that can say "background" is what
the figures and the VOC-with-background protocol need — and "no object" (id K + 1) stays
MaskFormer's internal null class for unmatched queries. Whether background counts in the
*evaluation* is an evaluation choice (`groundiff.eval.zs3`), not a model one.

Backbone. The shapes world uses a small randomly initialised ResNet (`backbone_widths`,
`backbone_depths`) so training on 32x32 images takes minutes on CPU; the paper worlds name a
pretrained backbone (`backbone`: a hub id or local folder of a transformers ResNet / Swin
checkpoint), whose weights are loaded only then — nothing is downloaded otherwise.
"""

from __future__ import annotations

from groundiff.core.checkpoint import loading_model
from groundiff.core.schema import COLOR_AUG_MODES, SegmenterConfig
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig
from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

log = logging.getLogger(__name__)

#: ImageNet statistics: what pretrained backbones expect; harmless for a randomly initialised one.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BACKGROUND = "background"
META_FILE = "segmenter.json"


# --------------------------------------------------------------------------- building


def _backbone_config(cfg: SegmenterConfig):
    if cfg.backbone:
        bb = AutoConfig.from_pretrained(cfg.backbone)
        if not hasattr(bb, "stage_names"):
            raise ValueError(f"backbone {cfg.backbone!r} ({type(bb).__name__}) is not a backbone transformers can "
                             "stage-split; name a ResNet or Swin checkpoint (e.g. microsoft/resnet-50)")
        bb.out_features = [name for name in bb.stage_names if name != "stem"]  # the setter aligns out_indices
        return bb
    n = len(cfg.backbone_widths)
    return ResNetConfig(
        embedding_size=cfg.stem_width, hidden_sizes=list(cfg.backbone_widths), depths=list(cfg.backbone_depths),
        layer_type="basic", out_features=[f"stage{i + 1}" for i in range(n)],
    )


def build_model(cfg: SegmenterConfig, classes: Sequence[str]) -> MaskFormerForInstanceSegmentation:
    """A MaskFormer for `len(classes) + 1` labels (0 = background), randomly initialised under
    `torch.manual_seed(cfg.seed)`; a pretrained `cfg.backbone` is loaded into its encoder."""
    labels = [BACKGROUND, *classes]
    decoder = MaskFormerDetrConfig(
        use_timm_backbone=False, num_queries=cfg.num_queries, d_model=cfg.d_model, encoder_layers=0,
        decoder_layers=cfg.decoder_layers, decoder_attention_heads=cfg.decoder_heads,
        decoder_ffn_dim=cfg.decoder_ffn, dropout=cfg.dropout,
    )
    config = MaskFormerConfig(
        backbone_config=_backbone_config(cfg), decoder_config=decoder,
        fpn_feature_size=cfg.fpn_size, mask_feature_size=cfg.fpn_size,
        use_auxiliary_loss=False, no_object_weight=cfg.no_object_weight,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={c: i for i, c in enumerate(labels)},
    )
    torch.manual_seed(cfg.seed)
    model = MaskFormerForInstanceSegmentation(config)
    _original_transformer_init(model)
    if cfg.backbone:
        load_pretrained_backbone(model, cfg.backbone)
    return model


def _original_transformer_init(model: MaskFormerForInstanceSegmentation) -> None:
    """Initialise the transformer decoder as the original MaskFormer (and DETR) code does.

    transformers draws the query embeddings and decoder weights from N(0, 0.02); after the
    decoder's post-LayerNorm all queries then start out identical (their outputs differ by ~1e-5),
    and the Hungarian matching hands each class to a different, indistinguishable query every
    step: on a small model the class head stays at "no object" for thousands of steps. The
    original's nn.Embedding default N(0, 1) queries and xavier-uniform decoder weights break
    that symmetry from the start.
    """
    transformer = model.model.transformer_module
    with torch.no_grad():
        torch.nn.init.normal_(transformer.queries_embedder.weight)
        for param in transformer.decoder.parameters():
            if param.dim() > 1:
                torch.nn.init.xavier_uniform_(param)


#: transformers 5's Swin module names -> MaskFormerSwin's (which kept the 4.x names).
_SWIN_TO_MASKFORMER_SWIN = (
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)


def load_pretrained_backbone(model: MaskFormerForInstanceSegmentation, backbone: str) -> None:
    """Copy a pretrained ResNet / Swin checkpoint's weights into MaskFormer's encoder.

    MaskFormer wraps Swin in its own `MaskFormerSwinBackbone`, whose keys differ from
    `SwinBackbone`'s (`swin.` -> `model.`, `hidden_states_norms.stageN` -> `.N-1`, and the 4.x
    attention / MLP names, `_SWIN_TO_MASKFORMER_SWIN`); ResNet keys match as they are. Every
    checkpoint tensor must land somewhere, or this fails.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    encoder = model.model.pixel_level_module.encoder
    config = AutoConfig.from_pretrained(backbone)
    # Not AutoBackbone.from_pretrained: transformers 5.24's asks the hub whether a *local folder* exists.
    source = MODEL_FOR_BACKBONE_MAPPING[type(config)].from_pretrained(
        backbone, out_features=list(encoder.config.out_features))
    state = source.state_dict()
    if type(encoder).__name__ == "MaskFormerSwinBackbone":
        stages = list(encoder.config.out_features)
        renamed = {}
        for key, value in state.items():
            if key.startswith("swin."):
                key = "model." + key[len("swin."):]
            for i, stage in enumerate(stages):
                key = key.replace(f"hidden_states_norms.{stage}.", f"hidden_states_norms.{i}.")
            for new, old in _SWIN_TO_MASKFORMER_SWIN:
                key = key.replace(new, old)
            renamed[key] = value
        state = renamed
    result = encoder.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"backbone {backbone!r}: {len(result.unexpected_keys)} weights have no place in "
                         f"MaskFormer's encoder (e.g. {result.unexpected_keys[:3]}); is it a ResNet or Swin?")
    missing = [k for k in result.missing_keys if not k.endswith("relative_position_index")]  # derived buffers
    if missing:
        log.warning("backbone %s: %d encoder tensors not in the checkpoint, left initialised: %s",
                    backbone, len(missing), missing[:5])


# --------------------------------------------------------------------------- inference


def preprocess(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (B, 3, size, size) float, bilinearly resized, ImageNet-normalised."""
    out = []
    for image in images:
        if image.shape[:2] != (size, size):
            image = np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        out.append((image.astype(np.float32) / 255.0 - MEAN) / STD)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                    size: tuple[int, int] | None = None) -> torch.Tensor:
    """MaskFormer's semantic inference: per-pixel class scores (B, C, H, W).

    score[c, p] = sum_q softmax(class_logits[q])[c] * sigmoid(mask_logits[q, p]), with the
    "no object" column dropped before summing (it is the softmax's last entry).
    class_logits: (B, Q, C + 1); mask_logits: (B, Q, h, w), upsampled bilinearly to `size` first.
    """
    if size is not None and tuple(mask_logits.shape[-2:]) != tuple(size):
        mask_logits = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    probs = class_logits.softmax(-1)[..., :-1]  # (B, Q, C)
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())


class TrainedSegmenter(ABC):
    """What eval_zs3 uses of a trained segmenter of either backend: its torch `model`, `classes`
    (label k + 1 = classes[k]; label 0 = background), `input_size`, `labels` and `predict`."""

    model: torch.nn.Module
    classes: tuple[str, ...]
    input_size: int

    @property
    def labels(self) -> tuple[str, ...]:
        """Names of label values 0..K."""
        return (BACKGROUND, *self.classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abstractmethod
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """(H, W, 3) uint8 images (any sizes) -> (H, W) uint8 label maps with values in 0..K."""


class Segmenter(TrainedSegmenter):
    """A trained MaskFormer with the class list and input size it was trained with."""

    def __init__(self, model: MaskFormerForInstanceSegmentation, classes: Sequence[str], input_size: int) -> None:
        self.model = model
        self.classes = tuple(classes)  # label k + 1 = classes[k]; label 0 = background
        self.input_size = input_size
        if model.config.num_labels != len(self.classes) + 1:
            raise ValueError(f"model has {model.config.num_labels} labels, but {len(self.classes)} classes + "
                             "background were given")

    def save_pretrained(self, path: str | Path) -> None:
        """config.json + model.safetensors (transformers' own format) + segmenter.json (classes)."""
        path = Path(path)
        self.model.save_pretrained(path, safe_serialization=True)
        meta = {"classes": list(self.classes), "labels": list(self.labels), "input_size": self.input_size,
                "architecture": "MaskFormerForInstanceSegmentation"}
        (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path}: no trained segmenter here ({META_FILE} missing)")
        with loading_model(path, "segmenter"):
            meta = json.loads((path / META_FILE).read_text())
            model = MaskFormerForInstanceSegmentation.from_pretrained(path).to(device).eval()
        return cls(model, meta["classes"], meta["input_size"])

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """(H, W, 3) uint8 images (any sizes) -> (H, W) uint8 label maps with values in 0..K."""
        was_training = self.model.training
        self.model.eval()
        out: list[np.ndarray] = []
        try:
            for i in range(0, len(images), batch_size):
                chunk = images[i:i + batch_size]
                x = preprocess(chunk, self.input_size).to(self.device)  # (B, 3, S, S)
                res = self.model(pixel_values=x)
                for j, image in enumerate(chunk):
                    scores = semantic_scores(res.class_queries_logits[j:j + 1], res.masks_queries_logits[j:j + 1],
                                             size=image.shape[:2])  # (1, K + 1, H, W)
                    out.append(scores[0].argmax(0).to(torch.uint8).cpu().numpy())
        finally:
            self.model.train(was_training)
        return out


def predict(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
    """Label maps (H, W) uint8 in 0..K for (H, W, 3) uint8 images; see `Segmenter.predict`."""
    return segmenter.predict(images, batch_size=batch_size)
