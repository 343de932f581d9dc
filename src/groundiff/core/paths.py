"""Where every artefact of the pipeline lives, relative to the project root: the one list that
dvc.yaml's deps and outs name (tests/test_dvc_truth.py checks the two agree).

World-dependent locations are functions of the world's name (`shapes`, `voc`, `coco`).
"""

from __future__ import annotations

from pathlib import Path

def looks_like_hub_id(source: str) -> bool:
    """'runwayml/stable-diffusion-v1-5' is a hub id; './models/sd', 'models/sd/' or an existing
    folder is a local path."""
    return (source.count("/") == 1 and not source.startswith((".", "/")) and not source.endswith("/")
            and not Path(source).exists())


PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")

# --- the world --------------------------------------------------------------------------------


def world_dir(world: str) -> Path:
    """The world's models: `diffusion/`, `detector/`, `sources.json` (shapes: shipped in git)."""
    return Path("worlds") / world


def world_sources(world: str) -> Path:
    return world_dir(world) / "sources.json"


def world_diffusion(world: str) -> Path:
    return world_dir(world) / "diffusion"


def world_detector(world: str) -> Path:
    return world_dir(world) / "detector"


def world_state(world: str, name: str) -> Path:
    """Resumable training state of a world model while it trains (deleted once it is saved)."""
    return world_dir(world) / "state" / name


def real_data(world: str) -> Path:
    """The world's real labelled data, VOC layout (world_data)."""
    return Path("data") / world / "real"


def dev_data(world: str) -> Path:
    """The world's dev split: held-out train images, every class labelled, VOC layout (world_data)."""
    return Path("data") / world / "dev"


# --- the paper's method -----------------------------------------------------------------------

VALIDATED = Path("reports/validate.json")  # validate: params.yaml checked (the gate every stage is behind)
PROMPTS = Path("data/prompts/train.csv")
SYNTH_TRAIN = Path("data/synth/train")  # synthesize: images + capture-step latents, in shards
SYNTH_LABELS = Path("data/synth/train_labels")  # pseudo_label: the oracle's masks
GROUNDING = Path("models/grounding")  # train_grounding: the grounding module
GROUNDING_STATE = Path("models/grounding_state")
SYNTH_SEGMENTATION = Path("data/synth/segmentation")  # synth_dataset: Protocol II's training data
SEGMENTERS = Path("models/segmenter")  # train_segmenter@<variant>/
SEGMENTER_STATE = Path("models/segmenter_state")

# --- metrics, plots and reports ---------------------------------------------------------------

METRICS = Path("metrics")
REPORTS = Path("reports")
FIGURES = REPORTS / "figures"


def metrics(stage: str) -> Path:
    """`metrics/<stage>.json`."""
    return METRICS / f"{stage}.json"


def loss_plot(stage: str) -> Path:
    """`metrics/<stage>_loss.csv`: a training stage's loss curve (a DVC plot)."""
    return METRICS / f"{stage}_loss.csv"


SEGMENTER_METRICS = METRICS / "train_segmenter"  # <variant>.json and <variant>_loss.csv
PROTOCOL1_DETAILS = METRICS / "protocol1_details.json"
WORLD_FIDELITY_TABLE = REPORTS / "world_fidelity.md"
WORLD_FIDELITY_GRID = FIGURES / "world_fidelity_samples.png"
WORLD_BINDING_REPORT = REPORTS / "world_binding.md"
WORLD_DATA_PREVIEW = FIGURES / "world_data_val.png"
PROTOCOL1_TABLE = REPORTS / "protocol1.md"
PROTOCOL1_GRID = FIGURES / "protocol1_overlays.png"
ZS3_TABLE = REPORTS / "zs3.md"
ZS3_FIGURE = FIGURES / "zs3_predictions.png"
REPORT = REPORTS / "report.md"
RESULTS_PAGE = Path("docs/results.md")  # report: the user's results page (generated)
README = Path("README.md")  # its results block is rewritten by `python -m groundiff.stages.report --readme`
