"""groundiff.core.tracking against a real SQLite store in a temp project root (no server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import shutil
from pathlib import Path

import pytest

from conftest import tracking_project
from groundiff.core import tracking


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project (dvc.yaml only) as cwd, tracking on, no inherited MLflow settings."""
    tracking_project(tmp_path, monkeypatch)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the root is found upwards from cwd
    return tmp_path


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow database: copying it takes no time, creating one takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracked(root: Path, empty_db: Path) -> Path:
    """`root` with an empty MLflow database where tracking_uri() expects it."""
    shutil.copy(empty_db, root / "mlflow.db")
    return root


def client_for(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_uris_are_absolute_and_under_the_project_root(root: Path) -> None:
    assert tracking.tracking_uri() == f"sqlite:///{root.resolve()}/mlflow.db"
    assert tracking.artifact_root() == (root.resolve() / "mlruns").as_uri()


def test_env_tracking_uri_wins(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def test_root_of_a_dvc_experiment_workspace_is_the_repository(tmp_path: Path, monkeypatch) -> None:
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    (workspace / "dvc.yaml").write_text("")
    monkeypatch.chdir(workspace)
    assert tracking.project_root() == tmp_path.resolve()


def test_flatten_params() -> None:
    flat = tracking.flatten_params({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": {}, "long": "x" * 7000})
    assert flat["a.b.c"] == "1"
    assert flat["a.d"] == "[1, 2]"
    assert flat["e"] == "{}"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")


def test_stage_runs_nest_under_the_pipeline_run(tracked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tracked / "sub" / "preview.txt").write_text("hello")
    with tracking.pipeline_run("prefect pipeline") as parent_id:
        with tracking.stage_run("prompts", {"prompts": {"n": 8, "classes": ["cat", "dog"]}},
                                parent_run_id=parent_id) as run:
            run.log_metrics({"rows": 8, "share": 0.25})
            run.log_metric("loss", 1.5, step=3)
            run.log_artifact("preview.txt")

        # The second stage runs on a worker thread, as in a Prefect task: MLflow's active run is
        # thread-local, so only the env var (or argument) can nest it.
        monkeypatch.setenv("GROUNDIFF_PARENT_RUN_ID", parent_id)

        def second_stage() -> str:
            with tracking.stage_run("synthesize", {"seed": 0}) as run:
                run.set_tags({"shard": 3})
                return run.run_id

        with ThreadPoolExecutor(1) as pool:
            second_id = pool.submit(second_stage).result()

    assert (tracked / "mlflow.db").is_file()
    client = client_for(tracked)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["groundiff.kind"] == "pipeline"
    first = client.get_run(run.run_id)
    second = client.get_run(second_id)
    assert [first.info.run_name, second.info.run_name] == ["prompts", "synthesize"]
    for child in (first, second):
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.info.status == "FINISHED"
    assert first.data.params == {"prompts.n": "8", "prompts.classes": "['cat', 'dog']"}
    assert first.data.metrics == {"rows": 8.0, "share": 0.25, "loss": 1.5}
    assert first.data.tags["groundiff.stage"] == "prompts"
    assert second.data.tags["shard"] == "3"
    assert [s.step for s in client.get_metric_history(run.run_id, "loss")] == [3]
    artifacts = list((tracked / "mlruns").rglob("preview.txt"))
    assert len(artifacts) == 1 and artifacts[0].read_text() == "hello"
    assert len(client.search_runs([first.info.experiment_id])) == 3  # no stray top-level runs


def test_plain_dvc_repro_stages_share_a_parent_and_failures_are_recorded(tracked: Path) -> None:
    with tracking.stage_run("prompts", {"n": 1}) as ok:
        pass
    with pytest.raises(ValueError, match="boom"):
        with tracking.stage_run("world_data", {"n": 2}) as failed:
            raise ValueError("boom")

    client = client_for(tracked)
    ok_run, failed_run = client.get_run(ok.run_id), client.get_run(failed.run_id)
    assert ok_run.info.status == "FINISHED"
    assert failed_run.info.status == "FAILED"
    parent_id = ok_run.data.tags["mlflow.parentRunId"]
    assert failed_run.data.tags["mlflow.parentRunId"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "dvc repro @ unknown"  # tmp_path is not a git repository
    assert parent.data.tags["groundiff.kind"] == "pipeline"
    assert parent.info.status == "FAILED"  # mirrors the latest stage


def test_a_failing_pipeline_block_marks_the_parent_failed(tracked: Path) -> None:
    with pytest.raises(RuntimeError):
        with tracking.pipeline_run() as parent_id:
            raise RuntimeError("stage failed")
    assert client_for(tracked).get_run(parent_id).info.status == "FAILED"


def test_disabled_tracking_records_nothing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDIFF_TRACKING", "off")
    assert not tracking.enabled()
    with tracking.pipeline_run() as parent_id:
        with tracking.stage_run("prompts", {"a": {"b": 1}}, parent_run_id=parent_id) as run:
            run.log_metrics({"x": 1.0}, step=2)
            run.log_metric("y", 2.0)
            run.log_artifact("missing.txt")
            run.log_artifacts("missing_dir")
            run.log_figure("missing.png")
            run.set_tags({"t": 1})
    assert parent_id is None and run.run_id is None
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()
    assert not (root / "sub" / "mlflow.db").exists()
