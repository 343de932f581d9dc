"""`groundiff mlflow-import` on a fresh clone: the committed metrics of the shipped run, as git holds them
(HEAD's metrics/, dvc.lock), imported into a real SQLite store in a temp checkout, nothing mocked."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from groundiff.app import mlflow_import
from groundiff.app.mlflow_import import ShippedResultsMissing, import_shipped
from groundiff.core import tracking

GIT = ["git", "-c", "user.email=test@groundiff", "-c", "user.name=test"]

# A study result in `groundiff study`'s format (reports/studies/<name>.json), three seeds of C and D. The hIoU
# values are the seed study's measured ones (reports/segmenter_seeds.md at commit 593698c, written by the
# former benchmarks/segmenter_seeds.py).
SEED_HIOU = {"C": [59.2, 60.2, 58.4], "D": [67.6, 65.5, 58.2]}


def seed_study(seeds: int = 3) -> dict:
    rows = [{"experiment": f"seeds-s{s}", "rev": f"{s:07d}", "timestamp": "2026-12-05T00:00:00", "variant": v,
             "seed": s, "split": "val", "point": {}, "point_label": "", "metrics": {"hiou": SEED_HIOU[v][s]}}
            for s in range(seeds) for v in SEED_HIOU]
    summary = [{"point": {}, "point_label": "", "variant": v, "n": seeds, "seeds": list(range(seeds)),
                "hiou": {"mean": round(sum(SEED_HIOU[v][:seeds]) / seeds, 4), "sd": None}} for v in SEED_HIOU]
    return {"study": "seeds", "description": "segmenter seeds", "split": "val", "variants": list(SEED_HIOU),
            "seeds": list(range(seeds)), "runs": rows, "summary": summary}


def git(root: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def shipped_checkout(dest: Path, only: tuple[str, ...] = (), study: dict | None = None) -> Path:
    """A git checkout at `dest` holding HEAD's committed dvc.lock and metrics/ (those of `only` if given,
    e.g. ("metrics/zs3.json",)), and `study` as reports/studies/seeds.json, committed."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to build a checkout")
    dest.mkdir(parents=True, exist_ok=True)
    files = [f for f in git(ROOT, "ls-files", "dvc.lock", "metrics").splitlines() if not only or f in only
             or f == "dvc.lock"]
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True,
                                                check=True).stdout)
    (dest / "dvc.yaml").write_text("")
    if study is not None:
        (dest / "reports/studies").mkdir(parents=True)
        (dest / "reports/studies/seeds.json").write_text(json.dumps(study, indent=2))
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "shipped results")
    return dest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "GROUNDIFF_PARENT_RUN_ID", "GROUNDIFF_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, mlflow_import.ImportResult]:
    """The whole shipped run and a seed study, imported once into a fresh checkout's store."""
    root = shipped_checkout(tmp_path_factory.mktemp("clone") / "groundiff", study=seed_study())
    return root, import_shipped(root)


