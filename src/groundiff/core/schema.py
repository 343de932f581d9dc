"""Every params.yaml section's schema: typed, defaulted, range-checked dataclasses.

The one place that says what params.yaml may hold. `groundiff.core.params` reads the file and builds
these (unknown keys, wrong types and bad ranges are one clear error naming the key); the library
takes them as arguments. Checks that need a world's knowledge (which classes its renderer draws)
are `groundiff.worlds.active.check`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from groundiff.core.errors import ParamsError, WorldError

#: The worlds the project knows. `shapes` runs anywhere; `voc` / `coco` are the paper's.
WORLDS: tuple[str, ...] = ("shapes", "voc", "coco")
#: The shapes renderer's vocabulary (worlds.shapes draws each of them).
SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "ring", "square", "triangle", "star", "cross", "heart", "crescent", "arrow", "diamond",
)
#: Autocast precisions of the UNet's denoising calls (diffusion.pipeline maps them to dtypes).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: Ways to treat a prompted class the oracle did not find (PAPER.md, "Training").
STRATEGIES: tuple[str, ...] = ("without_zero_masks", "normal")
#: Which training images a segmenter distorts photometrically.
COLOR_AUG_MODES: tuple[str, ...] = ("none", "synthetic", "all")
#: Which library trains a Protocol II segmenter (SegmenterConfig.backend).
SEGMENTER_BACKENDS: tuple[str, ...] = ("transformers", "mmseg")
#: A Protocol II variant's real data: none, seen classes only (unseen hidden), every class.
REAL_MODES: tuple[str, ...] = ("none", "seen", "all")
#: Protocol II's treatment of background pixels.
BACKGROUND_MODES: tuple[str, ...] = ("ignore", "seen")
#: Who labels the synthetic dataset's images (synth_dataset.labels): the method's grounding module, or
#: the world's oracle detector (a study's reference: the labels of a module that agreed with it everywhere).
SYNTH_LABELS: tuple[str, ...] = ("grounding", "oracle")
#: How the scored real images look (eval_zs3.appearance): as they are, or made to look generated, one
#: trait at a time (groundiff.eval.appearance).
APPEARANCES: tuple[str, ...] = ("real", "grey_background", "blurred", "pastel")
#: The grounding module's mix-conv spectral norm: torch's parametrization, or the released code's
#: power iteration (one per forward in train and eval mode; groundiff.method.grounding.model).
SPECTRAL_NORMS: tuple[str, ...] = ("torch", "biggan")
#: How the grounding module's decoder layers start: independent draws, or copies of one (released code).
DECODER_INITS: tuple[str, ...] = ("independent", "cloned")
#: How the module normalises at test time: BatchNorm's running statistics (eval mode), or the test
#: image's own statistics with the module in train mode (the released test.py never calls .eval()).
NORMS_AT_TEST: tuple[str, ...] = ("running", "batch")
_ADDRESS = re.compile(r"^(tcp|tls)://\S+$")


def check_world_name(name: str) -> str:
    if name not in WORLDS:
        raise WorldError(f"unknown world {name!r}; choose one of {', '.join(WORLDS)}")
    return name


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown training strategy {strategy!r}: use 'without_zero_masks' (a class the oracle "
            "missed gives no loss; the paper's better variant) or 'normal' (it is supervised with "
            "an all-zero mask)"
        )


def check_capture_t(steps: int, t: int) -> int:
    """The UNet call index of the paper's capture step t (1 = the final DDIM step) of `steps`."""
    if not 1 <= t <= steps:
        raise ValueError(f"capture step t={t} must be in 1..{steps} (steps counted from the end)")
    return steps - t


# ------------------------------ the world and its models ------------------------------------


@dataclass(frozen=True)
class WorldParams:
    """params.yaml `world`: which world the whole pipeline runs on."""

    name: str = "shapes"  # shapes | voc | coco
    split: int = 1  # which seen/unseen split of that world
    device: str = "cpu"  # torch device for every stage ("cuda", "cuda:1", ...)
    # torch CPU threads of every stage of the method (0 = torch's default). Part of the result:
    # more threads sum floats in another order (train_grounding's weights differ after 3 steps),
    # so it is pinned, and a run gives the same bytes on any machine and under any scheduler.
    num_threads: int = 1

    def __post_init__(self) -> None:
        check_world_name(self.name)
        if self.num_threads < 0:
            raise ValueError(f"world.num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")


