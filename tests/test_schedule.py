"""A Prefect schedule that fires: `prefect server start` + `python -m flows.pipeline serve`, as users run them.

What is real here: a Prefect server process on 127.0.0.1 (private PREFECT_HOME), the serve process
the docs give (`python -m flows.pipeline serve --interval ...`), the server's scheduler creating the
flow runs, the serve process running them, DVC running the stages, MLflow recording them. What is
shrunk: the project (the real dvc.yaml and src/, the tests' tiny params, the stages up to `prompts`)
and the schedule (every 10 s; the scheduler and the serve process poll every 1-2 s instead of 60
and 10, settings below). Every process is wrapped in `timeout`, so it ends by itself even if
pytest is killed, and is stopped in `finally`.

Overlapping runs are skipped (flows.lock says why): a run that starts while another holds the
project ends at once in state "Skipped", naming the other run; tested with a stage held open.
The browser test (marker `browser`) opens the Prefect UI in Debian's chromium on the deployment
that the schedule test served.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, free_port, stop_process_group, tiny_params, write_params
from flows.lanes import stage_graph
from flows.lock import LOCK_FILE, project_lock

SERVER_LIFETIME_S = 900  # `timeout` ends the server and the serve processes after this, whatever happens
RUN_TIMEOUT_S = 240  # the longest a test waits for the runs it expects
INTERVAL_S = 10  # the schedule of the tiny project's deployment
DEPLOYMENT = "groundiff-every-10s"
SCREENSHOTS = ROOT / "docs" / "figures"  # where GROUNDIFF_WRITE_SCREENSHOTS=1 puts the browser test's views

# Server and serve-process settings that make a 10-second schedule fire within seconds in a test.
FAST_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # the scheduler looks for work every 2 s (60)
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT60S",  # keep >= 1 min of runs ahead (1 h)
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "10",  # ... but no more than 10 (100)
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # serve asks the server for due runs every second (10)
    # No "Late" marking: under load its writes every 5 s met "database is locked" in the server's SQLite.
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def _env(home: Path, api: str | None = None, tracking: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(FAST_PREFECT, PREFECT_HOME=str(home), DVC_NO_ANALYTICS="1", GROUNDIFF_TRACKING=str(int(tracking)),
               OMP_NUM_THREADS="1")
    for name in ("MLFLOW_TRACKING_URI", "GROUNDIFF_PARENT_RUN_ID", "GROUNDIFF_EXPERIMENT"):
        env.pop(name, None)
    if api:
        env["PREFECT_API_URL"] = api
    return env


@contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """`cmd` under `timeout`, in its own process group; SIGTERM (then SIGKILL) to the group on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["timeout", str(SERVER_LIFETIME_S), *cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc, timeout=30)  # SIGTERM first: serve pauses its schedule and ends its runs


