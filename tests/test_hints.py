"""The application edge names the `dvc repro` that remakes a missing input, found in dvc.yaml's outs."""

from __future__ import annotations

from pathlib import Path

import pytest

from groundiff.app.hints import producing_stage, with_remake_hint
from groundiff.stages.common import run_stage


def test_the_producing_stage_comes_from_dvc_yaml(project):
    assert producing_stage("models/grounding: no trained grounding module") == "train_grounding"
    assert producing_stage("/abs/path/data/synth/train: no synthesis shards") == "synthesize"
    assert producing_stage("data/synth/train_labels: no pseudo-labels") == "pseudo_label"  # longest match
    assert producing_stage("models/segmenter/real_all: missing") == "train_reference@real_all"
    assert producing_stage("worlds/shapes/detector: no detector here") == "world_detector"
    assert producing_stage("something else entirely") is None


def test_a_message_with_a_command_is_left_alone(project):
    assert with_remake_hint("x; run `dvc repro prompts`") == "x; run `dvc repro prompts`"
    assert with_remake_hint("data/prompts/train.csv: gone") == "data/prompts/train.csv: gone; run `dvc repro prompts`"


def test_no_dvc_yaml_no_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert with_remake_hint("models/grounding: missing") == "models/grounding: missing"


def test_run_stage_adds_the_hint_to_file_errors_only(project, capsys):
    def missing():
        raise FileNotFoundError("models/grounding: no trained grounding module")

    def bad_value():
        raise ValueError("models/grounding: a value error mentioning an output")

    with pytest.raises(SystemExit) as exit_:
        run_stage(missing)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: models/grounding: no trained grounding module; run `dvc repro train_grounding`")
    with pytest.raises(SystemExit):
        run_stage(bad_value)
    assert "dvc repro" not in capsys.readouterr().err


def test_an_output_is_matched_as_a_whole_path():
    """A module imported to models/grounding-official is not train_grounding's output."""
    from groundiff.app.hints import producing_stage

    root = Path(__file__).resolve().parents[1]
    assert producing_stage("no trained grounding module in models/grounding (missing config.json)",
                           root / "dvc.yaml") == "train_grounding"
    assert producing_stage("no trained grounding module in models/grounding-official (missing config.json)",
                           root / "dvc.yaml") is None
