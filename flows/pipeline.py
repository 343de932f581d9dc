"""Prefect flow that runs the DVC pipeline stage by stage, under one MLflow parent run.

Prefect does not re-implement stages: each task is `dvc repro --single-item <stage>`, so dvc.lock
stays the record of what was built and an unchanged stage is skipped by DVC. Prefect adds
scheduling, retries, logs and a UI; MLflow groups the stages' runs under one "prefect pipeline"
parent whose id reaches each stage as env `GROUNDIFF_PARENT_RUN_ID`.

With `--lanes N` independent stages run at the same time, N at most (flows.lanes: DVC's DAG,
critical path first). DVC allows it: it releases its repository lock while a stage's command
runs, and each task waits for the lock (`--wait-for-lock`) when another holds it briefly. The
stages' outputs are the same bytes as a serial run: every stage pins its torch threads.

Usage (from the project root):
    python -m flows.pipeline                         # all stages, now; a temporary Prefect server
    python -m flows.pipeline --stages prompts world_data
    python -m flows.pipeline --force                 # re-run stages even if DVC says up to date
    python -m flows.pipeline --lanes 2               # independent stages side by side (2 cores)
    python -m flows.pipeline serve --cron "0 3 * * *"  # deployment "groundiff-nightly" (cron in UTC)
    python -m flows.pipeline serve --interval 3600 --name groundiff-hourly

`serve` needs a running server (`prefect server start`, then PREFECT_API_URL): a temporary one
accepts the deployment but never schedules it. The runs start from this process, in --repo.
One run at a time per project: a run that starts while another (or a `dvc` command running a
stage) busies the project is skipped, in state "Skipped" with one warning naming the other
(flows.lock: why skip and not wait). docs/scheduling.md has the tested setup.

Environment:
    PREFECT_HOME     where Prefect keeps its database and settings (default ~/.prefect)
    PREFECT_API_URL  use a running Prefect server (`prefect server start`) instead of a temporary one
    PREFECT_SERVER_ANALYTICS_ENABLED is set to false here unless you set it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from itertools import product
from pathlib import Path
from typing import Any

# Before importing prefect: its settings are read at import.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Completed, State  # noqa: E402

from flows.lanes import LanePlanner, lane_widths, stage_graph  # noqa: E402
from flows.lock import project_lock  # noqa: E402
from groundiff.core import tracking  # noqa: E402

DEFAULT_CRON = "0 3 * * *"  # serve's schedule: nightly, 03:00 UTC
OUTPUT_LINES_KEPT = 200  # dvc output returned by run_stage; the last 40 go into error messages
ERROR_TAIL_LINES = 40


def _env(parent_run_id: str | None = None) -> dict[str, str]:
    """This process's env, with this interpreter's bin dir first on PATH and the parent run id.

    The PATH entry makes `dvc` and the stages' `python -m groundiff.stages.x` resolve to this
    virtualenv even when the flow was started without activating it (cron, a service manager).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")  # stage output reaches the Prefect log as it happens
    if parent_run_id:
        env[tracking.PARENT_ENV] = parent_run_id
    return env


def _dvc(env: Mapping[str, str]) -> str:
    exe = shutil.which("dvc", path=env.get("PATH"))
    if exe is None:
        raise FileNotFoundError(
            f"dvc not found on PATH or next to {sys.executable}: "
            "install the project with `pip install -e .` (it depends on dvc)."
        )
    return exe


# --------------------------------------------------------------------------- stage names


def stage_names(dvc_yaml: Path | str) -> list[str]:
    """Stage names in dvc.yaml order, `foreach`/`matrix` stages expanded as DVC names them.

    Asks `dvc stage list --name-only` (the truth); parses the YAML only where dvc cannot answer
    (dvc missing, or the folder is not a DVC repository yet).
    """
    dvc_yaml = Path(dvc_yaml).resolve()
    if not dvc_yaml.is_file():
        raise FileNotFoundError(f"{dvc_yaml} not found: pass the project's dvc.yaml (or run from its root).")
    env = _env()
    try:
        listed = subprocess.run(
            [_dvc(env), "stage", "list", "--name-only", dvc_yaml.name],
            cwd=dvc_yaml.parent, env=env, capture_output=True, text=True, check=True,
        )
    except (FileNotFoundError, subprocess.CalledProcessError):
        return _parse_stage_names(dvc_yaml)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def _parse_stage_names(dvc_yaml: Path) -> list[str]:
    """Fallback for `stage_names`: DVC's naming rules applied to the YAML (see dvc.parsing)."""
    data = yaml.safe_load(dvc_yaml.read_text()) or {}
    variables = _vars(dvc_yaml.parent, data.get("vars"))
    names: list[str] = []
    for name, stage in (data.get("stages") or {}).items():
        if "foreach" in stage:
            names += [f"{name}@{key}" for key in _foreach_keys(_resolve(stage["foreach"], variables, name))]
        elif "matrix" in stage:
            axes = {k: _resolve(v, variables, name) for k, v in stage["matrix"].items()}
            names += [f"{name}@{key}" for key in _matrix_keys(axes)]
        else:
            names.append(name)
    return names