@dataclass
class Prefect:
    """A running Prefect server: its REST API, read with the standard library."""

    api: str
    home: Path
    log: Path

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    def call(self, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def deployment(self, name: str) -> dict | None:
        try:
            return self.call(f"/deployments/name/groundiff-pipeline/{name}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def flow_runs(self, deployment_id: str) -> list[dict]:
        return self.call("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}},
                                               "sort": "EXPECTED_START_TIME_ASC", "limit": 200})

    def logs(self, flow_run_id: str) -> str:
        rows = self.call("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                          "sort": "TIMESTAMP_ASC", "limit": 200})
        return "\n".join(row["message"] for row in rows)


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: Callable[[], str]) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what`, with the serve log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}; serve log:\n{logs()[-6000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prefect]:
    """`prefect server start` on a free 127.0.0.1 port, PREFECT_HOME in tmp; stopped after the module."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    server = Prefect(f"http://127.0.0.1:{port}/api", home, home / "server.log")
    prefect_exe = Path(sys.executable).parent / "prefect"
    env = {**_env(home), "PREFECT_SERVER_UI_API_URL": server.api}  # the UI's pages call this port, not 4200
    with _process([str(prefect_exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  server.log, env) as proc:
        def up() -> bool:
            assert proc.poll() is None, f"prefect server exited:\n{server.log.read_text()[-4000:]}"
            try:
                return server.call("/health") is True
            except OSError:
                return False

        wait_for("the Prefect server to answer", up, 180, server.log.read_text)
        yield server


@contextmanager
def serving(prefect: Prefect, repo: Path, name: str, stages: list[str], interval: float,
            tracking: bool = True) -> Iterator[Path]:
    """The docs' `python -m flows.pipeline serve` for `repo`, every `interval` s; yields its log."""
    log = prefect.home / f"serve-{name}.log"
    cmd = [sys.executable, "-m", "flows.pipeline", "serve", "--interval", str(interval), "--name", name,
           "--repo", str(repo), "--stages", *stages]
    with _process(cmd, log, _env(prefect.home, prefect.api, tracking)) as proc:
        def registered() -> dict | None:
            assert proc.poll() is None, f"serve exited:\n{log.read_text()}"
            return prefect.deployment(name)

        wait_for(f"deployment {name} to be registered", registered, 120, log.read_text)
        yield log


def _state(run: dict) -> tuple[str, str]:
    return run["state"]["type"], run["state"]["name"]


def _no_failures(prefect: Prefect, runs: list[dict], log: Path) -> None:
    for run in runs:
        if _state(run)[0] in {"FAILED", "CRASHED", "CANCELLED"}:
            pytest.fail(f"flow run {run['name']} ended {_state(run)}:\n{prefect.logs(run['id'])}\n"
                        f"serve log:\n{log.read_text()[-4000:]}")


# --------------------------------------------------------------------------- projects


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow database: copying it takes no time, creating one takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def tiny_project(path: Path, db: Path) -> Path:
    """The real pipeline shrunk: dvc.yaml, src/ (DVC hashes it) and tiny params in a git + DVC repo."""
    path.mkdir()
    write_params(path, tiny_params())
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(ROOT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(db, path / "mlflow.db")
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    return path


def upstream_closure(repo: Path, stage: str) -> list[str]:
    """`stage` and every stage it reads from, in dvc.yaml order (what `dvc repro stage` would run)."""
    nodes = stage_graph(repo)
    needed, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += nodes[name].upstream
    return [name for name in nodes if name in needed]


HOLD = """\
import pathlib, sys, time
with open("ran.log", "a") as log:
    log.write("hold\\n")
pathlib.Path("hold.started").touch()
deadline = time.time() + 180
while not pathlib.Path("release").exists():  # held open until the test says so
    if time.time() > deadline:
        sys.exit("hold: never released")
    time.sleep(0.1)
pathlib.Path("hold.txt").write_text("held\\n")
"""


def held_project(path: Path) -> Path:
    """A git + DVC repo whose one stage, `hold`, runs until the file `release` exists."""
    path.mkdir()
    (path / "hold.py").write_text(HOLD)
    (path / "dvc.yaml").write_text("stages:\n  hold:\n    cmd: python hold.py\n    deps: [hold.py]\n"
                                   "    outs: [hold.txt]\n")
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    return path


def mlflow_runs(repo: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("groundiff")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


# --------------------------------------------------------------------------- the lock, without Prefect


def test_the_project_lock_admits_one_run_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    repo = held_project(tmp_path / "repo")
    with project_lock(repo, "run A") as busy:
        assert busy is None
        with project_lock(repo, "run B") as other:
            assert other is not None and other.startswith(f"another pipeline run holds {repo / LOCK_FILE}")
            assert "run A, pid " in other
    with project_lock(repo, "run C") as busy:  # released at the end of the block
        assert busy is None
    # A holder killed with SIGKILL leaves no stale lock: the kernel drops it with the process.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        from flows.lock import project_lock
        with project_lock({str(repo)!r}, "doomed run") as busy:
            print(busy, flush=True)
            time.sleep(120)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "None"
        with project_lock(repo, "run D") as busy:
            assert busy is not None and f"doomed run, pid {holder.pid}" in busy
        holder.kill()
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with project_lock(repo, "run E") as busy:
        assert busy is None


def test_a_dvc_command_running_a_stage_makes_the_project_busy(tmp_path: Path) -> None:
    repo = held_project(tmp_path / "repo")
    dvc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "hold"], cwd=repo,
                           env={**os.environ, "DVC_NO_ANALYTICS": "1"}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for("dvc to start the stage", (repo / "hold.started").exists, 60, lambda: "")
        with project_lock(repo, "flow run") as busy:
            assert busy is not None and f"a dvc command is running a stage in {repo} (pid {dvc.pid}: " in busy
        (repo / "release").touch()
        assert dvc.wait(timeout=60) == 0
    finally:
        dvc.kill()
        dvc.wait()
    with project_lock(repo, "flow run") as busy:  # the stage ended: free again
        assert busy is None


# --------------------------------------------------------------------------- schedules


@pytest.mark.slow
def test_a_scheduled_run_that_fires_while_another_runs_is_skipped_with_one_clear_line(
        prefect: Prefect, tmp_path: Path) -> None:
    repo = held_project(tmp_path / "held")
    with serving(prefect, repo, "held-open", ["hold"], 5, tracking=False) as log:  # MLflow: the next test
        deployment = prefect.deployment("held-open")
        wait_for("a scheduled run to start the held stage", (repo / "hold.started").exists, RUN_TIMEOUT_S,
                 log.read_text)
        holder = json.loads((repo / LOCK_FILE).read_text())["holder"]  # "flow run <name> (<id>)"
        running_id = holder.rsplit("(", 1)[1].rstrip(")")

        def skipped() -> list[dict]:
            runs = prefect.flow_runs(deployment["id"])
            _no_failures(prefect, runs, log)
            return [r for r in runs if _state(r) == ("COMPLETED", "Skipped")]

        [first, *_] = wait_for("a run that fires meanwhile to be skipped", skipped, RUN_TIMEOUT_S, log.read_text)
        message = first["state"]["message"]
        assert message.startswith(f"skipped: another pipeline run holds {repo / LOCK_FILE} ({holder}, pid ")
        assert message.endswith("; the next run does whatever is still out of date")
        assert first["auto_scheduled"]
        # the one warning line (Prefect ships run logs to the server in batches: wait for it)
        wait_for("the skip warning in the run's logs",
                 lambda: "skipped: another pipeline run holds" in prefect.logs(first["id"]), 60, log.read_text)
        assert (repo / "ran.log").read_text() == "hold\n"  # the stage did not start twice
        assert not (repo / "hold.txt").exists()

        (repo / "release").touch()

        def held_run_done() -> dict | None:
            runs = prefect.flow_runs(deployment["id"])
            _no_failures(prefect, runs, log)
            return next((r for r in runs if r["id"] == running_id and _state(r)[0] == "COMPLETED"), None)

        wait_for("the held run to complete", held_run_done, RUN_TIMEOUT_S, log.read_text)
    assert (repo / "ran.log").read_text() == "hold\n"
    assert (repo / "hold.txt").read_text() == "held\n"
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr


@dataclass
class Scheduled:
    """What the schedule test saw, for the browser test to find in the UI."""

    deployment: dict
    first: dict  # the first scheduled run that ran the stages
    second: dict  # the next one that ran (found them up to date)
    skipped: list[dict]  # runs that fired while another held the project


@pytest.fixture(scope="module")
def scheduled(prefect: Prefect, tmp_path_factory: pytest.TempPathFactory, empty_db: Path) -> Iterator[Scheduled]:
    """The tiny project served every 10 s until the module ends; waits for two runs that ran."""
    repo = tiny_project(tmp_path_factory.mktemp("scheduled") / "project", empty_db)
    stages = upstream_closure(repo, "prompts")
    with serving(prefect, repo, DEPLOYMENT, stages, INTERVAL_S) as log:
        deployment = prefect.deployment(DEPLOYMENT)

        def ran(after: str = "") -> dict | None:
            runs = prefect.flow_runs(deployment["id"])
            _no_failures(prefect, runs, log)
            done = [r for r in runs if _state(r) == ("COMPLETED", "Completed") and r["start_time"] > after]
            return min(done, key=lambda r: r["start_time"], default=None)

        first = wait_for("a scheduled run to complete", ran, RUN_TIMEOUT_S, log.read_text)
        lock_after_first = (repo / "dvc.lock").read_text()
        prompts_mtime = (repo / "data/prompts/train.csv").stat().st_mtime_ns
        second = wait_for("a second scheduled run to complete", lambda: ran(first["end_time"]), RUN_TIMEOUT_S,
                          log.read_text)
        runs = prefect.flow_runs(deployment["id"])
        skipped = [r for r in runs if _state(r) == ("COMPLETED", "Skipped")]
        assert (repo / "dvc.lock").read_text() == lock_after_first  # the second run changed nothing
        assert (repo / "data/prompts/train.csv").stat().st_mtime_ns == prompts_mtime
        yield Scheduled(deployment, first, second, skipped)


@pytest.mark.slow
def test_the_schedule_fires_runs_the_stages_and_the_next_run_finds_them_up_to_date(
        prefect: Prefect, scheduled: Scheduled) -> None:
    first, second = scheduled.first, scheduled.second
    assert first["auto_scheduled"] and second["auto_scheduled"]  # the scheduler made them, not the test
    assert scheduled.deployment["schedules"][0]["schedule"]["interval"] == INTERVAL_S
    repo = Path(first["parameters"]["repo"])
    stages = first["parameters"]["stages"]
    assert stages[-1] == "prompts"

    # The first run ran every stage and DVC recorded them.
    # Prefect ships run logs to the server in batches: wait for the last stage's line
    first_log = wait_for("the first run's logs", lambda: (text := prefect.logs(first["id"]))
                         and f"Running stage '{stages[-1]}'" in text and text, 60, lambda: "")
    for stage in stages:
        assert f"Running stage '{stage}'" in first_log, first_log
    lock = (repo / "dvc.lock").read_text()
    assert all(f"\n  {stage}:\n" in lock for stage in stages), lock
    status = subprocess.run([sys.executable, "-m", "dvc", "status", *stages], cwd=repo, capture_output=True,
                            text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    assert len((repo / "data/prompts/train.csv").read_text().splitlines()) == tiny_params()["prompts"]["n"] + 1

    # ... under one MLflow parent run per flow run; the second run's stages were up to date.
    second_log = wait_for("the second run's logs", lambda: (text := prefect.logs(second["id"]))
                          and f"Stage '{stages[-1]}' didn't change, skipping" in text and text, 60, lambda: "")
    for stage in stages:
        assert f"Stage '{stage}' didn't change, skipping" in second_log, second_log
        assert f"Running stage '{stage}'" not in second_log
    runs = mlflow_runs(repo)
    parents = {r.info.run_id: r for r in runs if r.info.run_name == "prefect pipeline"}
    ids = [line.split("MLflow parent run ")[1].split()[0] for line in (first_log, second_log)]
    assert set(ids) <= set(parents) and all(parents[i].info.status == "FINISHED" for i in ids)
    children = {i: [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == i] for i in ids}
    assert "prompts" in children[ids[0]], children  # the stage's own run, under the flow run's parent
    assert children[ids[1]] == [], children  # nothing ran, nothing recorded

    # A run that fired while another held the project was skipped, naming the holder (often the case at
    # a 10 s interval; the held-stage test above makes it certain).
    for run in scheduled.skipped:
        assert run["state"]["message"].startswith("skipped: another pipeline run holds"), run["state"]


# --------------------------------------------------------------------------- the UI, in a browser


@pytest.mark.slow
@pytest.mark.browser
def test_the_deployment_its_schedule_and_the_completed_run_show_in_the_prefect_ui(
        prefect: Prefect, scheduled: Scheduled, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `apt-get install chromium` (.ci/run installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{prefect.ui}/deployments")  # the list: our deployment, with its schedule
            row = page.get_by_role("row").filter(has_text=DEPLOYMENT)
            expect(row).to_contain_text(f"Every {INTERVAL_S} seconds")

            page.goto(f"{prefect.ui}/deployments/deployment/{scheduled.deployment['id']}")
            expect(page.get_by_text(f"Every {INTERVAL_S} seconds").first).to_be_visible()
            expect(page.get_by_text("Ready", exact=True).first).to_be_visible()  # a serve process polls it
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "deployment.png"))
            page.get_by_placeholder("Search by run name").fill(scheduled.first["name"])  # among the newer runs
            expect(page.get_by_role("link", name=scheduled.first["name"])).to_be_visible()

            page.goto(f"{prefect.ui}/runs/flow-run/{scheduled.first['id']}")
            expect(page.get_by_text(scheduled.first["name"]).first).to_be_visible()
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
            expect(page.get_by_text("auto-scheduled").first).to_be_visible()
            expect(page.get_by_text("Running stage 'prompts'").first).to_be_visible()  # its log, as DVC wrote it
            page.screenshot(path=str(tmp_path / "flow_run.png"))
        finally:
            browser.close()
    if os.environ.get("GROUNDIFF_WRITE_SCREENSHOTS") == "1":  # refresh the docs' screenshots
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "deployment.png", SCREENSHOTS / "prefect_deployment.png")
        shutil.copy(tmp_path / "flow_run.png", SCREENSHOTS / "prefect_flow_run.png")
