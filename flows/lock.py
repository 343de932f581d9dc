"""Is the project busy? One pipeline run at a time per project, and none beside a running `dvc` stage.

Why the flow needs its own lock: DVC's locks do not span a pipeline run. `dvc repro` releases
the repository lock (`.dvc/tmp/lock`) while a stage's command runs, and its read/write locks
(`.dvc/tmp/rwlock`) cover one stage's deps and outs only while that stage runs. Two overlapping
flow runs (a scheduled run that starts while the previous one is still going, a manual run beside
a scheduled one) would each pass between the other's stages and could start the same stage twice,
both writing its outputs. So a flow run holds `.dvc/tmp/groundiff-pipeline.lock` (DVC's temp
folder: ignored by git and DVC) from start to end, with an OS lock (`flock`) that the kernel
drops when its process dies: a killed run never leaves a stale lock.

What a run does when the project is busy: it is **skipped**, with one log line naming the holder,
rather than waiting. A waiting run would find everything the other run built up to date, and on a
schedule shorter than a pipeline run waiting runs would pile up, each holding a process and a
slot of the runner; the next scheduled run picks up whatever is still out of date (the rule of
cron's `flock -n`).

A `dvc repro` started by hand is busy too while it runs a stage: DVC lists the running
command's pid in its rwlock file, and a flow run that finds a live one there is skipped as well.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The pipeline lock, relative to the project root (inside DVC's temp folder).
LOCK_FILE = Path(".dvc") / "tmp" / "groundiff-pipeline.lock"
#: DVC's read/write lock file: which dvc process (pid, command) holds which deps and outs.
DVC_RWLOCK = Path(".dvc") / "tmp" / "rwlock"


@contextmanager
def project_lock(root: Path | str, holder: str) -> Iterator[str | None]:
    """Hold `root`'s pipeline lock for the block; yields None, or who makes the project busy.

    `holder` describes this run (e.g. "flow run <id>") for the message a skipped run logs. When
    the project is busy nothing is held and the caller should do nothing: the value says why, in
    one line (the other pipeline run, or the dvc command running a stage).
    """
    root = Path(root)
    if not (root / ".dvc").is_dir():  # never create .dvc/ in a folder that is no DVC project
        raise FileNotFoundError(f"{root} is not a DVC project (it has no .dvc folder): pass the project's "
                                "root as repo (`--repo`), or run `dvc init` there first")
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield f"another pipeline run holds {path} ({_describe(path)})"
            return
        busy = dvc_stage_running(root)
        if busy is not None:
            yield busy
            return
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "holder": holder,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        yield None
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _describe(path: Path) -> str:
    """Who holds the lock, as its holder wrote it (it may still be writing: then say so)."""
    try:
        info = json.loads(path.read_text())
        return f"{info['holder']}, pid {info['pid']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "starting"


def dvc_stage_running(root: Path | str) -> str | None:
    """"a dvc command is running a stage here: pid N: dvc repro ..." when DVC's rwlock names a live
    process, else None.

    Read-only and advisory: DVC itself still guards each stage's files. Entries of dead processes
    are ignored, as DVC ignores them.
    """
    path = Path(root) / DVC_RWLOCK
    try:
        lock = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None
    infos = list((lock.get("write") or {}).values())
    for readers in (lock.get("read") or {}).values():
        infos += readers
    for info in infos:
        pid = info.get("pid") if isinstance(info, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            return f"a dvc command is running a stage in {Path(root)} (pid {pid}: {info.get('cmd', '?')})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