@dataclass(frozen=True)
class ShapesParams:
    """params.yaml `shapes`: the shapes world's vocabulary and splits."""

    classes: list[str] = field(default_factory=lambda: list(SHAPE_CLASSES))
    image_size: int = 32
    # split number -> unseen classes (seen = the rest), like the paper's three VOC 15/5 splits.
    splits: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in SHAPE_CLASSES]
        if unknown:
            raise ValueError(
                f"classes: the renderer cannot draw {unknown}; it draws {', '.join(SHAPE_CLASSES)}"
            )


@dataclass(frozen=True)
class OracleParams:
    backend: str = "torchvision"  # torchvision | mmdet | detectron2
    weights: str = "torchvision"  # local checkpoint file, or "torchvision" for torchvision's COCO weights
    arch: str = "maskrcnn_resnet50_fpn_v2"  # torchvision builder name
    config: str = ""  # mmdet / detectron2 config file
    min_size: int = 800  # torchvision: images are resized so their short side is this (COCO's 800)

    def __post_init__(self) -> None:
        if self.min_size <= 0:
            raise ValueError(f"oracle.min_size must be positive, got {self.min_size}")
        if self.backend not in ("torchvision", "mmdet", "detectron2"):
            raise ValueError(f"oracle.backend must be torchvision, mmdet or detectron2, got {self.backend!r}")


@dataclass(frozen=True)
class PaperWorldParams:
    """params.yaml `voc:` / `coco:`: where the paper world's models and data come from."""

    diffusion: str = "runwayml/stable-diffusion-v1-5"  # hub id (in the local HF cache) or a local folder
    oracle: OracleParams = field(default_factory=OracleParams)
    data_root: str = ""  # VOC: .../VOCdevkit/VOC2012; COCO: the folder with annotations/ and train2017/
    sbd_root: str = ""  # VOC only, optional: SBD's benchmark_RELEASE/dataset (cls/*.mat) -> "train_aug"
    max_train: int = 0  # world_data: at most this many training images (0 = all), e.g. for a dry run
    max_val: int = 0  # ... and validation images

    def __post_init__(self) -> None:
        if self.max_train < 0 or self.max_val < 0:
            raise ValueError("max_train / max_val must be >= 0 (0 = all images)")


@dataclass(frozen=True)
class WorldDataConfig:
    seed: int = 0
    n_train: int = 2000
    n_val: int = 500
    n_dev: int = 500  # every world: held-out train images, every class labelled (data/<world>/dev)
    min_objects: int = 1
    max_objects: int = 2
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.n_train <= 0 or self.n_val <= 0 or self.n_dev <= 0:
            raise ValueError(f"n_train, n_val and n_dev must be positive, got {self.n_train}, {self.n_val}, "
                             f"{self.n_dev}")


