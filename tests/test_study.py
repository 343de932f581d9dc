"""`groundiff study`: studies.yaml's loader, and a tiny seed study run as real DVC experiments.

The slow half builds a git + DVC copy of the project (real dvc.yaml and stages, tiny params) whose
real_all reference is trained and whose synthetic variants are stand-in outputs DVC knows, then runs
a two-seed study through `dvc exp run --queue` on two workers, with MLflow tracking on.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, tiny_params
from groundiff.app.study import (Run, Study, StudyError, check_study, load_studies, markdown, parse_study,
                                 run_study, summarize)
from groundiff.core.tracking import study_context

BIN = Path(sys.executable).parent
GOOD = {"description": "Seed spread", "split": "dev", "variants": ["C", "real_all"], "seeds": [0, 1],
        "grid": {}, "reference": "real_all"}


# --------------------------------------------------------------------------- the studies file


def test_the_shipped_studies_file_loads_and_fits_params_yaml():
    studies = load_studies(ROOT / "studies.yaml")
    assert studies["seeds"].variants == ("C", "D", "E", "real_all") and studies["seeds"].seeds == (0, 1, 2, 3, 4)
    for study in studies.values():
        targets = check_study(study, ROOT, ROOT / "studies.yaml")
        assert targets[-1] == "eval_zs3"


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.pop("variants"), "studies.yaml: seeds: missing 'variants'"),
    (lambda b: b.update(seed=[0]), "studies.yaml: seeds: unknown key(s) seed; a study has:"),
    (lambda b: b.update(variants=[]), "studies.yaml: seeds.variants: a non-empty list of variant names"),
    (lambda b: b.update(variants=["C", "C"]), "seeds.variants: ['C', 'C'] names a variant twice"),
    (lambda b: b.update(seeds=[0, -1]), "seeds.seeds: a non-empty list of seeds (integers >= 0)"),
    (lambda b: b.update(seeds=[1, 1]), "seeds.seeds: [1, 1] lists a seed twice"),
    (lambda b: b.update(split="test"), "seeds.split: 'test' is not one of val, dev"),
    (lambda b: b.update(grid={"train_segmenter.segmenter.lr": 0.001}),
     "seeds.grid.train_segmenter.segmenter.lr: a non-empty list of values"),
    (lambda b: b.update(grid={"train_segmenter.segmenter.seed": [1, 2]}),
     "train_segmenter.segmenter.seed is set by the study itself"),
    (lambda b: b.update(set={"tracking.study": "x"}), "tracking.study is set by the study itself"),
    (lambda b: b.update(reference="D"), "seeds.reference: 'D' is not among the study's variants"),
    (lambda b: b.update(description=""), "seeds.description: one line saying what the study measures"),
], ids=["no-variants", "unknown-key", "empty-variants", "variant-twice", "negative-seed", "seed-twice",
        "bad-split", "grid-not-list", "grid-sets-seed", "set-tracking", "reference-not-run", "no-description"])
def test_a_mistake_in_a_study_is_one_line_naming_the_key(edit, message):
    body = json.loads(json.dumps(GOOD))
    edit(body)
    with pytest.raises(StudyError, match=re.escape(message)):
        parse_study("seeds", body)


def test_a_study_name_must_name_experiments_and_files():
    with pytest.raises(StudyError, match="a study name is lower case letters, digits and _"):
        parse_study("Seeds 2", GOOD)


def test_a_study_is_checked_against_params_yaml_before_anything_is_queued(project):
    (project / "studies.yaml").write_text(yaml.safe_dump({
        "typo": {**GOOD, "grid": {"train_segmenter.segmenter.lrr": [0.1]}},
        "unknown_variant": {**GOOD, "variants": ["C", "F"], "reference": None},
        "bad_value": {**GOOD, "grid": {"eval_zs3.background": ["ignore", "nope"]}},
        "unknown_stage": {**GOOD, "stages": ["synth_dataset", "synth"]},
    }))
    studies = load_studies(project / "studies.yaml")
    path = project / "studies.yaml"
    with pytest.raises(StudyError, match="typo: params.yaml has no key train_segmenter.segmenter.lrr"):
        check_study(studies["typo"], project, path)
    with pytest.raises(StudyError, match=r"unknown_variant.variants: F not in params.yaml train_segmenter.variants"):
        check_study(studies["unknown_variant"], project, path)
    with pytest.raises(StudyError, match=r"bad_value: eval_zs3.background=nope make an invalid params.yaml: "
                                         r"params.yaml: eval_zs3: background: 'nope' is not one of"):
        check_study(studies["bad_value"], project, path)
    with pytest.raises(StudyError, match="unknown_stage.stages: synth not in dvc.yaml"):
        check_study(studies["unknown_stage"], project, path)


def test_every_grid_point_runs_once_per_seed_under_a_git_safe_name():
    study = parse_study("lr", {**GOOD, "grid": {"train_segmenter.segmenter.lr": [0.001, 0.0003],
                                                "eval_zs3.appearance": ["real", "grey_background"]}})
    runs = study.runs()
    assert len(runs) == 2 * 2 * 2 and len({r.name for r in runs}) == 8
    assert runs[0].name == "lr-lr0.001-appearancereal-s0"
    assert runs[0].label == "train_segmenter.segmenter.lr=0.001,eval_zs3.appearance=real"
    assert runs[0].overrides(study) == {"train_segmenter.segmenter.seed": 0, "eval_zs3.split": "dev",
                                        "eval_zs3.variants": ["C", "real_all"],
                                        "train_segmenter.segmenter.lr": 0.001, "eval_zs3.appearance": "real"}
    for run in runs:
        assert subprocess.run(["git", "check-ref-format", f"refs/exps/{run.name}"]).returncode == 0


def test_the_summary_is_mean_sd_and_share_of_the_reference():
    study = Study("s", "d", ("C", "real_all"), seeds=(0, 1, 2), reference="real_all")
    hiou = {("C", 0): 40.0, ("C", 1): 44.0, ("C", 2): 48.0, ("real_all", 0): 60.0, ("real_all", 1): 62.0,
            ("real_all", 2): 64.0}
    rows = [{"experiment": f"s-s{seed}", "variant": v, "seed": seed, "point": {}, "point_label": "",
             "seconds_per_step": None if seed == 0 else 0.2 + 0.1 * seed,  # seed 0: its trainer came from the cache
             "metrics": {"hiou": h, "miou_seen": h + 10, "miou_unseen": h - 10}} for (v, seed), h in hiou.items()]
    summary = {s["variant"]: s for s in summarize(study, rows)}
    assert summary["C"]["hiou"] == {"mean": 44.0, "sd": 4.0} and summary["C"]["n"] == 3
    assert summary["C"]["share_of_reference"] == round(44.0 / 62.0, 4)
    assert summary["real_all"]["share_of_reference"] == 1.0
    text = markdown(study, {"summary": summarize(study, rows), "runs": rows, "runs_done": ["s-s0", "s-s1", "s-s2"],
                            "runs_missing": [], "baseline": "abcdef0"})
    assert "| C | 3 | 44.0 ± 4.0 | 54.0 ± 4.0 | 34.0 ± 4.0 | 0.71 | 0.350 ± 0.071 |" in text  # s/step of seeds 1, 2
    assert "| 1 | `s-s1` | 44.0 / 54.0 / 34.0 | 62.0 / 72.0 / 52.0 |" in text


def test_stage_runs_of_a_study_experiment_are_tagged_from_its_params(tmp_path):
    params = tiny_params()
    params["tracking"] = {"study": "seeds", "parent_run_id": "0123e4", "point": ""}
    params["train_segmenter"]["segmenter"]["seed"] = 3
    params["eval_zs3"].update(split="dev", variants=["C", "real_all"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    parent, tags = study_context("train_segmenter@C", tmp_path / "params.yaml")
    assert parent == "0123e4"
    assert tags == {"groundiff.study": "seeds", "groundiff.seed": "3", "groundiff.split": "dev", "groundiff.variant": "C",
                    **({"groundiff.dvc_experiment": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {})}
    assert study_context("eval_zs3", tmp_path / "params.yaml")[1]["groundiff.variant"] == "C,real_all"
    params["tracking"]["study"] = ""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert study_context("eval_zs3", tmp_path / "params.yaml") == (None, {})


# --------------------------------------------------------------------------- a real study


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GROUNDIFF_TRACKING": "0", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stderr[-2000:]}"
    return done


def _stand_in(repo: Path, stage: str, outs: dict[str, str]) -> None:
    """Outputs a stage would write, committed to DVC without running it (the study never runs it)."""
    for rel, text in outs.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _dvc(repo, "commit", "-f", stage)


@pytest.fixture(scope="module")
def study_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC project: real_all trained (2 steps), A-E, real_seen and synth_dataset as stand-ins,
    eval_zs3 run on val; a study `tiny` (real_all, seeds 0-1, dev) in studies.yaml; all committed."""
    repo = copy_project(tmp_path_factory.mktemp("study"))
    params = tiny_params()
    params["world_data"].update(n_train=12, n_val=6, n_dev=6)
    params["train_segmenter"]["segmenter"].update(steps=2, batch_size=2, warmup_steps=1, log_every=1)
    params["eval_zs3"].update(variants=["real_all"], figure_images=2, batch_size=8)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "repro", "train_reference@real_all")
    _stand_in(repo, "synth_dataset", {"models/grounding/x": "", "data/synth/segmentation/x": "",
                                      "metrics/synth_dataset.json": "{}"})
    for v in ("A", "B", "C", "D", "E", "real_seen"):
        stage = "train_reference@real_seen" if v == "real_seen" else f"train_segmenter@{v}"
        _stand_in(repo, stage, {f"models/segmenter/{v}/x": v, f"metrics/train_segmenter/{v}.json": "{}",
                                f"metrics/train_segmenter/{v}_loss.csv": "step,loss\n"})
    _dvc(repo, "repro", "--single-item", "eval_zs3")
    (repo / "studies.yaml").write_text(yaml.safe_dump({"tiny": {
        "description": "Tiny seed study", "split": "dev", "variants": ["real_all"], "seeds": [0, 1],
        "reference": "real_all"}}))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny project"], cwd=repo, check=True)
    return repo


