"""Bad input gives one clear error, and outputs already on disk stay as they were.

One test (or parametrized case) per row of the table in docs/errors.md ("Bad input and the error it gives")
that no other test file covers already; the table names the test of every row.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import tiny_params, write_params
from groundiff.core.checkpoint import CheckpointError, load_training_state, read_meta, save_training_state
from groundiff.core.params import ParamsError
from groundiff.data.prompts import read_prompts
from groundiff.data.shards import ShardError, read_shard, write_shard
from groundiff.data.voc import load_label_png, split_ids
from groundiff.worlds.oracle import Detections
from groundiff.method.pseudo_label import PseudoLabelConfig, pseudo_label
from groundiff.stages.common import run_stage
from groundiff.method.synthesis import SynthesisConfig, synthesize
from groundiff.worlds.shapes import CLASSES


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _existing_output(root: Path) -> dict[str, bytes]:
    """Plant an earlier run's output at `root`; returns its bytes, to compare after the error."""
    (root / "shard_00000").mkdir(parents=True)
    (root / "shard_00000" / "meta.csv").write_text("index,prompt,classes,n_objects,seed\n0,a,star,1,0\n")
    (root / "synthesis.json").write_text('{"fingerprint": "earlier"}\n')
    return _files(root)


def _write_shards(root: Path, n: int = 2, size: int = 2) -> None:
    """Real shards with random content: what synthesize writes, without a diffusion model."""
    rng = np.random.default_rng(0)
    for s in range(n):
        index = list(range(s * size, (s + 1) * size))
        meta = pd.DataFrame({"index": index, "prompt": ["a photograph of a star"] * size, "classes": ["star"] * size,
                             "n_objects": [1] * size, "seed": index})
        write_shard(root, s, meta, rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
                    torch.randn(size, 4, 32, 32), torch.full((size,), 21))


class NoDetections:
    """An oracle that finds nothing (pseudo_label's errors come before the oracle matters)."""

    classes = CLASSES

    def detect(self, images):
        return [Detections([], np.zeros(0, np.float32), np.zeros((0, *im.shape[:2]), bool)) for im in images]


# --------------------------------------------------------------------------- stages: params


@pytest.mark.parametrize("section, update, message", [
    ("synth_dataset", {"n_one": 0, "n_two": 0, "n_complicated": 0}, "not all zero"),
    ("synth_dataset", {"n_one": -1}, "must be >= 0"),
    ("synthesize", {"shard_size": 0}, "shard_size must be positive"),
    ("synthesize", {"capture_t": 30}, "capture step t=30 must be in 1..25"),
    ("synthesize", {"sampling": {"steps": 0}}, "steps and batch_size must be positive"),
    ("synthesize", {"sampling": {"guidance_scale": "high"}}, "synthesize.sampling.guidance_scale: expected a number"),
    ("distributed", {"scheduler": "yes"}, "is not one of"),
    ("synth_dataset", {"grounding_dir": "../models/grounding"}, "leaves the project"),
])
def test_bad_params_of_data_stages_fail_before_any_output_is_touched(project, section, update, message):
    from groundiff.stages import synth_dataset, synthesize as synthesize_stage

    stage = {"synth_dataset": synth_dataset, "synthesize": synthesize_stage, "distributed": synthesize_stage}[section]
    before = _existing_output(project / "data/synth/train")
    params = tiny_params()
    params.setdefault(section, {}).update(update)
    write_params(project, params)
    with pytest.raises(ParamsError, match=message):
        stage.main()
    assert _files(project / "data/synth/train") == before


# --------------------------------------------------------------------------- stages: missing models


def _stage_error(main, capsys) -> str:
    """The one `error:` line a stage run as `python -m` prints (exit 2): the library's message plus
    the `dvc repro` that remakes the missing input (`run_stage`)."""
    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


def test_missing_pipeline_is_named_with_the_stage_that_makes_it(project, capsys):
    from groundiff.stages import prompts, synthesize as synthesize_stage

    prompts.main()
    before = _existing_output(project / "data/synth/train")
    assert re.search(r"no diffusers pipeline folder.*; run `dvc repro world_diffusion`$",
                     _stage_error(synthesize_stage.main, capsys))
    (project / "worlds/shapes/diffusion").mkdir(parents=True)  # a folder, but not a pipeline
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        synthesize_stage.main()
    assert _files(project / "data/synth/train") == before


def test_missing_detector_in_the_pseudo_label_stage(project, capsys):
    from groundiff.stages import pseudo_label as stage

    _write_shards(project / "data/synth/train")
    (project / "data/synth/train_labels").mkdir(parents=True)
    (project / "data/synth/train_labels/source.json").write_text("earlier")
    assert _stage_error(stage.main, capsys).endswith("; run `dvc repro world_detector`")
    assert _files(project / "data/synth/train_labels") == {"source.json": b"earlier"}