def client_for(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_a_fresh_clone_gets_one_tagged_group_a_child_per_stage(imported) -> None:
    root, result = imported
    assert result.action == "imported"
    assert result.tracking_uri == f"sqlite:///{root.resolve() / 'mlflow.db'}"  # the pipeline's own store
    client = client_for(root)
    parent = client.get_run(result.parent_run_id)
    commit = git(root, "log", "-1", "--format=%H", "--", "dvc.lock")
    assert parent.info.run_name == f"shipped results @ {commit[:7]}"
    assert parent.data.tags["groundiff.source"] == "shipped"
    assert parent.data.tags["mlflow.source.git.commit"] == commit
    assert parent.info.status == "FINISHED"
    children = {r.info.run_name: r for r in client.search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")}
    lock = __import__("yaml").safe_load((root / "dvc.lock").read_text())["stages"]
    with_metrics = {s for s, e in lock.items() if any(o["path"].startswith("metrics/") for o in e.get("outs", []))}
    assert with_metrics <= set(children), with_metrics - set(children)
    assert all(r.data.tags["groundiff.source"] == "shipped" for r in children.values())

    # eval_zs3 and eval_grounding's numbers, named as those stages log them; the parent row shows them too
    zs3 = json.loads((root / "metrics/zs3.json").read_text())
    protocol1 = json.loads((root / "metrics/protocol1.json").read_text())
    for variant, row in zs3.items():
        assert children["eval_zs3"].data.metrics[f"{variant}.hiou"] == row["hiou"]
        assert parent.data.metrics[f"{variant}.miou_unseen"] == row["miou_unseen"]
    assert children["eval_grounding"].data.metrics["ours_one_unseen"] == protocol1["ours"]["one_unseen"]
    assert parent.data.metrics["ours_two_seen"] == protocol1["ours"]["two_seen"]
    assert "C.iou_star" not in parent.data.metrics  # the parent carries the headline only

    # a stage's params are the ones dvc.lock recorded for it
    seg = children["train_segmenter@C"]
    locked = lock["train_segmenter@C"]["params"]["params.yaml"]
    assert seg.data.params == tracking.flatten_params(locked)
    assert seg.data.metrics["steps"] == json.loads((root / "metrics/train_segmenter/C.json").read_text())["steps"]

    # the loss log is a step series: first and last step kept, thinned to MAX_STEPS
    with open(root / "metrics/train_segmenter/C_loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    history = sorted(client.get_metric_history(seg.info.run_id, "loss"), key=lambda m: m.step)
    assert len(history) == min(len(rows), mlflow_import.MAX_STEPS)
    assert (history[0].step, history[0].value) == (int(rows[0]["step"]), float(rows[0]["loss"]))
    assert (history[-1].step, history[-1].value) == (int(rows[-1]["step"]), float(rows[-1]["loss"]))
    assert "shipped/C_loss.csv" in {f.path for f in client.list_artifacts(seg.info.run_id, "shipped")}


def test_a_study_becomes_a_parent_with_a_run_per_experiment_tagged_seed_and_split(imported) -> None:
    root, result = imported
    client = client_for(root)
    (study,) = client.search_runs([result.experiment_id], "tags.`groundiff.kind` = 'shipped_study'")
    assert study.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert study.data.tags["groundiff.study"] == "seeds"
    assert study.data.metrics["C.hiou_mean"] == pytest.approx(sum(SEED_HIOU["C"]) / 3, abs=1e-4)
    runs = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{study.info.run_id}'")
    assert sorted(r.info.run_name for r in runs) == ["seeds-s0", "seeds-s1", "seeds-s2"]
    for run in runs:
        seed = int(run.data.tags["groundiff.seed"])
        assert run.data.tags["groundiff.split"] == "val"
        assert run.data.tags["groundiff.variant"] == "C,D"
        assert run.data.metrics == {"C.hiou": SEED_HIOU["C"][seed], "D.hiou": SEED_HIOU["D"][seed]}


def test_the_experiment_is_tagged_for_model_training_and_its_view_shows_the_headline(imported) -> None:
    root, result = imported
    tags = client_for(root).get_experiment(result.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    state = json.loads(json.loads(tags[tracking.VIEW_TAG_PREFIX + tracking.VIEW_KEY])["state"])
    zs3 = json.loads((root / "metrics/zs3.json").read_text())
    for variant in zs3:
        assert f"metrics.`{variant}.hiou`" in state["selectedColumns"]
    assert "metrics.`C.hiou_mean`" in state["selectedColumns"]  # the study's mean, from its parent
    assert "metrics.`ours_one_unseen`" in state["selectedColumns"]
    assert "metrics.`loss`" not in state["selectedColumns"]
    assert result.url.endswith(f"/#/experiments/{result.experiment_id}/runs?workflowType=machine_learning"
                               f"&viewStateShareKey={tracking.VIEW_KEY}")


def test_importing_again_skips_the_same_files_and_replaces_changed_ones(tmp_path: Path) -> None:
    root = shipped_checkout(tmp_path / "clone", only=("metrics/zs3.json", "metrics/protocol1.json"))
    first = import_shipped(root)
    assert (first.action, first.runs) == ("imported", 3)  # parent, eval_zs3, eval_grounding
    again = import_shipped(root)
    assert (again.action, again.parent_run_id) == ("skipped", first.parent_run_id)
    client = client_for(root)
    assert len(client.search_runs([first.experiment_id])) == 3  # nothing duplicated

    zs3 = json.loads((root / "metrics/zs3.json").read_text())  # a newer run is committed
    zs3["C"]["hiou"] = round(zs3["C"]["hiou"] + 1.5, 4)
    (root / "metrics/zs3.json").write_text(json.dumps(zs3))
    (root / "dvc.lock").write_text((root / "dvc.lock").read_text() + "# rewritten by the newer run\n")
    git(root, "commit", "-qam", "a newer run")
    replaced = import_shipped(root)
    assert (replaced.action, replaced.deleted) == ("replaced", 3)
    live = client.search_runs([first.experiment_id])
    assert len(live) == 3 and replaced.parent_run_id != first.parent_run_id
    assert client.get_run(first.parent_run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(replaced.parent_run_id).data.metrics["C.hiou"] == zs3["C"]["hiou"]
    name = client.get_run(replaced.parent_run_id).info.run_name
    assert name == f"shipped results @ {git(root, 'rev-parse', 'HEAD')[:7]}"  # the newer run's dvc.lock


def test_the_pipelines_own_runs_are_never_touched(tmp_path: Path) -> None:
    root = shipped_checkout(tmp_path / "clone", only=("metrics/protocol1.json",))
    with tracking.pipeline_run("dvc repro", root=root) as own:
        pass
    import_shipped(root)
    import_shipped(root, force=True)  # replaces the shipped group only
    assert client_for(root).get_run(own).info.lifecycle_stage == "active"


def test_no_metrics_is_one_clear_error_from_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "dvc.yaml").write_text("")
    with pytest.raises(ShippedResultsMissing, match=r"metrics holds no \*\.json"):
        import_shipped(tmp_path)
    assert not (tmp_path / "mlflow.db").exists()  # nothing created on the way
    from groundiff.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["mlflow-import"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("groundiff: error:") and "groundiff checkout" in err and len(err.splitlines()) == 1


def test_a_damaged_metrics_file_is_named(tmp_path: Path) -> None:
    root = shipped_checkout(tmp_path / "clone", only=("metrics/zs3.json",))
    (root / "metrics/zs3.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics/zs3\.json is not valid JSON .*git checkout -- metrics/zs3\.json"):
        import_shipped(root)


def test_metric_names_are_the_stages_own() -> None:
    """The import names zs3.json and protocol1.json's numbers as eval_zs3 and eval_grounding log them."""
    from groundiff.eval.protocol1 import flat_metrics as protocol1_flat
    from groundiff.eval.zs3 import flat_metrics as zs3_flat

    zs3 = json.loads((ROOT / "metrics/zs3.json").read_text())
    protocol1 = json.loads((ROOT / "metrics/protocol1.json").read_text())
    assert mlflow_import._metric_names(Path("metrics/zs3.json"), zs3) == zs3_flat(zs3)
    assert mlflow_import._metric_names(Path("metrics/protocol1.json"), protocol1) == protocol1_flat(protocol1)


def test_the_cli_prints_how_to_open_the_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    root = shipped_checkout(tmp_path / "clone", only=("metrics/protocol1.json",))
    monkeypatch.chdir(root)
    from groundiff.cli import main

    main(["mlflow-import"])
    main(["mlflow-import"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("imported 2 shipped runs into sqlite:///")
    assert out[1] == (f"browse: mlflow ui --backend-store-uri sqlite:///{root.resolve()}/mlflow.db "
                      f"--default-artifact-root {root.resolve()}/mlruns")
    assert out[2].startswith("then open http://127.0.0.1:5000/#/experiments/")
    assert out[3].startswith("already imported (same files; --force re-imports): 2 shipped runs")

