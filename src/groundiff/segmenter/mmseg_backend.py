"""Protocol II's segmenter trained by mmsegmentation (`train_segmenter.segmenter.backend: mmseg`).

The same variants (A–E, real_seen, real_all) on the same data, trained the way mmseg's users train:
mmseg's own packaged MaskFormer config (`MMSEG_CONFIG`: ResNet + `MaskFormerHead`, mmdet's pixel
decoder, Hungarian assigner, focal + dice + cross-entropy losses) built by mmengine's `Config`, with
overrides that shrink it to the `SegmenterConfig` (`mmseg_config`), and mmengine's `Runner` running
its `IterBasedTrainLoop`. The project registers three things with mmseg's registries:

- `GroundiffVOCDataset`: a VOC-layout split (JPEGImages/, a label folder of palette PNGs,
  ImageSets/Segmentation/<split>.txt) with 0 = background as a class, 255 = ignore, and a
  source's hidden labels mapped to 255 on load (mmseg's `label_map`), as the transformers backend
  hides unseen classes;
- `GroundiffStepSampler`: step s's batch is drawn from rng(seed, s) over the variant's sources with
  their shares (`source_probabilities`, as the transformers backend draws it), and the global
  random, numpy and torch generators are seeded from (seed, s) before that batch is loaded, so
  mmseg's random augmentations and the decoder's dropout are a function of (seed, s) alone: an
  interrupted run resumed from mmengine's checkpoint continues exactly as the uninterrupted one;
- `GroundiffLogHook`: each step's losses to the state's `log.csv` (the project's loss-curve format,
  what `publish` ships) and their mean every `log_every` steps to MLflow through `on_log`.

Where mmseg differs from the transformers backend, it stays mmseg: ignored pixels are negatives of
every mask in its mask losses (the transformers backend leaves them out), the pixel decoder and mask
embeddings are as wide as the transformer decoder (`d_model`: mmdet's `MaskFormerHead` has one width;
the transformers backend's are `fpn_size`), a ResNet stage has
mmseg's ResNet-18 depth of 2 basic blocks, images smaller than the crop are padded at the bottom-right
(not placed at random), and the learning rate warms up linearly, then decays by mmengine's `PolyLR`.

Output (`MMSegSegmenter.save_pretrained`): `config.py` (the full mmengine config), `model.pth`
(`{"state_dict", "meta": {"dataset_meta"}}`, what mmseg's `init_model` loads) and `segmenter.json`
with `"backend": "mmseg"`, which `backends.load_segmenter` dispatches on, so eval_zs3 scores it unchanged.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from groundiff.core import losslog
from groundiff.core.checkpoint import fingerprint
from groundiff.core.schema import SegmenterConfig
from groundiff.core.training import mean_report
from groundiff.segmenter.model import BACKGROUND, META_FILE, MEAN, STD, TrainedSegmenter
from groundiff.segmenter.train import (DataSource, SegmentationSet, _cpu_threads, _distorts, source_probabilities,
                                      step_indices)

#: mmseg's packaged MaskFormer config (in the installed package's `.mim/configs`), the base of ours.
MMSEG_CONFIG = "maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py"
CONFIG_FILE, WEIGHTS_FILE, FINGERPRINT_FILE = "config.py", "model.pth", "fingerprint.txt"
INSTALL_HINT = ("the mmseg backend needs mmsegmentation with the compiled mmcv (mmcv-lite lacks mmcv.ops): "
                "run `bash scripts/install_mmseg.sh` (builds and caches the mmcv 2.1.0 wheel once, about 23 min "
                "on 2 cores, then installs the pinned `mmseg` extra), or set train_segmenter.segmenter.backend: "
                "transformers")


def require_mmseg() -> None:
    """Import mmseg and the compiled mmcv ops, or fail with how to install them; then register mmseg's
    modules (default scope `mmseg`) and ours."""
    try:
        import mmseg  # noqa: F401
        from mmcv.ops import point_sample  # noqa: F401  (mmseg's MaskFormer needs the compiled ops)
    except (ImportError, AssertionError) as err:  # mmseg asserts its mmcv version range on import
        raise ImportError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from err
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)  # mmseg's transforms, models and metrics, by their names
    _register()


def packaged_config() -> Path:
    """The path of mmseg's packaged MaskFormer config in the installed mmseg."""
    import mmseg

    path = Path(mmseg.__file__).parent / ".mim" / "configs" / MMSEG_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mmseg's packaged MaskFormer config is missing; reinstall "
                                "mmsegmentation==1.2.2 (bash scripts/install_mmseg.sh)")
    return path


