"""One command per world: `groundiff world voc` rewrites params.yaml with the paper's settings.

Each preset sets the same keys, so switching back (`groundiff world shapes`) restores the shapes
world's defaults. params.yaml is edited in place with ruamel's round-trip mode: its comments,
key order and every key a preset does not name stay as they are.

PAPER.md fixes: SD v1.x at 512x512, DDIM 50 steps with eta 0, guidance 5.0 for training data
and 7.5 at test, Adam lr 1e-5 at batch 1, BCE, training without zero masks, oracle score threshold
0.05. The paper leaves open the dataset sizes, the grounding module's iteration count for an offline
dataset and the MaskFormer schedule; the values here are ours, chosen and explained in docs/gpu.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Keys shared by the paper worlds (voc and coco), then what differs per world.
_PAPER: dict[str, Any] = {
    "world.device": "cuda",
    "prompts.n": 10000,
    "synthesize.sampling.steps": 50,
    "synthesize.sampling.guidance_scale": 5.0,
    "synthesize.sampling.batch_size": 8,
    "synthesize.capture_t": 1,
    "pseudo_label.score_threshold": 0.05,
    "pseudo_label.batch_size": 8,
    "train_grounding.lr": 1.0e-5,
    "train_grounding.batch_size": 1,
    "train_grounding.steps": 100000,
    "train_grounding.strategy": "without_zero_masks",
    "train_grounding.bucket_widths": [],
    "train_grounding.standardize_text": False,  # the paper feeds CLIP's hidden states as they are
    # the released code's run time (docs/official.md): its spectral norm, decoder start and test mode
    "train_grounding.spectral_norm": "biggan",
    "train_grounding.decoder_init": "cloned",
    "eval_grounding.norm_at_test": "batch",
    "train_grounding.checkpoint_every": 2000,
    "train_grounding.log_every": 100,
    "eval_grounding.per_category": 200,
    "eval_grounding.capture_t": 1,
    "eval_grounding.sampling.steps": 50,
    "eval_grounding.sampling.guidance_scale": 7.5,
    "eval_grounding.sampling.batch_size": 8,
    "world_fidelity.sampling.steps": 50,
    "world_fidelity.sampling.guidance_scale": 7.5,
    "world_fidelity.sampling.batch_size": 8,
    "world_binding.sampling.steps": 50,
    "world_binding.sampling.guidance_scale": 7.5,
    "world_binding.sampling.batch_size": 8,
    "synth_dataset.n_one": 5000,
    "synth_dataset.n_two": 5000,
    "synth_dataset.n_complicated": 2500,
    # Model E's "more complicated prompts": an attribute and a scene around the class names
    "synth_dataset.attributes": ["small", "large", "white", "black", "brown", "red"],
    "synth_dataset.contexts": ["in a park", "on a street", "in a living room", "on a beach", "in a field"],
    "synth_dataset.sampling.steps": 50,
    "synth_dataset.sampling.guidance_scale": 5.0,
    "synth_dataset.sampling.batch_size": 8,
    "train_segmenter.segmenter.backbone": "microsoft/resnet-50",
    "train_segmenter.segmenter.fpn_size": 256,
    "train_segmenter.segmenter.d_model": 256,
    "train_segmenter.segmenter.num_queries": 100,
    "train_segmenter.segmenter.decoder_layers": 6,
    "train_segmenter.segmenter.decoder_heads": 8,
    "train_segmenter.segmenter.decoder_ffn": 2048,
    "train_segmenter.segmenter.input_size": 512,
    "train_segmenter.segmenter.scale_jitter": [0.5, 2.0],
    "train_segmenter.segmenter.steps": 20000,
    "train_segmenter.segmenter.batch_size": 16,
    "train_segmenter.segmenter.lr": 1.0e-4,
    "train_segmenter.segmenter.backbone_lr_mult": 0.1,
    "train_segmenter.segmenter.warmup_steps": 500,
    "train_segmenter.segmenter.checkpoint_every": 1000,
    "train_segmenter.segmenter.log_every": 50,
    "eval_zs3.batch_size": 8,
    # The paper's precision; bf16 (or fp16) autocast would roughly halve generation time, not measured on SD
    "world_fidelity.sampling.precision": "fp32",
    "world_binding.sampling.precision": "fp32",
    "synthesize.sampling.precision": "fp32",
    "eval_grounding.sampling.precision": "fp32",
    "synth_dataset.sampling.precision": "fp32",
    # generate in the stage's own process on the GPU; a cluster of GPU workers: its address (README)
    "distributed.scheduler": "",
}

PRESETS: dict[str, dict[str, Any]] = {
    "shapes": {
        "world.name": "shapes", "world.split": 1, "world.device": "cpu",
        "prompts.n": 1000,
        "synthesize.sampling.steps": 25, "synthesize.sampling.guidance_scale": 5.0,
        "synthesize.sampling.batch_size": 50, "synthesize.capture_t": 1,
        "pseudo_label.score_threshold": 0.05, "pseudo_label.batch_size": 64,
        "train_grounding.lr": 1.0e-4, "train_grounding.batch_size": 8, "train_grounding.steps": 500,
        "train_grounding.strategy": "without_zero_masks", "train_grounding.bucket_widths": [],
        "train_grounding.standardize_text": True, "train_grounding.checkpoint_every": 50, "train_grounding.log_every": 10,
        "train_grounding.spectral_norm": "torch", "train_grounding.decoder_init": "independent",
        "eval_grounding.norm_at_test": "running",
        "eval_grounding.per_category": 60, "eval_grounding.capture_t": 1,
        "eval_grounding.sampling.steps": 25, "eval_grounding.sampling.guidance_scale": 7.5,
        "eval_grounding.sampling.batch_size": 50,
        "world_fidelity.sampling.steps": 25, "world_fidelity.sampling.guidance_scale": 4.0,
        "world_fidelity.sampling.batch_size": 50,
        "world_binding.sampling.steps": 25, "world_binding.sampling.guidance_scale": 4.0,
        "world_binding.sampling.batch_size": 50, "world_binding.sampling.precision": "fp32",
        "synth_dataset.n_one": 300, "synth_dataset.n_two": 300, "synth_dataset.n_complicated": 150,
        "synth_dataset.attributes": ["red", "orange", "yellow", "green", "blue", "purple", "pink", "white"],
        "synth_dataset.contexts": ["on a black background", "on a gray background", "on a navy background",
                                   "on a brown background", "on a teal background"],
        "synth_dataset.sampling.steps": 25, "synth_dataset.sampling.guidance_scale": 5.0,
        "synth_dataset.sampling.batch_size": 50,
        "train_segmenter.segmenter.backbone": "", "train_segmenter.segmenter.fpn_size": 64,
        "train_segmenter.segmenter.d_model": 128, "train_segmenter.segmenter.num_queries": 20,
        "train_segmenter.segmenter.decoder_layers": 3, "train_segmenter.segmenter.decoder_heads": 4,
        "train_segmenter.segmenter.decoder_ffn": 256, "train_segmenter.segmenter.input_size": 64,
        "train_segmenter.segmenter.scale_jitter": [0.75, 1.25], "train_segmenter.segmenter.steps": 4000,
        "train_segmenter.segmenter.batch_size": 16, "train_segmenter.segmenter.lr": 1.0e-3,
        "train_segmenter.segmenter.backbone_lr_mult": 1.0, "train_segmenter.segmenter.warmup_steps": 50,
        "train_segmenter.segmenter.checkpoint_every": 100, "train_segmenter.segmenter.log_every": 20,
        "eval_zs3.batch_size": 64,
        # world_fidelity's shipped bars were measured in bf16; the pipeline's generating stages sample in
        # fp32, which every CPU runs at full speed (bf16 is emulated 35x slower without AVX512-BF16)
        "world_fidelity.sampling.precision": "bf16", "synthesize.sampling.precision": "fp32",
        "eval_grounding.sampling.precision": "fp32", "synth_dataset.sampling.precision": "fp32",
        "distributed.scheduler": "local",  # 2 one-thread workers: both cores, the same bytes
    },
    # Protocol I uses VOC splits 1-3; Protocol II's ZS3Net unseen set is split 0 (`--split 0`).
    "voc": {**_PAPER, "world.name": "voc", "world.split": 1},
    "coco": {**_PAPER, "world.name": "coco", "world.split": 1},
}
assert all(PRESETS[w].keys() == PRESETS["shapes"].keys() for w in PRESETS), "presets must set the same keys"


def _represent_float(representer, value: float):
    """Floats with a dot in the mantissa (1.0e-05, not 1e-05): YAML 1.1 readers such as PyYAML
    take '1e-05' for a string."""
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def apply_preset(params_file: Path, world: str, overrides: dict[str, Any] | None = None) -> list[str]:
    """Rewrite `params_file` with `world`'s preset (plus overrides); returns 'key: old -> new' lines."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    if world not in PRESETS:
        raise ValueError(f"unknown world {world!r}; choose one of {', '.join(PRESETS)}")
    yaml = YAML()  # round-trip: comments and order survive
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(float, _represent_float)
    data = yaml.load(Path(params_file).read_text())
    changes = []
    for key, value in {**PRESETS[world], **(overrides or {})}.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            if part not in node:
                raise KeyError(f"{params_file}: no section {'.'.join(parents)} for {key}")
            node = node[part]
        old = node.get(leaf)
        if old != value:
            if isinstance(value, list):  # lists stay on one line, like the rest of params.yaml
                value = CommentedSeq(value)
                value.fa.set_flow_style()
            node[leaf] = value
            changes.append(f"{key}: {old!r} -> {value!r}")
    with Path(params_file).open("w") as fh:
        yaml.dump(data, fh)
    return changes
