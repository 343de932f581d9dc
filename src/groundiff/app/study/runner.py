"""`groundiff study NAME`: check the study, queue its missing runs, wait for DVC's workers, write the report.

Resumable: a run whose experiment (same name, on this baseline commit) already holds the study's params
is not run again, and one already queued or running is waited for, not queued twice.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from groundiff.app.study.experiments import (Experiment, dvc, dvc_command, experiments, matches, queue_entries,
                                             start_workers, wait)
from groundiff.app.study.report import HEADLINE, collect, fmt, write_report
from groundiff.app.study.spec import STUDIES, Study, StudyError, check_study, label_part, load_study


def run_study(name: str, root: Path | str = ".", jobs: int = 1, dry_run: bool = False, report_only: bool = False,
              poll_s: float = 15.0, echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Queue the study's missing runs, run the queue on `jobs` workers, wait, write the report.

    Returns the result written to reports/studies/<name>.json (None for a dry run). Raises StudyError
    after writing the report when some runs failed.
    """
    from groundiff.core import tracking

    # 1. Load and check the study against params.yaml and dvc.yaml: its DVC targets, in run order.
    root = Path(root).resolve()
    study = load_study(name, root / STUDIES)
    targets = check_study(study, root, root / STUDIES)
    runs = study.runs()
    if report_only:
        return _finish(study, root, experiments(root), None, echo, close=False)
    # 2. Sort the runs: done (a finished experiment with their params), already queued, to queue.
    found, entries = experiments(root), queue_entries(root)
    done = [r for r in runs if r.name in found and matches(found[r.name], r, study)]
    conflict = [r.name for r in runs if r.name in found and r not in done]
    if conflict:
        raise StudyError(f"experiment(s) {', '.join(conflict)} exist with other params than study {name} now "
                         f"gives them (studies.yaml changed?); remove them with `dvc exp remove {' '.join(conflict)}` "
                         "and run the study again")
    active = {e["name"]: e["rev"] for e in entries if e["status"] in ("Queued", "Running")}
    waiting = [r for r in runs if r not in done and r.name in active]
    todo = [r for r in runs if r not in done and r.name not in active]
    echo(f"study {name}: {len(runs)} run(s) ({len(study.points())} point(s) x {len(study.seeds)} seed(s)); "
         f"{len(done)} done, {len(waiting)} already queued, {len(todo)} to queue; stages: {' '.join(targets)}")
    if dry_run:
        if _untracked(root):
            echo("note: git does not track " + ", ".join(_untracked(root)) + "; `git add` them before a real run")
        for run in todo:
            echo("dvc " + " ".join(_quote(a) for a in dvc_command(study, run, targets, "<study parent run id>")))
        return None
    # 3. Queue the missing runs under the study's MLflow parent run.
    untracked = _untracked(root) if todo else []
    if untracked:
        raise StudyError("git does not track " + ", ".join(untracked[:5]) + (" ..." if len(untracked) > 5 else "")
                         + ": a queued DVC experiment holds only git's files (changes to tracked files included), "
                         "so its stages would miss them; `git add` them, then run the study again")
    parent = tracking.study_run(name, root=root, tags={"groundiff.description": study.description,
                                                        "groundiff.split": study.split})
    for i, run in enumerate(todo, 1):
        dvc(root, *dvc_command(study, run, targets, parent))
        echo(f"queued {run.name} ({i}/{len(todo)})")
    # 4. Run the queue and wait. Watch queue entries by rev: an older, failed entry of the same name is not this run.
    before = {e["rev"] for e in entries}
    todo_names = {r.name for r in todo}
    watch = {rev: n for n, rev in active.items() if n in {r.name for r in waiting}}
    watch.update({e["rev"]: e["name"] for e in queue_entries(root) if e["rev"] not in before and e["name"] in todo_names})
    if watch:
        start_workers(root, jobs)
        echo(f"study {name}: running {len(watch)} experiment(s) on {jobs} DVC queue worker(s); "
             f"follow one with `dvc queue logs <name> -f`, stop with Ctrl-C (they keep running: rerun this to wait)")
        try:
            wait(root, watch, poll_s, echo)
        except KeyboardInterrupt:
            echo(f"stopped waiting; the experiments keep running in the background (`dvc queue status`): "
                 f"run `groundiff study {name}` again to wait for them and write the report, or stop them "
                 "with `dvc queue kill " + " ".join(sorted(watch.values())) + "`")
            raise SystemExit(130) from None
    # 5. The report, from every finished experiment of the study.
    return _finish(study, root, experiments(root), parent, echo)


def _untracked(root: Path) -> list[str]:
    """Files under src/ and the params/pipeline/study files that git does not track (nor ignore)."""
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "src", "dvc.yaml",
                          "params.yaml", "studies.yaml"], cwd=root, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def _finish(study: Study, root: Path, found: Mapping[str, Experiment], parent: str | None,
            echo: Callable[[str], None], close: bool = True) -> dict[str, Any]:
    """Write the report; with `close`, log its summary on the study's MLflow run and end that run."""
    from groundiff.core import tracking

    parent = parent or tracking.find_study_run(study.name, root=root)
    result = collect(study, root, found, parent)
    md, js = write_report(study, result, root)
    for s in result["summary"]:
        share = "" if s["share_of_reference"] is None else f", {s['share_of_reference']:.2f} of {study.reference}"
        where = f"{s['point_label']}: " if s["point_label"] else ""
        echo(f"{where}{s['variant']}: hIoU {fmt(s['hiou'])} (n={s['n']}){share}")
    echo(f"wrote {md.relative_to(root)} and {js.relative_to(root)}")
    tracking.end_study_run(parent if close else None, root=root, metrics={
        f"{label_part(s['point_label']) + '/' if s['point_label'] else ''}{s['variant']}.{k}_mean": s[k]["mean"]
        for s in result["summary"] for k in HEADLINE if s[k]["mean"] is not None and not math.isnan(s[k]["mean"])},
        artifacts=[md, js], failed=bool(result["runs_missing"]))
    if result["runs_missing"]:
        raise StudyError(f"study {study.name}: {len(result['runs_missing'])} run(s) did not finish: "
                         f"{', '.join(result['runs_missing'])}; see `dvc queue logs <name>`, fix, and run "
                         f"`groundiff study {study.name}` again (finished runs are kept)")
    return result