# --------------------------------------------------------------------------- registered with mmseg

_REGISTERED = False


def _register() -> None:
    """Register the dataset, sampler and hook classes with mmseg's / mmengine's registries (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from mmengine.hooks import Hook
    from mmengine.registry import DATA_SAMPLERS, HOOKS
    from mmseg.datasets import BaseSegDataset
    from mmseg.registry import DATASETS
    from torch.utils.data import Sampler

    class GroundiffVOCDataset(BaseSegDataset):
        """A VOC-layout split of the project's data: label 0 = background (a class), 255 = ignore;
        `ignore_labels` become 255 on load (mmseg's per-sample `label_map`)."""

        def __init__(self, ignore_labels: Sequence[int] = (), **kwargs) -> None:
            self.ignore_labels = tuple(int(v) for v in ignore_labels)
            super().__init__(img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=False, **kwargs)

        def load_data_list(self) -> list[dict]:
            data = super().load_data_list()
            hidden = {v: 255 for v in self.ignore_labels} or None
            for info in data:
                info["label_map"] = hidden
            return data

    class GroundiffStepSampler(Sampler):
        """Infinite indices: step s's `batch_size` indices from rng(seed, s) with the sources' shares;
        the global generators are seeded from (seed, s) as step s's first index is taken, so the
        batch's augmentations (loaded next, in this process: num_workers 0) and the step's dropout
        depend on (seed, s) only. mmengine resumes by drawing the finished steps' batches again."""

        def __init__(self, dataset, batch_size: int, shares: Sequence[float | None], seed: int = 0) -> None:
            sizes = [len(d) for d in getattr(dataset, "datasets", [dataset])]
            if len(sizes) != len(shares):
                raise ValueError(f"{len(shares)} shares for {len(sizes)} datasets")
            self.n, self.batch_size, self.seed = sum(sizes), batch_size, seed
            self.probabilities = source_probabilities(shares, sizes)

        def __iter__(self) -> Iterator[int]:
            step = 0
            while True:
                indices = step_indices(np.random.default_rng([self.seed, step]), self.n, self.batch_size,
                                       self.probabilities)
                _seed_globals(self.seed, step)
                yield from (int(i) for i in indices)
                step += 1

        def __len__(self) -> int:
            return 2**62

    class GroundiffLogHook(Hook):
        """Each step's loss (its parts summed over the decoder layers, as the transformers backend logs
        them) and lr as a row of `log.csv`; every `log_every` steps their mean to `on_log` (MLflow)."""

        priority = "LOWEST"  # after mmengine's CheckpointHook (VERY_LOW): a step is saved before it is reported
        PARTS = {"loss_cls": "loss_cross_entropy", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}

        def __init__(self, log: Path, log_every: int, on_log: Callable[[dict], None] | None = None,
                     progress: bool = True) -> None:
            self.log, self.log_every, self.on_log, self.progress = Path(log), log_every, on_log, progress
            self.window: list[dict] = []
            self.started = time.perf_counter()
            self.bar = None

        def before_train(self, runner) -> None:
            losslog.truncate(self.log, runner.iter)  # resumed: drop the steps after the checkpoint
            self.started = time.perf_counter()
            if self.progress:
                self.bar = tqdm(total=runner.max_iters, initial=runner.iter, desc="segmenter (mmseg)", mininterval=5)

        def after_train(self, runner) -> None:
            if self.bar is not None:
                self.bar.close()

        def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            values = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in (outputs or {}).items()}
            parts = dict.fromkeys(self.PARTS.values(), 0.0)
            for key, value in values.items():
                if (part := self.PARTS.get(key.rsplit(".", 1)[-1])) is not None:
                    parts[part] += value
            row = {"step": runner.iter + 1, "loss": values["loss"], **parts,
                   "lr": float(runner.optim_wrapper.get_lr()["lr"][0])}
            losslog.append_rows(self.log, [row])
            self.window.append(row)
            if self.bar is not None:
                self.bar.update(1)
            if row["step"] % self.log_every == 0 or row["step"] == runner.max_iters:
                report, self.window = mean_report(self.window, time.perf_counter() - self.started), []
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{report['loss']:.3f}")
                if self.on_log is not None:
                    self.on_log(report)

    DATASETS.register_module(name="GroundiffVOCDataset", module=GroundiffVOCDataset, force=True)
    DATA_SAMPLERS.register_module(name="GroundiffStepSampler", module=GroundiffStepSampler, force=True)
    HOOKS.register_module(name="GroundiffLogHook", module=GroundiffLogHook, force=True)
    _REGISTERED = True


