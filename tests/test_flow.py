"""flows.pipeline on a tiny real git + DVC repository, against a temporary Prefect server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.pipeline import _parse_stage_names, pipeline, select_stages, stage_names

# One script for every stage: logs that it ran, then writes <name>.txt from its input (or, for the
# first stage, from the MLflow parent run id the flow hands down).
STEP = """\
import os, pathlib, sys, time
name, source = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
with open("ran.log", "a") as log:
    log.write(name + "\\n")
if name == "broken":
    sys.exit("broken: failing on purpose")
if source and source.startswith("meet:"):  # run only while the other stage runs too
    other, source = source[5:], None
    pathlib.Path(name + ".started").touch()
    deadline = time.time() + 60
    while not pathlib.Path(other + ".started").exists():
        if time.time() > deadline:
            sys.exit(name + ": " + other + " never ran at the same time")
        time.sleep(0.1)
    time.sleep(0.5)  # both are inside their commands now
text = pathlib.Path(source).read_text() if source else os.environ.get("GROUNDIFF_PARENT_RUN_ID", "-")
pathlib.Path(name + ".txt").write_text(text + "+" + name)
"""

TWO_STAGES = """\
stages:
  first:
    cmd: python step.py first
    deps: [step.py]
    outs: [first.txt]
  second:
    cmd: python step.py second first.txt
    deps: [step.py, first.txt]
    outs: [second.txt]
"""


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session: it takes seconds to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow database: copying it takes no time, creating one takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "GROUNDIFF_PARENT_RUN_ID", "GROUNDIFF_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GROUNDIFF_TRACKING", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def make_repo(path: Path, dvc_yaml: str, params: str | None = None, db: Path | None = None) -> Path:
    """`git init` + `dvc init` in path, with step.py, dvc.yaml (and params.yaml, mlflow.db)."""
    path.mkdir()
    if db is not None:
        shutil.copy(db, path / "mlflow.db")
    (path / "step.py").write_text(STEP)
    (path / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
    if params is not None:
        (path / "params.yaml").write_text(params)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    return path


def mlflow_runs(repo: Path) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("groundiff")
    return {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])}


def test_stage_names_match_dvc_for_foreach_and_matrix(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """\
        stages:
          zeta:
            cmd: echo z
          synth:
            foreach: ${worlds}
            do:
              cmd: echo ${item}
          grid:
            matrix:
              lr: [0.1, 1]
              opt: [{name: adam}, true]
            cmd: echo grid
          eval:
            foreach:
              seen: {a: 1}
              unseen: {a: 2}
            do:
              cmd: echo ${item.a}
        """, params="worlds: [shapes, voc]\n")
    expected = ["zeta", "synth@shapes", "synth@voc", "grid@0.1-opt0", "grid@0.1-true",
                "grid@1-opt0", "grid@1-true", "eval@seen", "eval@unseen"]
    assert stage_names(repo / "dvc.yaml") == expected  # what `dvc stage list` says
    assert _parse_stage_names(repo / "dvc.yaml") == expected  # the fallback agrees with DVC
    # a foreach group stands for its stages; the selection comes back in dvc.yaml order
    assert select_stages(repo / "dvc.yaml", ["eval", "zeta"]) == ["zeta", "eval@seen", "eval@unseen"]


@pytest.mark.slow
def test_pipeline_runs_stages_in_order_then_is_up_to_date(tmp_path: Path, prefect_server: None,
                                                         empty_db: Path) -> None:
    repo = make_repo(tmp_path / "repo", TWO_STAGES, db=empty_db)

    assert pipeline(repo=str(repo)) == ["first", "second"]

    assert (repo / "ran.log").read_text() == "first\nsecond\n"
    parent_id, _ = (repo / "second.txt").read_text().split("+", 1)
    assert (repo / "second.txt").read_text() == f"{parent_id}+first+second"
    parent = mlflow_runs(repo)[parent_id]  # the stages saw the flow's MLflow run as their parent
    assert parent.info.run_name == "prefect pipeline" and parent.info.status == "FINISHED"

    assert pipeline(repo=str(repo)) == ["first", "second"]  # nothing changed: DVC skips both
    assert (repo / "ran.log").read_text() == "first\nsecond\n"
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True)
    assert "up to date" in status.stdout


@pytest.mark.slow
def test_failing_stage_raises_after_its_retry(tmp_path: Path, prefect_server: None, empty_db: Path) -> None:
    repo = make_repo(tmp_path / "repo", """\
        stages:
          broken:
            cmd: python step.py broken
        """, db=empty_db)
    with pytest.raises(RuntimeError, match="failing on purpose"):
        pipeline(repo=str(repo))
    assert (repo / "ran.log").read_text() == "broken\nbroken\n"  # first try + one retry
    [parent] = mlflow_runs(repo).values()
    assert parent.info.status == "FAILED"


@pytest.mark.slow
def test_two_lanes_run_independent_stages_at_the_same_time(tmp_path: Path, prefect_server: None,
                                                           empty_db: Path) -> None:
    # left and right each wait (up to 60 s) for the other to have started: one lane would fail.
    repo = make_repo(tmp_path / "repo", """\
        stages:
          left:
            cmd: python step.py left meet:right
            deps: [step.py]
            outs: [left.txt]
          right:
            cmd: python step.py right meet:left
            deps: [step.py]
            outs: [right.txt]
          join:
            cmd: python step.py join left.txt && python step.py join2 right.txt
            deps: [step.py, left.txt, right.txt]
            outs: [join.txt, join2.txt]
        """, db=empty_db)

    assert pipeline(repo=str(repo), lanes=2) == ["left", "right", "join"]

    ran = (repo / "ran.log").read_text().split()
    assert sorted(ran[:2]) == ["left", "right"] and ran[2:] == ["join", "join2"]  # join waited for both
    assert (repo / "join2.txt").read_text().endswith("+right+join2")
    # both lanes wrote dvc.lock: every stage is recorded, and DVC finds nothing to do
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True, check=False)
    assert "up to date" in status.stdout, status.stdout
    [parent] = [r for r in mlflow_runs(repo).values() if r.info.run_name == "prefect pipeline"]
    assert parent.info.status == "FINISHED"


def test_unknown_stage_is_named_with_the_known_ones(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", TWO_STAGES)
    assert select_stages(repo / "dvc.yaml") == ["first", "second"]
    assert select_stages(repo / "dvc.yaml", ["second"]) == ["second"]
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['thrid'\].*first, second"):
        select_stages(repo / "dvc.yaml", ["thrid"])