@pytest.fixture(scope="module")
def ran(study_repo: Path) -> dict:
    """`groundiff study tiny -j 2` run once, tracking on (MLflow at <repo>/mlflow.db)."""
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROUNDIFF_TRACKING", "1")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("GROUNDIFF_PARENT_RUN_ID", raising=False)
        result = run_study("tiny", study_repo, jobs=2, poll_s=2, echo=lines.append)
    return {"result": result, "lines": lines}


def _shown(repo: Path) -> dict[str, dict]:
    """name -> the experiment's data, read straight from `dvc exp show --json`."""
    out = {}
    for baseline in json.loads(_dvc(repo, "exp", "show", "--json").stdout):
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            out[rev["name"]] = rev["data"]
    return out


@pytest.mark.slow
def test_the_report_holds_the_experiments_metrics(study_repo, ran):
    result, shown = ran["result"], _shown(study_repo)
    assert result["runs_done"] == ["tiny-s0", "tiny-s1"] and not result["runs_missing"]
    assert len(result["runs"]) == 2
    for row in result["runs"]:
        data = shown[row["experiment"]]
        assert data["params"]["params.yaml"]["data"]["train_segmenter"]["segmenter"]["seed"] == row["seed"]
        assert data["params"]["params.yaml"]["data"]["eval_zs3"]["split"] == "dev"
        metrics = data["metrics"]["metrics/zs3.json"]["data"]["real_all"]
        assert row["metrics"] == {k: metrics[k] for k in ("hiou", "miou_seen", "miou_unseen", "per_class")}
    unseen = [shown[f"tiny-s{s}"]["metrics"]["metrics/zs3.json"]["data"]["real_all"]["miou_unseen"] for s in (0, 1)]
    (summary,) = result["summary"]
    assert summary["miou_unseen"]["mean"] == round(sum(unseen) / 2, 4) and summary["n"] == 2
    on_disk = json.loads((study_repo / "reports/studies/tiny.json").read_text())
    assert on_disk["runs"] == result["runs"] and on_disk["summary"] == result["summary"]
    text = (study_repo / "reports/studies/tiny.md").read_text()
    assert "| real_all | 2 |" in text and "| 1 | `tiny-s1` |" in text
    assert any("2/2 finished (0 failed)" in line for line in ran["lines"]), ran["lines"]