def _seed_globals(seed: int, step: int) -> None:
    """Python's, numpy's and torch's global generators seeded from (seed, step)."""
    value = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


# --------------------------------------------------------------------------- the config


def _palette(n: int) -> list[list[int]]:
    return [[int(v) for v in np.random.default_rng(k).integers(0, 256, 3)] for k in range(n)]


def _train_pipeline(cfg: SegmenterConfig, distort: bool) -> list[dict]:
    size = (cfg.input_size, cfg.input_size)
    steps = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
             dict(type="RandomResize", scale=size, ratio_range=tuple(cfg.scale_jitter), keep_ratio=True),
             dict(type="RandomCrop", crop_size=size)]
    if cfg.hflip:
        steps.append(dict(type="RandomFlip", prob=0.5))
    if distort:
        steps.append(dict(type="PhotoMetricDistortion"))
    return [*steps, dict(type="PackSegInputs")]


def mmseg_config(cfg: SegmenterConfig, classes: Sequence[str], sources: Sequence[DataSource], work_dir: Path):
    """mmseg's packaged MaskFormer config with the overrides that make it this `SegmenterConfig`'s model,
    data and schedule (an `mmengine.Config`; `work_dir` is the resumable state)."""
    from mmengine.config import Config

    labels = [BACKGROUND, *classes]
    c = Config.fromfile(str(packaged_config()))
    size = (cfg.input_size, cfg.input_size)
    preprocessor = dict(type="SegDataPreProcessor", size=size, mean=[255 * m for m in MEAN.tolist()],
                        std=[255 * s for s in STD.tolist()], bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
    c.data_preprocessor = preprocessor
    c.crop_size = size
    c.num_classes = len(labels)
    m = c.model
    m.data_preprocessor = preprocessor
    norm = dict(type="BN", requires_grad=True)  # one process: SyncBN -> BN
    head = m.decode_head
    head.update(num_classes=len(labels))
    head.loss_cls.class_weight = [1.0] * len(labels) + [cfg.no_object_weight]
    if cfg.backbone:  # the paper worlds: mmseg's MaskFormer recipe as packaged (ResNet-50, 256-d, 100 queries)
        m.backbone.update(norm_cfg=norm, init_cfg=dict(type="Pretrained", checkpoint=_pretrained_backbone(cfg.backbone)))
    else:  # the shapes world: shrunk to the SegmenterConfig's small random ResNet and decoder
        widths = list(cfg.backbone_widths)
        if any(b != 2 * a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"backend mmseg: mmseg's ResNet doubles its width every stage; backbone_widths {widths} "
                             "do not (e.g. [32, 64, 128])")
        n = len(widths)
        m.backbone.update(depth=18, num_stages=n, out_indices=tuple(range(n)), strides=(1,) + (2,) * (n - 1),
                          dilations=(1,) * n, stem_channels=cfg.stem_width, base_channels=widths[0],
                          norm_cfg=norm, norm_eval=False, init_cfg=None)
        # mmdet's MaskFormerHead has one width for its pixel decoder, mask embeddings, queries and
        # transformer: d_model (the transformers backend's pixel decoder and mask embeddings: fpn_size)
        head.update(in_channels=widths, in_index=list(range(n)), feat_channels=cfg.d_model,
                    out_channels=cfg.d_model, num_queries=cfg.num_queries)
        head.positional_encoding.num_feats = cfg.d_model // 2
        dec = head.transformer_decoder
        dec.update(num_layers=cfg.decoder_layers, return_intermediate=cfg.aux_loss)
        for attn in (dec.layer_cfg.self_attn_cfg, dec.layer_cfg.cross_attn_cfg):
            attn.update(embed_dims=cfg.d_model, num_heads=cfg.decoder_heads, attn_drop=cfg.dropout,
                        proj_drop=cfg.dropout)
        dec.layer_cfg.ffn_cfg.update(embed_dims=cfg.d_model, feedforward_channels=cfg.decoder_ffn,
                                     ffn_drop=cfg.dropout)

    # data: one dataset per source, concatenated; the sampler draws each step's batch
    metainfo = dict(classes=tuple(labels), palette=_palette(len(labels)))
    datasets = [dict(type="GroundiffVOCDataset", data_root=s.root, ann_file=f"ImageSets/Segmentation/{s.split}.txt",
                     data_prefix=dict(img_path="JPEGImages", seg_map_path=s.labels), metainfo=metainfo,
                     ignore_labels=list(s.ignore_labels), pipeline=_train_pipeline(cfg, _distorts(cfg, s)))
                for s in sources]
    c.train_dataloader = dict(
        batch_size=cfg.batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type="GroundiffStepSampler", batch_size=cfg.batch_size, shares=[s.share for s in sources],
                     seed=cfg.seed),
        dataset=dict(type="ConcatDataset", datasets=datasets))
    for key in ("val_dataloader", "test_dataloader", "val_evaluator", "test_evaluator", "val_cfg", "test_cfg",
                "train_pipeline", "test_pipeline", "img_ratios", "tta_pipeline", "tta_model", "dataset_type",
                "data_root"):
        c.pop(key, None)

    # schedule: AdamW, linear warmup then poly 0.9, gradient clipping, backbone lr factor
    c.optim_wrapper = dict(type="OptimWrapper",
                           optimizer=dict(type="AdamW", lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay),
                           clip_grad=dict(max_norm=cfg.grad_clip, norm_type=2) if cfg.grad_clip > 0 else None,
                           paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=cfg.backbone_lr_mult)}))
    warmup = min(cfg.warmup_steps, cfg.steps)
    schedulers = [dict(type="LinearLR", start_factor=1.0 / warmup, by_epoch=False, begin=0, end=warmup)] if warmup else []
    if warmup < cfg.steps:
        schedulers.append(dict(type="PolyLR", eta_min=0.0, power=0.9, begin=warmup, end=cfg.steps, by_epoch=False))
    c.param_scheduler = schedulers
    c.train_cfg = dict(type="IterBasedTrainLoop", max_iters=cfg.steps, val_interval=cfg.steps + 1)
    c.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=cfg.checkpoint_every,
                                      max_keep_ckpts=1, save_last=True)
    c.default_hooks.logger = dict(type="LoggerHook", interval=cfg.log_every, log_metric_by_epoch=False)
    c.default_hooks.pop("visualization", None)
    c.log_processor = dict(by_epoch=False)
    c.randomness = dict(seed=cfg.seed)
    # mmengine keeps one visualizer per name for the process: a fresh name, or a second training in this
    # process would write into the first one's (deleted) state folder
    c.visualizer = dict(type="SegLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")],
                        name=f"groundiff-{time.time_ns()}")
    c.log_level = "WARNING"  # mmengine's per-parameter INFO lines drown the log; progress: GroundiffLogHook's bar
    c.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="gloo"))
    c.work_dir = str(work_dir)
    c.resume = True
    c.load_from = None
    c.launcher = "none"
    return c


