"""The DVC side of a study: the `dvc exp run --queue` command of a run, DVC's queue and its workers,
and the finished experiments read back from `dvc exp show --json`.

dvc runs as this interpreter's `dvc`, with this environment's bin first on PATH, so the queue workers
DVC starts and the stages' `python -m groundiff...` are this environment's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundiff.app.study.spec import Run, Study, StudyError
from groundiff.core.dvcfile import lookup


def _set_arg(key: str, value: Any) -> str:
    """`-S key=value` with the value in DVC's override grammar: strings quoted (a run id of digits and
    an `e` would otherwise be read as a number), lists and numbers as JSON."""
    return f"{key}={json.dumps(value)}"


def dvc_command(study: Study, run: Run, targets: list[str], parent_run_id: str | None) -> list[str]:
    """The `dvc exp run --queue` arguments (after `dvc`) of one run."""
    tags = {"tracking.study": study.name, "tracking.point": run.label, "tracking.parent_run_id": parent_run_id or ""}
    sets = [a for k, v in {**run.overrides(study), **tags}.items() for a in ("-S", _set_arg(k, v))]
    return ["exp", "run", "--queue", "-n", run.name, *sets, "--single-item", *targets]


def _env() -> dict[str, str]:
    """The environment for dvc: this interpreter's bin first, so DVC's queue workers (which it starts
    as `dvc`) and the stages' `python -m groundiff...` are this environment's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dvc *args` in `root`, output captured; with `check`, a failure is a StudyError with its last lines."""
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=_env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise StudyError(f"`dvc {' '.join(args[:4])} ...` failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


def start_workers(root: Path, jobs: int) -> None:
    """`dvc queue start -j jobs`. The workers it spawns inherit its stdout/stderr, so those go to a file:
    a pipe would keep this call waiting until the last worker exits."""
    log = root / ".dvc" / "tmp" / "groundiff-study-queue-start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # PYTHONPATH=src, relative: each stage's `python -m groundiff...` imports the experiment workspace's
    # own src/ (the code DVC hashed as the stage's deps), not an editable install's live checkout.
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["src", env.get("PYTHONPATH")]))
    with open(log, "w") as fh:
        code = subprocess.run([str(Path(sys.executable).parent / "dvc"), "queue", "start", "-j", str(jobs)],
                              cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise StudyError(f"`dvc queue start -j {jobs}` failed (exit {code}): {log.read_text().strip()[-300:]}")


@dataclass(frozen=True)
class Experiment:
    """A finished DVC experiment of this baseline, as `dvc exp show --json` gives it."""

    name: str
    rev: str
    baseline: str
    timestamp: str | None
    params: dict[str, Any]  # params.yaml's data
    zs3: dict[str, Any]  # metrics/zs3.json's data ({} if the experiment has none)
    training: dict[str, Any] = field(default_factory=dict)  # variant -> metrics/train_segmenter/<variant>.json's data


def experiments(root: Path) -> dict[str, Experiment]:
    """The baseline's (HEAD's) finished experiments by name."""
    shown = json.loads(dvc(root, "exp", "show", "--json", "--no-fetch").stdout or "[]")
    found: dict[str, Experiment] = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if not rev.get("name") or rev.get("error") or not data:
                    continue
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                metrics = data.get("metrics") or {}
                zs3 = (metrics.get("metrics/zs3.json") or {}).get("data") or {}
                training = {Path(path).stem: (entry or {}).get("data") or {} for path, entry in metrics.items()
                            if path.startswith("metrics/train_segmenter/")}
                found[rev["name"]] = Experiment(rev["name"], rev["rev"], baseline["rev"], data.get("timestamp"),
                                                params, zs3, training)
    return found


def queue_entries(root: Path) -> list[dict[str, Any]]:
    """DVC's experiment queue: [{rev, name, status}], status Queued, Running, Success or Failed."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [{"rev": e["rev"], "name": e.get("name"), "status": e["status"]}
                for e in repo.experiments.celery_queue.status()]


def matches(exp: Experiment, run: Run, study: Study) -> bool:
    """Whether a finished experiment holds exactly this run's params (the study's tracking tags too)."""
    wanted = {**run.overrides(study), "tracking.study": study.name, "tracking.point": run.label}
    return all(_holds(exp.params, k, v) for k, v in wanted.items())


def _holds(params: dict[str, Any], key: str, value: Any) -> bool:
    try:
        return lookup(params, key) == value
    except KeyError:
        return False


def wait(root: Path, watch: Mapping[str, str], poll_s: float, echo: Callable[[str], None]) -> None:
    """Until none of the queue entries `watch` (rev -> name) is queued or running; prints a line whenever
    the picture changes. An entry gone from the queue counts as finished."""
    start, last = time.monotonic(), None
    while True:
        status = {e["rev"]: e["status"] for e in queue_entries(root)}
        running = [n for rev, n in watch.items() if status.get(rev) == "Running"]
        queued = [n for rev, n in watch.items() if status.get(rev) == "Queued"]
        failed = [n for rev, n in watch.items() if status.get(rev) == "Failed"]
        finished = len(watch) - len(running) - len(queued)
        line = (f"{finished}/{len(watch)} finished ({len(failed)} failed), running {', '.join(running) or 'none'}, "
                f"{len(queued)} queued")
        if line != last:
            echo(f"[{(time.monotonic() - start) / 60:5.1f} min] {line}")
            last = line
        if not running and not queued:
            return
        time.sleep(poll_s)