def test_missing_grounding_module_in_the_synth_dataset_stage(project, capsys):
    from groundiff.stages import synth_dataset as stage

    before = _existing_output(project / "data/synth/segmentation")
    assert _stage_error(stage.main, capsys).endswith("; run `dvc repro train_grounding`")
    assert _files(project / "data/synth/segmentation") == before


# --------------------------------------------------------------------------- input files


def test_empty_prompt_table_and_missing_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,seed\na photograph of a star,1\n")
    with pytest.raises(ValueError, match="not a prompt table"):
        read_prompts(bad)
    empty = pd.DataFrame({"index": [], "prompt": [], "classes": [], "n_objects": [], "seed": []})
    before = _existing_output(tmp_path / "synth")
    with pytest.raises(ValueError, match="prompt table is empty"):
        synthesize(None, empty, SynthesisConfig(), tmp_path / "synth", "tiny")  # fails before the model is used
    assert _files(tmp_path / "synth") == before


def test_shards_that_do_not_exist_are_refused(tmp_path):
    table = pd.DataFrame({"index": range(4), "prompt": ["p"] * 4, "classes": ["star"] * 4, "n_objects": [1] * 4,
                          "seed": range(4)})
    with pytest.raises(ValueError, match=r"shards \[7\] do not exist: the table makes shards 0..1"):
        synthesize(None, table, SynthesisConfig(shard_size=2), tmp_path / "synth", "tiny", shards=[1, 7])
    assert not (tmp_path / "synth").exists()


def test_pseudo_label_before_synthesis(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"synth: no synthesis shards"):
        pseudo_label(NoDetections(), tmp_path / "synth", tmp_path / "labels", PseudoLabelConfig())
    assert not (tmp_path / "labels").exists()


def _save_tiny_detector(project: Path) -> None:
    from groundiff.worlds.oracle import DetectorArch, TorchvisionOracle, build_maskrcnn

    torch.manual_seed(0)
    arch = DetectorArch(classes=CLASSES, widths=(8, 16, 16), fpn_channels=16, input_size=32)
    TorchvisionOracle(build_maskrcnn(arch).eval(), CLASSES, arch=arch).save_pretrained(project / "worlds/shapes/detector")


def test_stages_name_the_stage_that_makes_a_missing_input(project, capsys):
    """The library says what is missing; the stage layer adds the `dvc repro` that makes it."""
    from groundiff.stages import pseudo_label as pseudo_label_stage, synthesize as synthesize_stage

    assert _stage_error(synthesize_stage.main, capsys) == \
        "error: data/prompts/train.csv: no prompt table; run `dvc repro prompts`"
    _save_tiny_detector(project)
    assert _stage_error(pseudo_label_stage.main, capsys) == \
        "error: data/synth/train: no synthesis shards; run `dvc repro synthesize`"
    assert not (project / "data/synth/train_labels").exists()


def test_truncated_latents_file_is_named(tmp_path):
    _write_shards(tmp_path / "synth", n=1)
    latents = tmp_path / "synth/shard_00000/latents.safetensors"
    latents.write_bytes(latents.read_bytes()[:100])
    with pytest.raises(ShardError, match=r"latents.safetensors: unreadable .*delete the shard and rerun"):
        read_shard(tmp_path / "synth/shard_00000")


def test_latents_and_meta_that_disagree(tmp_path):
    _write_shards(tmp_path / "synth", n=1)
    meta = tmp_path / "synth/shard_00000/meta.csv"
    meta.write_text(meta.read_text().replace("\n1,", "\n5,"))
    with pytest.raises(ShardError, match="latents and meta.csv list different samples"):
        read_shard(tmp_path / "synth/shard_00000")


def test_corrupt_png_stops_pseudo_labelling_with_one_line_and_keeps_finished_labels(project, capsys):
    """The stage prints one `error:` line (exit 2); labels of the shards before it stay."""
    from groundiff.stages import pseudo_label as stage

    _write_shards(project / "data/synth/train", n=2)
    _save_tiny_detector(project)
    png = project / "data/synth/train/shard_00001/images/000002.png"
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # (and the progress bar's)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "000002.png: not a readable PNG" in errors[0] and "Traceback" not in err, err
    labels = project / "data/synth/train_labels"
    assert (labels / "shard_00000/labels.csv").is_file() and not (labels / "shard_00001").exists()