#: `SegmenterConfig.backbone` names -> the ResNet-50 checkpoint mmseg's config loads (mmengine's URI).
MMSEG_BACKBONES = {"microsoft/resnet-50": "torchvision://resnet50", "torchvision://resnet50": "torchvision://resnet50"}


def _pretrained_backbone(name: str) -> str:
    """The checkpoint of mmseg's ResNet-50 for a `backbone` name, or a local .pth file."""
    if name in MMSEG_BACKBONES:
        return MMSEG_BACKBONES[name]
    if name.endswith(".pth") and Path(name).is_file():
        return name
    raise ValueError(f"backend mmseg: backbone {name!r} is not one mmseg's MaskFormer config can load; its ResNet-50 "
                     f"takes one of {', '.join(MMSEG_BACKBONES)} or a local ResNet-50 .pth (docs/backends.md)")


# --------------------------------------------------------------------------- training


def train_mmseg(sources: Sequence[DataSource], classes: Sequence[str], cfg: SegmenterConfig, work_dir: Path,
                device: str = "cpu", on_log: Callable[[dict], None] | None = None,
                progress: bool = True) -> tuple[MMSegSegmenter, dict]:
    """`train_segmenter`'s contract with mmseg doing the training: the trained segmenter and a summary
    (samples per source, final loss, seconds, seconds per step); resumes from `work_dir` when the
    config, classes and data are unchanged."""
    require_mmseg()
    from mmengine.runner import Runner

    data = SegmentationSet(sources)  # the same checks as the transformers backend, before any training
    data.check(len(classes) + 1)
    work_dir = Path(work_dir)
    fp = fingerprint(["mmseg", asdict(cfg), list(classes), [asdict(s) for s in data.sources], data.fingerprint()])
    if (work_dir / FINGERPRINT_FILE).is_file() and (work_dir / FINGERPRINT_FILE).read_text() != fp:
        shutil.rmtree(work_dir)  # another config or other data: never resume from it
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / FINGERPRINT_FILE).write_text(fp)
    last = _last_step(work_dir)
    config = mmseg_config(cfg, classes, sources, work_dir)
    with _cpu_threads(cfg.num_threads if device == "cpu" else 0):
        from mmengine.registry import HOOKS

        runner = Runner.from_cfg(config)
        runner.register_hook(HOOKS.build(dict(type="GroundiffLogHook", log=work_dir / "log.csv", log_every=cfg.log_every,
                                              on_log=on_log, progress=progress)), priority="LOWEST")
        start = time.perf_counter()
        with _resumable_state_types():
            runner.train()
        seconds = time.perf_counter() - start
    model = runner.model.to(device).eval()
    rows = losslog.read_rows(work_dir / "log.csv")
    summary = {"backend": "mmseg", "samples": data.counts(), "steps": cfg.steps, "resumed_from": last,
               "final_loss": float(rows[-1]["loss"]) if rows else None, "seconds": seconds,
               "seconds_per_step": seconds / (cfg.steps - last) if cfg.steps > last else None}
    return MMSegSegmenter(model, classes, cfg.input_size, config), summary