@dataclass(frozen=True)
class DetectorConfig:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    widths: tuple[int, ...] = (32, 64, 128)
    fpn_channels: int = 64
    input_size: int = 64
    augment: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything that decides the trained model. Changing any field retrains from scratch."""

    seed: int = 0
    image_size: int = 32  # pixels; latents have the same size (VAE factor 1)
    max_objects: int = 2
    # VAE phase
    vae_steps: int = 1500
    vae_batch_size: int = 64
    vae_lr: float = 2e-3
    vae_channels: int = 32
    latent_channels: int = 4
    # UNet + text encoder phase
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    decay_start: float = 0.6  # fraction of `steps` after which lr decays linearly ...
    final_lr_fraction: float = 0.05  # ... to this fraction of lr
    weight_decay: float = 0.01
    ema_decay: float = 0.995
    uncond_prob: float = 0.1  # caption dropout, for classifier-free guidance
    colour_prob: float = 0.5  # captions name colours ("a red star") with this probability
    background_prob: float = 0.25  # ... and the background ("on a gray background")
    block_out_channels: tuple[int, ...] = (32, 96, 128)
    layers_per_block: int = 1
    attention_heads: int = 8
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 24  # tokens, including <bos> and <eos>
    train_timesteps: int = 1000
    # Second cycle (warm restart from the first cycle's EMA weights); 0 steps = none.
    finetune_steps: int = 0
    finetune_lr: float = 4e-4
    finetune_snr_gamma: float = 0.0  # Min-SNR-gamma loss weight min(SNR, gamma) / SNR; 0 = plain MSE
    finetune_batch_size: int = 0  # 0 = batch_size; a GPU is launch-bound here, so larger batches are ~free
    finetune_freeze_cross_attention: bool = False  # keep every cross-attention (attn2) as cycle 1 left it
    # Text encoder: joint (world v1: trained with the UNet) | clip (world v2: a mini-CLIP pretrained on
    # the renderer's (image, caption) pairs, then frozen while the UNet trains, as SD's CLIP is)
    text_encoder: str = "joint"
    clip_steps: int = 1500
    clip_batch_size: int = 128
    clip_lr: float = 1e-3
    clip_token_weight: float = 1.0  # FILIP's token-wise loss beside CLIP's pooled one; 0 = CLIP alone
    # Warm start: the VAE and the UNet (all but the cross-attention's key, value and output projections,
    # re-initialised to learn the new text encoder) from this pipeline folder; "" = from scratch
    init_pipeline: str = ""

    def __post_init__(self) -> None:
        if self.text_encoder not in ("joint", "clip"):
            raise ValueError(f"text_encoder must be joint (trained with the UNet) or clip (pretrained, frozen), "
                             f"got {self.text_encoder!r}")
        if self.text_encoder == "clip" and (self.clip_steps <= 0 or self.clip_batch_size < 2 or self.clip_lr <= 0
                                            or self.clip_token_weight < 0):
            raise ValueError("text_encoder clip needs clip_steps > 0, clip_batch_size >= 2 (a contrastive batch), "
                             f"clip_lr > 0 and clip_token_weight >= 0, got {self.clip_steps}, "
                             f"{self.clip_batch_size}, {self.clip_lr}, {self.clip_token_weight}")
        if self.init_pipeline and self.text_encoder != "clip":
            raise ValueError("init_pipeline (a warm start with re-initialised cross-attention) is for a new, "
                             "frozen text encoder: set text_encoder: clip, or init_pipeline: ''")
        for name in ("vae_steps", "steps", "batch_size", "vae_batch_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if (self.finetune_steps < 0 or self.finetune_lr <= 0 or self.finetune_snr_gamma < 0
                or self.finetune_batch_size < 0):
            raise ValueError("finetune_steps must be >= 0, finetune_lr > 0, finetune_snr_gamma >= 0 and "
                             "finetune_batch_size >= 0 (0 = batch_size), got "
                             f"{self.finetune_steps}, {self.finetune_lr}, {self.finetune_snr_gamma}, "
                             f"{self.finetune_batch_size}")
        if not 0 <= self.uncond_prob < 1:
            raise ValueError(f"uncond_prob must be in [0, 1), got {self.uncond_prob}")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^(levels-1) = "
                f"{2 ** (len(self.block_out_channels) - 1)} for block_out_channels {self.block_out_channels}"
            )


@dataclass(frozen=True)
class RunOptions:
    """How to run training; none of these change the result (up to floating-point noise)."""

    device: str = "cpu"
    mixed_precision: str = "bf16"  # "no" or "bf16" (CPU with AVX512-BF16, or CUDA)
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    checkpoint_every: int = 100  # steps
    log_every: int = 20  # steps
    data_workers: int = 0  # processes rendering batches ahead (0: in the training loop); 8 fed an H200

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.checkpoint_every <= 0 or self.log_every <= 0:
            raise ValueError("checkpoint_every and log_every must be positive")
        if self.data_workers < 0:
            raise ValueError(f"data_workers must be >= 0, got {self.data_workers}")


@dataclass(frozen=True)
class WorldDiffusionParams:
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    run: RunOptions = field(default_factory=RunOptions)


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 25  # DDIM steps (the paper: 50)
    guidance_scale: float = 4.0  # classifier-free guidance (the paper: 5.0 train, 7.5 test)
    eta: float = 0.0  # DDIM eta (the paper: 0, deterministic)
    batch_size: int = 32
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the UNet's denoising calls

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {self.guidance_scale}")


@dataclass(frozen=True)
class FidelityConfig:
    seed: int = 1234
    one_per_class: int = 20
    two_object: int = 200
    score_threshold: float = 0.5  # a class is "found" by a detection at least this confident
    template_one: str = "a photograph of a {}"
    template_two: str = "a photograph of a {} and a {}"

    def __post_init__(self) -> None:
        if self.one_per_class <= 0 or self.two_object < 0:
            raise ValueError("one_per_class must be positive and two_object non-negative")


@dataclass(frozen=True)
class WorldFidelityParams:
    prompts: FidelityConfig = field(default_factory=FidelityConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass(frozen=True)
class BindingConfig:
    """Stage world_binding: how `worlds.binding.attention_binding` samples and scores its one-object images."""

    template: str = "a photograph of a {}"  # one-object prompt; also the cosine's template
    per_class: int = 2  # images per class, each with its own seed
    seed: int = 2026  # the images' own seed stream (not the training prompts', not Protocol I's)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # DDIM 25 steps, guidance 4, fp32
    daam_threshold: float = 0.4  # DAAM's mask: normalised heat map > this (as eval_grounding's)
    oracle_score_threshold: float = 0.05  # the class is found from this detector score on (as eval_grounding's)

    def __post_init__(self) -> None:
        if self.per_class <= 0:
            raise ValueError(f"per_class must be a positive number of images, got {self.per_class}")
        if self.template.count("{}") != 1:
            raise ValueError(f"template needs exactly one '{{}}' for the class name, got {self.template!r}")
        for name in ("daam_threshold", "oracle_score_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


# ------------------------------ the paper's method ------------------------------------------


@dataclass(frozen=True)
class PromptConfig:
    n: int = 2000  # rows in the table
    seed: int = 0
    two_object_prob: float = 0.5  # the paper: 1/2
    template_one: str = "a photograph of a {}"
    template_two: str = "a photograph of a {} and a {}"

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"n must be a positive number of prompts, got {self.n}")
        if not 0.0 <= self.two_object_prob <= 1.0:
            raise ValueError(f"two_object_prob must be a probability in [0, 1], got {self.two_object_prob}")
        if self.template_one.count("{}") != 1 or self.template_two.count("{}") != 2:
            raise ValueError("template_one needs one '{}' and template_two two '{}' placeholders")


@dataclass(frozen=True)
class SynthesisConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    capture_t: int = 1  # steps counted from the end; 1 = final step (released code), 5 = paper's best
    shard_size: int = 100  # rows per shard: the unit of resumption and of distribution

    def __post_init__(self) -> None:
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        check_capture_t(self.sampling.steps, self.capture_t)  # validates the range


@dataclass(frozen=True)
class DistributedConfig:
    """params.yaml `distributed`: where the shards of synthesize / synth_dataset are generated."""

    scheduler: str = ""  # "" = serial in-process; "local" = LocalCluster; "tcp://host:8786" = a scheduler
    n_workers: int = 2  # LocalCluster worker processes (one thread each); unused with an address

    def __post_init__(self) -> None:
        if self.scheduler not in ("", "local") and not _ADDRESS.match(self.scheduler):
            raise ValueError(
                f"scheduler {self.scheduler!r} is not one of \"\" (serial), \"local\" (a LocalCluster) "
                "or a scheduler address like \"tcp://host:8786\""
            )
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")

    @property
    def serial(self) -> bool:
        return self.scheduler == ""


@dataclass(frozen=True)
class PseudoLabelConfig:
    score_threshold: float = 0.05  # the paper's detector threshold
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    """How the grounding module is trained. Every field but the run options decides the result."""

    # the paper's seed: the module's initial weights and the shuffle order of every epoch
    seed: int = 42
    # "without_zero_masks" (missed classes give no loss; the paper's better variant) or
    # "normal" (missed classes are supervised with an all-zero mask)
    strategy: str = "without_zero_masks"
    # Adam learning rate. The paper: 1e-5 at batch 1 for up to 500k online iterations. A CPU
    # budget allows ~500 steps: 10x larger here. In a 200-step trial (batch 8, shapes-size UNet)
    # 1e-4 beat 1e-5 (held-out mIoU 0.43 vs 0.36); 1e-3 diverged briefly and ended no better
    lr: float = 1e-4
    # images per step (the paper: 1); the loss is divided by it
    batch_size: int = 8
    # optimisation steps (batches) in all; epochs = steps * batch_size / images
    steps: int = 500
    # prompt that places each class name for its embedding (the paper's)
    template: str = "a photograph of a {}"
    # train on the seen classes only (the zero-shot protocol); False keeps every prompted class
    seen_only: bool = True
    # transformer decoder width (the paper: 512)
    d_model: int = 512
    # decoder attention heads (the paper: 8)
    n_heads: int = 8
    # decoder FFN hidden width (the paper: 2048)
    ffn_dim: int = 2048
    # decoder layers (the paper: 3)
    n_layers: int = 3
    # 1x1-conv widths of the visual encoder's buckets, lowest resolution first; () = the paper's
    # (16, 32, 64, 128), its last n for a UNet with n buckets (the shapes UNet: 3)
    bucket_widths: tuple[int, ...] = ()
    # standardise the class embeddings on the training classes' mean and spread (not in the
    # paper; GroundingModule.set_text_statistics says why). False: the raw hidden states
    standardize_text: bool = False
    # the mix convs' spectral norm: "torch" (torch's parametrization) or "biggan" (the released
    # code's: one power iteration per forward, in eval mode too, vector `u0` saved with the weights)
    spectral_norm: str = "torch"
    # the decoder layers' start: "independent" draws or "cloned" (the released code: copies of one)
    decoder_init: str = "independent"
    # run option: save a resumable state every this many steps (and at the end)
    checkpoint_every: int = 50
    # run option: report the mean loss (progress bar, `on_log`, CSV flush) every this many steps
    log_every: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "bucket_widths", tuple(self.bucket_widths))  # YAML gives a list
        check_strategy(self.strategy)
        check_choice("spectral_norm", self.spectral_norm, SPECTRAL_NORMS)
        check_choice("decoder_init", self.decoder_init, DECODER_INITS)
        for name in ("batch_size", "steps", "d_model", "n_heads", "ffn_dim", "n_layers",
                     "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if any(w <= 0 for w in self.bucket_widths):
            raise ValueError(f"bucket_widths must be positive, got {self.bucket_widths}")
        if self.template.count("{}") != 1:
            raise ValueError(f"template needs exactly one '{{}}' for the class name, got {self.template!r}")

    def model_overrides(self) -> dict:
        """The GroundingConfig fields this config sets."""
        return {"d_model": self.d_model, "n_heads": self.n_heads, "ffn_dim": self.ffn_dim,
                "n_layers": self.n_layers, "bucket_widths": self.bucket_widths,
                "standardize_text": self.standardize_text, "spectral_norm": self.spectral_norm,
                "decoder_init": self.decoder_init}


@dataclass(frozen=True)
class SynthDatasetConfig:
    seed: int = 7  # its own prompt stream, apart from training and test prompts
    n_one: int = 1000  # one-object prompts (Model A)
    n_two: int = 1000  # two-object prompts (Model B; A+B = the mixture, Model C)
    n_complicated: int = 500  # richer prompts (Model E)
    threshold: float = 0.5  # background where no prompted class has sigmoid(logit) >= threshold
    ignore_below: float = 0.5  # 255 where the best class has ignore_below <= p < threshold
    capture_t: int = 1  # the grounding module's capture step (as in synthesize)
    template_one: str = "a photograph of a {}"
    template_two: str = "a photograph of a {} and a {}"
    # Complicated prompts: each class gets an attribute, and the scene a context, e.g.
    # "a photograph of a red star and a blue ring on a gray background".
    attributes: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    grounding_template: str = "a photograph of a {}"  # how class embeddings are made (training's)
    shard_size: int = 100
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # the grounding module folder that labels the images: train_grounding's, or another one (e.g.
    # `groundiff import-official`'s); it enters the output's fingerprint by content, not by this name
    grounding_dir: str = "models/grounding"
    # who labels the images: grounding (the method) | oracle (the world's detector, for a study; the
    # grounding module's labels are still made, to count how often the two agree)
    labels: str = "grounding"
    oracle_score: float = 0.5  # labels: oracle: the detector score an instance needs to become a label

    def __post_init__(self) -> None:
        if self.labels not in SYNTH_LABELS:
            raise ValueError(f"labels: {self.labels!r} is not one of {', '.join(SYNTH_LABELS)}")
        if not 0.0 <= self.oracle_score <= 1.0:
            raise ValueError(f"oracle_score: a detector score in [0, 1], got {self.oracle_score}")
        if min(self.n_one, self.n_two, self.n_complicated) < 0 or self.n_one + self.n_two + self.n_complicated == 0:
            raise ValueError("n_one, n_two, n_complicated must be >= 0 and not all zero")
        if not 0.0 < self.ignore_below <= self.threshold < 1.0:
            raise ValueError(f"need 0 < ignore_below <= threshold < 1, got {self.ignore_below}, {self.threshold}")
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        check_capture_t(self.sampling.steps, self.capture_t)


# ------------------------------ Protocol I and II -------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """params.yaml `eval_grounding`: the Protocol I test set and how it is scored."""

    seed: int = 2023  # the test prompts' own seed stream; must differ from the training prompts' seed
    per_category: int = 80  # test images per category (five categories)
    # the paper samples test images with guidance 7.5 (5.0 for training data), DDIM eta 0
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(guidance_scale=7.5))
    capture_t: int = 1  # feature step counted from the end: 1 = final (released code), 5 = paper's best
    mask_threshold: float = 0.5  # ours: pixel in the mask when sigmoid(logit) > this
    daam_threshold: float = 0.4  # DAAM: pixel in the mask when the normalised heat map > this
    oracle_score_threshold: float = 0.05  # a prompted class counts as found from this detector score on
    examples_per_category: int = 2  # (image, class) pairs per category kept for the overlay figure
    template_one: str = "a photograph of a {}"
    template_two: str = "a photograph of a {} and a {}"
    # the grounding module's normalisation at test time, the headline row of Table 1 (the other
    # mode is scored too, as a second row): "running" (eval mode: BatchNorm's running statistics,
    # spectral norm frozen) or "batch" (the released test.py: the module in train mode, each test
    # image normalised by its own statistics, running statistics and spectral-norm vectors updated
    # image after image, in memory only)
    norm_at_test: str = "running"
    # the grounding module folder under test: train_grounding's, or another (e.g. `groundiff import-official`'s)
    grounding_dir: str = "models/grounding"

    def __post_init__(self) -> None:
        check_choice("norm_at_test", self.norm_at_test, NORMS_AT_TEST)
        if self.per_category <= 0:
            raise ValueError(f"per_category must be a positive number of images, got {self.per_category}")
        if self.examples_per_category < 0:
            raise ValueError(f"examples_per_category must be >= 0, got {self.examples_per_category}")
        for name in ("mask_threshold", "daam_threshold", "oracle_score_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.template_one.count("{}") != 1 or self.template_two.count("{}") != 2:
            raise ValueError("template_one needs one '{}' and template_two two '{}' placeholders")
        check_capture_t(self.sampling.steps, self.capture_t)  # 1 <= capture_t <= steps


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture, data augmentation and training schedule of one MaskFormer segmenter.

    The number of classes is not a field: it comes from the class list the model is trained on
    (`num_labels = len(classes) + 1`, background being class 0; see the module docstring).
    """

    # which library trains it: transformers (the project's MaskFormer loop, groundiff.segmenter.train)
    # | mmseg (mmseg's packaged MaskFormer config shrunk to the fields below, mmengine's Runner;
    # groundiff.segmenter.mmseg_backend; needs `bash scripts/install_mmseg.sh`)
    backend: str = "transformers"
    # --- architecture
    backbone: str = ""  # pretrained backbone (hub id or folder, ResNet or Swin); "" = small random ResNet below
    backbone_widths: tuple[int, ...] = (32, 64, 128)  # random ResNet: channels of each stage (strides 4, 8, 16, ...)
    backbone_depths: tuple[int, ...] = (1, 1, 1)  # random ResNet: basic blocks per stage
    stem_width: int = 32  # random ResNet: channels of the 7x7 stride-2 stem (+ max-pool: stride 4)
    fpn_size: int = 64  # pixel decoder: FPN channels and per-pixel mask-embedding size (multiple of 32: GroupNorm(32))
    d_model: int = 128  # transformer decoder width (queries, attention)
    num_queries: int = 20  # MaskFormer queries; more than the classes + background an image can hold
    decoder_layers: int = 3  # transformer decoder layers (MaskFormer: 6)
    decoder_heads: int = 4  # attention heads (must divide d_model)
    decoder_ffn: int = 256  # decoder feed-forward width
    dropout: float = 0.1  # decoder dropout (MaskFormer/DETR: 0.1)
    aux_loss: bool = True  # deep supervision: the loss on every decoder layer's prediction, as MaskFormer
    # (computed in groundiff.segmenter.train; the transformers model keeps use_auxiliary_loss off, see there)
    no_object_weight: float = 0.1  # cross-entropy weight of the "no object" class (MaskFormer: 0.1)
    # --- input and augmentation
    input_size: int = 64  # images are resized to input_size x input_size (the shapes world's 32 -> 64: finer masks)
    hflip: bool = True  # random horizontal flip in training
    scale_jitter: tuple[float, float] = (0.75, 1.25)  # random rescale range, then crop / pad (ignore) to input_size
    # photometric distortion in training (MaskFormer's semantic recipe, detectron2's COLOR_AUG_SSD:
    # brightness, contrast, saturation, hue): none | synthetic (generated images only) | all
    color_aug: str = "none"
    # --- training
    steps: int = 2000  # optimizer steps
    batch_size: int = 16  # images per step, drawn uniformly from the concatenated sources
    lr: float = 1e-3  # AdamW peak learning rate (linear warmup, then poly decay 0.9 as MaskFormer)
    backbone_lr_mult: float = 1.0  # backbone lr = lr * this (MaskFormer with a pretrained backbone: 0.1)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 50  # linear lr warmup steps
    grad_clip: float = 1.0  # max gradient norm (0 = no clipping)
    seed: int = 0  # model initialisation, batch sampling, augmentation and dropout
    # CPU threads while training. Part of the result, so pinned: a different thread count sums
    # floats in another order, and MaskFormer's matching amplifies that (real_all hIoU 62.5 at 1
    # thread, 41.4 at 2, measured). 0 = torch's default (then results depend on the machine).
    num_threads: int = 1
    checkpoint_every: int = 100  # save the resumable training state every this many steps
    log_every: int = 20  # mean loss to the CSV log / progress bar / on_log every this many steps

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "input_size": self.input_size,
                    "num_queries": self.num_queries, "d_model": self.d_model, "decoder_layers": self.decoder_layers,
                    "checkpoint_every": self.checkpoint_every, "log_every": self.log_every, "fpn_size": self.fpn_size}
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if bad:
            raise ValueError(f"must be positive: {', '.join(bad)}")
        if self.backend not in SEGMENTER_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(SEGMENTER_BACKENDS)}, got {self.backend!r}")
        if self.fpn_size % 32:
            raise ValueError(f"fpn_size must be a multiple of 32 (the pixel decoder's GroupNorm has 32 groups), got {self.fpn_size}")
        if self.d_model % self.decoder_heads:
            raise ValueError(f"decoder_heads ({self.decoder_heads}) must divide d_model ({self.d_model})")
        if not self.backbone and (len(self.backbone_widths) != len(self.backbone_depths) or len(self.backbone_widths) < 2):
            raise ValueError("backbone_widths and backbone_depths: one entry per ResNet stage, at least 2 stages "
                             f"(got {list(self.backbone_widths)} and {list(self.backbone_depths)})")
        lo, hi = self.scale_jitter
        if not 0 < lo <= hi:
            raise ValueError(f"scale_jitter: expected 0 < min <= max, got {list(self.scale_jitter)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.color_aug not in COLOR_AUG_MODES:
            raise ValueError(f"color_aug: {self.color_aug!r} is not one of {', '.join(COLOR_AUG_MODES)} "
                             "(which training images are photometrically distorted)")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")


@dataclass(frozen=True)
class VariantSpec:
    """One Protocol II training set: synthetic splits + real data."""

    synthetic: list[str] = field(default_factory=list)  # split names of the synthetic dataset, in order
    real: str = "none"  # none | seen (unseen classes hidden) | all (every class labelled: oracle)
    real_share: float | None = None  # with real and synthetic data: the real images' share of the
    # samples (None: in proportion to their number)

    def __post_init__(self) -> None:
        if self.real not in REAL_MODES:
            raise ValueError(f"real: {self.real!r} is not one of {', '.join(REAL_MODES)}")
        if not self.synthetic and self.real == "none":
            raise ValueError("a variant needs data: list synthetic splits or set real to seen/all")
        if self.real_share is not None and not (self.synthetic and self.real != "none" and 0 < self.real_share < 1):
            raise ValueError(f"real_share {self.real_share} needs both real and synthetic data and 0 < real_share < 1")


@dataclass(frozen=True)
class TrainSegmenterParams:
    """params.yaml `train_segmenter`."""

    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)  # shared by every variant
    variants: dict[str, VariantSpec] = field(default_factory=dict)  # name -> training data

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants: none defined; list at least one (e.g. A: {synthetic: [one]})")

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise ParamsError(f"unknown segmenter variant {name!r}; params.yaml train_segmenter.variants "
                              f"defines: {', '.join(self.variants)}")
        return self.variants[name]