def test_missing_split_list_and_non_palette_label(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/val.txt: no such split list"):
        split_ids(tmp_path, "val")
    Image.new("RGB", (4, 4)).save(tmp_path / "label.png")
    with pytest.raises(ValueError, match="expected a palette"):
        load_label_png(tmp_path / "label.png")


def test_truncated_training_state_is_one_clear_error_and_kept(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    state = tmp_path / "state.safetensors"
    save_training_state(state, {"model": model}, {"adam": opt}, {"step": 3})
    assert read_meta(state) == {"step": 3}
    state.write_bytes(state.read_bytes()[:50])
    damaged = state.read_bytes()
    for read in (lambda: read_meta(state), lambda: load_training_state(state, {"model": model}, {"adam": opt})):
        with pytest.raises(CheckpointError, match="unreadable training state .*delete it to start this training"):
            read()
    assert state.read_bytes() == damaged  # not deleted behind the user's back


def test_grounding_module_for_another_unet_fails_before_any_output(tmp_path):
    from groundiff.method.grounding import GroundingConfig, GroundingModule
    from groundiff.method.synth_dataset import SynthDatasetConfig, synth_dataset
    from groundiff.worlds.base import make_split
    from groundiff.testing import tiny_shapes_pipeline

    pipe = tiny_shapes_pipeline()
    other_unet = dict(pipe.unet.config, block_out_channels=(8, 16, 32))
    module = GroundingModule(GroundingConfig.from_unet_config(other_unet, text_dim=16, image_size=32, d_model=32,
                                                              n_heads=2, ffn_dim=64, n_layers=1))
    before = _existing_output(tmp_path / "dataset")
    split = make_split("shapes", CLASSES, ["ring"])
    with pytest.raises(ValueError, match=r"built for another pipeline: feature_channels .*\(train_grounding\)"):
        synth_dataset(pipe, module, split, SynthDatasetConfig(n_one=1, n_two=0, n_complicated=0), tmp_path / "dataset",
                      ["a", "b"])
    assert _files(tmp_path / "dataset") == before


def test_a_model_retrained_in_place_does_not_resume_its_predecessors_shards(tmp_path):
    from groundiff.method.synthesis import model_fingerprint, plan_synthesis

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"old weights")
    old = model_fingerprint(model)
    (model / "weights.safetensors").write_bytes(b"new weights")  # same folder, retrained
    new = model_fingerprint(model)
    assert old != new and old.startswith(f"{model}@")
    assert model_fingerprint("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    table = pd.DataFrame({"index": range(4), "prompt": ["p"] * 4, "classes": ["star"] * 4, "n_objects": [1] * 4,
                          "seed": range(4)})
    cfg = SynthesisConfig(shard_size=2)
    plan_synthesis(table, cfg, tmp_path / "synth", old)
    _write_shards(tmp_path / "synth", n=1)  # made by the old model
    assert plan_synthesis(table, cfg, tmp_path / "synth", old).todo == [1]
    assert plan_synthesis(table, cfg, tmp_path / "synth", new).todo == [0, 1]  # the old shard is not reused
    assert not (tmp_path / "synth/shard_00000").exists()


def tried_through(named: list[list[str]]) -> str:
    """How the named tests meet the bad input, read from their source: `dvc repro`, CLI, the demo
    server, a stage, or the library."""
    import ast

    found = set()
    for file, functions in named:
        source = (Path(__file__).parent / f"{file.strip()}.py").read_text()
        bodies = {n.name: ast.get_source_segment(source, n) for n in ast.walk(ast.parse(source))
                  if isinstance(n, ast.FunctionDef)}
        for function in functions.split(","):
            body = bodies[function.strip()]
            if "_dvc(" in body:
                found.add("`dvc repro`")
            if re.search(r'\bcli\(|\bmain\(\[|"groundiff"|script\), "', body):
                found.add("CLI")
            if "run_stage" in body or "stage.main" in body or "stages." in body:
                found.add("stage")
            if "(served" in body:  # the `groundiff demo` server, through gradio_client or a browser
                found.add("demo")
    found = found or {"library"}
    return ", ".join(w for w in ("`dvc repro`", "CLI", "demo", "stage", "library") if w in found)


def errors_table_rows() -> list[list[str]]:
    """The rows of docs/errors.md's table, cell by cell."""
    doc = (Path(__file__).resolve().parents[1] / "docs/errors.md").read_text()
    section = doc.split("# Bad input and the error it gives", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| bad input")]


def test_the_errors_table_names_a_real_test_for_every_row():
    """Every row names tests that exist, and says truthfully how they try the bad input."""
    rows = errors_table_rows()
    assert len(rows) >= 15
    tests = Path(__file__).parent
    for *_, how, test_cell in rows:
        named = [part.split("::") for part in test_cell.split(";") if "::" in part]
        assert named, f"no test named for: {test_cell}"
        for file, functions in named:
            source = (tests / f"{file.strip()}.py").read_text()
            for function in functions.split(","):
                assert f"def {function.strip()}(" in source, f"{file.strip()} has no {function.strip()}: {test_cell}"
        assert how == tried_through(named), f"row tried through {how!r}, but its tests use {tried_through(named)!r}"