@contextmanager
def _resumable_state_types() -> Iterator[None]:
    """torch.load's weights-only unpickler, allowed the types in mmengine's own checkpoint (its message
    hub's HistoryBuffer and numpy arrays), so that mmengine can resume its state: no other code runs."""
    import builtins
    import codecs

    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = [HistoryBuffer, np.ndarray, np.dtype, np.dtypes.Float64DType, np.dtypes.Int64DType,
               np._core.multiarray._reconstruct, np._core.multiarray.scalar, codecs.encode, builtins.getattr]
    with torch.serialization.safe_globals(allowed):
        yield


def _last_step(work_dir: Path) -> int:
    """The step mmengine will resume from (0: a fresh run)."""
    pointer = work_dir / "last_checkpoint"
    if not pointer.is_file():
        return 0
    name = Path(pointer.read_text().strip()).stem  # iter_<n>
    return int(name.split("_")[-1]) if name.startswith("iter_") else 0


# --------------------------------------------------------------------------- the trained segmenter


class MMSegSegmenter(TrainedSegmenter):
    """A trained mmseg MaskFormer (an `EncoderDecoder`) with its classes and input size; the same
    `predict` / `labels` as `groundiff.segmenter.Segmenter`, so eval_zs3 scores either."""

    backend = "mmseg"

    def __init__(self, model, classes: Sequence[str], input_size: int, config) -> None:
        self.model, self.classes, self.input_size, self.config = model, tuple(classes), input_size, config

    def save_pretrained(self, path: str | Path) -> None:
        """config.py + model.pth (mmseg's checkpoint layout) + segmenter.json (backend, classes)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.config.copy()
        for key in ("work_dir", "visualizer"):  # this run's, not the model's (and config.py stays byte-stable)
            config.pop(key, None)
        config.dump(str(path / CONFIG_FILE))
        meta = {"dataset_meta": {"classes": list(self.labels), "palette": _palette(len(self.labels))}}
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        torch.save({"state_dict": state, "meta": meta}, path / WEIGHTS_FILE)
        (path / META_FILE).write_text(json.dumps({
            "classes": list(self.classes), "labels": list(self.labels), "input_size": self.input_size,
            "backend": "mmseg", "architecture": "mmseg EncoderDecoder + MaskFormerHead", "mmseg_config": MMSEG_CONFIG,
        }, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> MMSegSegmenter:
        """Load with mmseg's own `init_model` (config.py + model.pth)."""
        require_mmseg()
        from mmengine.config import Config
        from mmseg.apis import init_model

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        config = Config.fromfile(str(path / CONFIG_FILE))
        model = init_model(config, str(path / WEIGHTS_FILE), device=str(device)).eval()
        return cls(model, meta["classes"], meta["input_size"], config)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """(H, W, 3) uint8 RGB images (any sizes) -> (H, W) uint8 label maps in 0..K: each image resized
        to input_size (bilinear), mmseg's preprocessing and MaskFormer inference, scores resized back."""
        size = self.input_size
        out: list[np.ndarray] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(0, len(images), batch_size):
                chunk = images[i:i + batch_size]
                tensors = []
                for image in chunk:
                    if image.shape[:2] != (size, size):
                        image = np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))
                    tensors.append(torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1))  # BGR
                batch = self.model.data_preprocessor({"inputs": tensors, "data_samples": None}, False)
                metas = [dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                              padding_size=[0, 0, 0, 0]) for _ in chunk]
                scores = self.model.encode_decode(batch["inputs"], metas)  # (B, K + 1, S, S)
                for j, image in enumerate(chunk):
                    s = F.interpolate(scores[j:j + 1], size=image.shape[:2], mode="bilinear", align_corners=False)
                    out.append(s[0].argmax(0).to(torch.uint8).cpu().numpy())
        finally:
            self.model.train(was_training)
        return out