def _vars(folder: Path, declared: Any) -> dict[str, Any]:
    """params.yaml (DVC's default vars) merged with inline `vars:` mappings."""
    params = folder / "params.yaml"
    variables = dict(yaml.safe_load(params.read_text()) or {}) if params.is_file() else {}
    for entry in declared or []:
        if isinstance(entry, Mapping):
            variables.update(entry)
    return variables


def _resolve(value: Any, variables: Mapping[str, Any], stage: str) -> Any:
    """`${a.b}` looked up in the vars; anything else returned as is."""
    match = re.fullmatch(r"\$\{\s*([^}]+?)\s*\}", value) if isinstance(value, str) else None
    if match is None:
        return value
    node: Any = variables
    for part in match.group(1).split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"stage {stage!r}: {value} is not in params.yaml or the stage's vars")
        node = node[part]
    return node


def _key(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _is_composite(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple))


def _foreach_keys(iterable: Any) -> list[str]:
    if isinstance(iterable, Mapping):
        return [_key(k) for k in iterable]
    if any(map(_is_composite, iterable)):  # a list of dicts/lists is keyed by index
        return [str(i) for i in range(len(iterable))]
    return [_key(v) for v in iterable]


def _matrix_keys(axes: Mapping[str, Sequence[Any]]) -> list[str]:
    labelled = [[f"{axis}{i}" if _is_composite(v) else _key(v) for i, v in enumerate(values)]
                for axis, values in axes.items()]
    return ["-".join(combination) for combination in product(*labelled)]


def select_stages(dvc_yaml: Path, stages: Sequence[str] | None = None) -> list[str]:
    """`stages` checked against dvc.yaml, else all; in dvc.yaml order, a foreach group name like
    `synth` expanded into its stages (`synth@shapes`, ...), as `dvc repro synth` would run them.

    Checked before anything runs, so a typo fails in a second, not after an hour of earlier stages.
    """
    known = stage_names(dvc_yaml)
    if not stages:
        return known
    groups = {name.split("@", 1)[0] for name in known}
    unknown = [s for s in stages if s not in known and s not in groups]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in {dvc_yaml}; it has: {', '.join(known)}")
    return [name for name in known if name in stages or name.split("@", 1)[0] in stages]