#: Real splits eval_zs3 can score (both label every class).
SCORED_SPLITS = ("val", "dev")


@dataclass(frozen=True)
class TrackingParams:
    """params.yaml `tracking`: how stage runs are grouped in MLflow, never what they produce (RUN_ONLY).

    `groundiff study` sets these per DVC experiment (`dvc exp run -S`), because a queued experiment runs
    in a temp workspace that environment variables may not reach: each stage run of the experiment is
    then tagged with the study and nested under the study's one parent run.
    """

    study: str = ""  # the study this run belongs to ("" = none: runs group under "dvc repro @ <commit>")
    parent_run_id: str = ""  # the MLflow run the stage runs nest under ("" = the default grouping)
    point: str = ""  # the study's grid point, e.g. "lr=0.001" ("" = the study has no grid)


@dataclass(frozen=True)
class EvalZS3Params:
    """params.yaml `eval_zs3`."""

    split: str = "val"  # the real split scored: val (the headline) | dev (held-out train images: choices)
    variants: tuple[str, ...] = ()  # the variants scored; empty = every train_segmenter variant
    background: str = "ignore"  # ignore: background pixels skipped (ZegFormer's VOC) | seen: a seen class
    batch_size: int = 64  # images per forward pass
    figure_images: int = 6  # rows of the prediction figure (about 2/3 showing an unseen class)
    appearance: str = "real"  # the scored images as they are, or made to look generated (a study's diagnosis)

    def __post_init__(self) -> None:
        if self.appearance not in APPEARANCES:
            raise ValueError(f"appearance: {self.appearance!r} is not one of {', '.join(APPEARANCES)}")
        if self.split not in SCORED_SPLITS:
            raise ValueError(f"split: {self.split!r} is not one of {', '.join(SCORED_SPLITS)} (val: the headline; "
                             "dev: held-out train images, for every choice of a setting)")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants: {list(self.variants)} names a variant twice")
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"background: {self.background!r} is not one of {', '.join(BACKGROUND_MODES)}")
        if self.batch_size <= 0 or self.figure_images <= 0:
            raise ValueError("batch_size and figure_images must be positive")

