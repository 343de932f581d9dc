"""Per-step training logs as CSV, consistent across resumption.

Every trainer appends rows ({"step": ..., "loss": ..., ...}) as it goes and, when it resumes from
a checkpoint, first drops the rows logged after that checkpoint (they will be redone), so a
resumed log equals an uninterrupted one.
"""

from __future__ import annotations

import csv
from pathlib import Path


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a CSV log, writing the header (the first row's keys) for a new file."""
    if not rows:
        return
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    """All rows of a log, values as strings (empty list when there is no log)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def truncate(path: Path, max_step: int) -> None:
    """Keep only rows with step <= max_step: where the run we resume from was checkpointed."""
    kept = [r for r in read_rows(path) if int(r["step"]) <= max_step]
    path.unlink(missing_ok=True)
    append_rows(path, kept)