# --------------------------------------------------------------------------- task and flow


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="dvc repro {stage}")
def run_stage(stage: str, repo: str, parent_run_id: str | None = None, force: bool = False,
              one_thread: bool = False) -> str:
    """`dvc repro --single-item <stage>` in repo, its output streamed to the Prefect log.

    Returns the last lines of dvc's output; raises with them when dvc fails. No Prefect cache
    (NO_CACHE): DVC decides whether the stage is up to date, from dvc.lock. `one_thread` sets
    OMP_NUM_THREADS=1 (unless set) for stages sharing the cores with others: two multi-threaded
    processes on the same cores slow each other down many times over.
    """
    logger = get_run_logger()
    env = _env(parent_run_id)
    if one_thread:
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [_dvc(env), "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), stage]
    logger.info("$ %s  (in %s)", shlex.join(["dvc", *cmd[1:]]), repo)
    kept: deque[str] = deque(maxlen=OUTPUT_LINES_KEPT)
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                kept.append(line)
        proc.wait()
    except BaseException:  # cancelled or interrupted: don't leave dvc running (and holding its lock)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if proc.returncode != 0:
        tail = "\n".join(list(kept)[-ERROR_TAIL_LINES:])
        raise RuntimeError(f"`dvc repro --single-item {stage}` exited with {proc.returncode} in {repo}; "
                           f"last lines of its output:\n{tail}")
    return "\n".join(kept)


@flow(name="groundiff-pipeline")
def pipeline(stages: list[str] | None = None, repo: str = ".", force: bool = False,
             lanes: int = 1) -> list[str] | State:
    """Run `stages` (default: all of dvc.yaml) in DVC's DAG order, `lanes` at a time; return their names.

    One MLflow run "prefect pipeline" is the parent of every stage's run. A stage that still fails
    after its retry stops the flow: no stage starts after it, the running ones finish, then its
    error is raised. While another pipeline run (or a `dvc` command running a stage) busies the
    project, the run is skipped: state "Skipped" (a kind of Completed), a warning naming the other
    run, no stage started, and `[]` for a direct call (flows.lock: why skip rather than wait).
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    with project_lock(root, holder=f"flow run {flow_run.name} ({flow_run.id})") as busy:
        if busy is not None:  # overlapping runs: skip, don't wait (flows.lock says why)
            message = f"skipped: {busy}; the next run does whatever is still out of date"
            logger.warning(message)
            return Completed(name="Skipped", message=message, data=[])
        selected = select_stages(root / "dvc.yaml", stages)
        nodes = stage_graph(root)
        planner = LanePlanner(nodes, selected, lanes, lane_widths(nodes, _vars(root, None)))
        logger.info("stages: %s (%d lane%s)", ", ".join(selected), lanes, "" if lanes == 1 else "s")
        with tracking.pipeline_run("prefect pipeline", root=root,
                                   tags={"groundiff.launcher": "prefect"}) as parent_id:
            if parent_id:
                logger.info("MLflow parent run %s in %s", parent_id, tracking.tracking_uri(root))
            _run_planned(planner, root, parent_id, force, logger)
    return selected


def _run_planned(planner: LanePlanner, root: Path, parent_id: str | None, force: bool, logger) -> None:
    """Submit the planner's stages as Prefect tasks as lanes free up; raise the first failure."""
    running: dict[Future, tuple[str, Any]] = {}  # the thread's future -> (stage, its PrefectFuture)
    started: dict[str, float] = {}
    failure: BaseException | None = None
    t0 = time.monotonic()
    while not planner.done:
        if failure is None:
            for stage in planner.start():
                logger.info("start %s (lanes busy: %d of %d)", stage, planner.busy, planner.lanes)
                started[stage] = time.monotonic()
                future = run_stage.submit(stage, str(root), parent_run_id=parent_id, force=force,
                                          one_thread=planner.lanes > 1)
                running[future.wrapped_future] = (stage, future)
        if not running:
            break
        finished, _ = wait_futures(list(running), return_when=FIRST_COMPLETED)
        for wrapped in finished:
            stage, future = running.pop(wrapped)
            planner.finished(stage)
            logger.info("%s ended after %s (pipeline at %s)", stage, _clock(time.monotonic() - started[stage]),
                        _clock(time.monotonic() - t0))
            try:
                future.result()  # raises the task's error
            except BaseException as err:  # noqa: BLE001  (re-raised below, once the others stop)
                if failure is None:
                    failure = err
                    dropped = planner.cancel()
                    logger.error("%s failed; not starting %s", stage, ", ".join(dropped) or "anything else")
    if failure is not None:
        raise failure


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["run", "serve"], default="run",
                        help="run the pipeline now (default), or serve a scheduled deployment")
    parser.add_argument("--stages", nargs="+", metavar="STAGE",
                        help="stages to run, in DVC's DAG order (default: all); their upstream stages are taken as built")
    parser.add_argument("--repo", default=str(tracking.project_root()), help="project root (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="re-run stages even if DVC says they are up to date")
    parser.add_argument("--lanes", type=int, default=1, metavar="N",
                        help="run up to N independent stages at once (default: %(default)s; 2 on a 2-core machine)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--cron", help=f"serve: cron schedule, UTC (default: {DEFAULT_CRON!r}, nightly)")
    when.add_argument("--interval", type=float, metavar="SECONDS",
                      help="serve: run every SECONDS instead of on --cron")
    parser.add_argument("--name", default="groundiff-nightly", help="serve: deployment name (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.lanes < 1:
        parser.error(f"--lanes must be >= 1, got {args.lanes}")
    if args.command == "serve":
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:  # a temporary server accepts the deployment but never schedules it
            parser.error("serve needs a running Prefect server for its schedule: start one with "
                         "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
        if args.interval is not None and args.interval <= 0:
            parser.error(f"--interval must be > 0 seconds, got {args.interval:g}")
        schedule = {"interval": args.interval} if args.interval is not None else {"cron": args.cron or DEFAULT_CRON}
        try:
            select_stages(Path(args.repo) / "dvc.yaml", args.stages)  # a typo fails now, not at 03:00
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
        pipeline.serve(name=args.name, **schedule,
                       parameters={"stages": args.stages, "repo": str(Path(args.repo).resolve()),
                                   "force": args.force, "lanes": args.lanes})
    else:
        pipeline(stages=args.stages, repo=args.repo, force=args.force, lanes=args.lanes)


if __name__ == "__main__":
    main()