@pytest.mark.slow
def test_a_seed_experiment_runs_only_the_study_stages(study_repo, ran):
    ran_stages = {}
    for name in ("tiny-s0", "tiny-s1"):
        log = _dvc(study_repo, "queue", "logs", name).stdout
        ran_stages[name] = re.findall(r"Running stage '([^']+)'", log)
    # seed 0 is params.yaml's seed: its trainer is unchanged and comes from the cache; seed 1 retrains it
    assert ran_stages == {"tiny-s0": ["eval_zs3"], "tiny-s1": ["train_reference@real_all", "eval_zs3"]}
    shown = _shown(study_repo)
    base = json.loads((study_repo / "metrics/train_segmenter/real_all.json").read_text())
    s0 = shown["tiny-s0"]["metrics"]["metrics/train_segmenter/real_all.json"]["data"]
    s1 = shown["tiny-s1"]["metrics"]["metrics/train_segmenter/real_all.json"]["data"]
    assert s0["final_loss"] == base["final_loss"] and s1["final_loss"] != base["final_loss"]


@pytest.mark.slow
def test_mlflow_holds_every_stage_run_tagged_under_one_study_parent(study_repo, ran):
    parent = ran["result"]["mlflow"]["parent_run_id"]
    assert parent
    with sqlite3.connect(study_repo / "mlflow.db") as db:
        tags = {}
        for run, key, value in db.execute("select run_uuid, key, value from tags"):
            tags.setdefault(run, {})[key] = value
        hiou = {run: value for run, value in db.execute(
            "select run_uuid, value from latest_metrics where key = 'real_all.hiou'")}
    study_runs = {r: t for r, t in tags.items() if t.get("groundiff.study") == "tiny" and r != parent}
    assert tags[parent]["groundiff.kind"] == "study"
    assert {t["mlflow.parentRunId"] for t in study_runs.values()} == {parent}
    assert sorted((t["groundiff.stage"], t["groundiff.seed"]) for t in study_runs.values()) == [
        ("eval_zs3", "0"), ("eval_zs3", "1"), ("train_reference@real_all", "1")]
    for run, t in study_runs.items():
        assert t["groundiff.split"] == "dev" and t["groundiff.variant"] == "real_all"
        assert t["groundiff.dvc_experiment"] == f"tiny-s{t['groundiff.seed']}"
        if t["groundiff.stage"] == "eval_zs3":
            row = next(r for r in ran["result"]["runs"] if r["seed"] == int(t["groundiff.seed"]))
            assert hiou[run] == pytest.approx(row["metrics"]["hiou"])


@pytest.mark.slow
def test_running_the_study_again_queues_nothing(study_repo, ran):
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROUNDIFF_TRACKING", "1")
        again = run_study("tiny", study_repo, jobs=2, poll_s=2, echo=lines.append)
    assert "2 done, 0 already queued, 0 to queue" in lines[0], lines
    assert not any(line.startswith("queued ") for line in lines)
    assert again["runs"] == ran["result"]["runs"]
    assert again["mlflow"]["parent_run_id"] == ran["result"]["mlflow"]["parent_run_id"]


@pytest.mark.slow
def test_a_dry_run_prints_the_commands_and_untracked_code_stops_a_real_run(study_repo, ran):
    good = (study_repo / "studies.yaml").read_text()
    studies = yaml.safe_load(good)
    studies["more"] = {**studies["tiny"], "seeds": [1, 2]}
    (study_repo / "studies.yaml").write_text(yaml.safe_dump(studies))
    probe = study_repo / "src/groundiff/untracked_probe.py"
    probe.write_text("")
    lines: list[str] = []
    try:
        assert run_study("more", study_repo, dry_run=True, echo=lines.append) is None
        with pytest.raises(StudyError, match="git does not track src/groundiff/untracked_probe.py: a queued DVC "
                                             "experiment holds only git's files"):
            run_study("more", study_repo, echo=lines.append)
    finally:
        probe.unlink()
        (study_repo / "studies.yaml").write_text(good)
    assert "more: 2 run(s) (1 point(s) x 2 seed(s)); 0 done, 0 already queued, 2 to queue" in lines[0]
    assert lines[1] == "note: git does not track src/groundiff/untracked_probe.py; `git add` them before a real run"
    assert lines[2].startswith("dvc exp run --queue -n more-s1 -S train_segmenter.segmenter.seed=1 "
                               "-S 'eval_zs3.split=\"dev\"' -S 'eval_zs3.variants=[\"real_all\"]' -S 'tracking.study=\"more\"'")
    assert lines[2].endswith("--single-item train_reference@real_all eval_zs3")
    assert "more-s1" not in _dvc(study_repo, "queue", "status").stdout
