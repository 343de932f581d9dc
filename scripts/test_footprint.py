"""Measure each test file on its own: peak RSS (GNU time's %M, the largest process) and wall time.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/test_footprint.py        # all files, then docs/testing.md updated
    OMP_NUM_THREADS=1 .venv/bin/python scripts/test_footprint.py tests/test_mmseg.py   # these files only

With files named, only those are measured; their rows replace (or join) the last table's, the other
rows are kept as measured then, rows of test files that no longer exist are dropped, and the note
under the table says which rows were measured when.

Writes reports/test_footprint.md and replaces the table between the `test-footprint` markers in
docs/testing.md, so the numbers there are the ones this script measured. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- test-footprint -->\n).*?(<!-- /test-footprint -->)", re.S)


def measure(test_file: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, pytest's last line) of one test file run alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["/usr/bin/time", "-f", "FOOTPRINT %M %e", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", str(test_file.relative_to(ROOT))],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    match = re.search(r"FOOTPRINT (\d+) ([\d.]+)", out.stderr)
    if not match:
        raise SystemExit(f"{test_file}: no measurement\n{out.stderr[-2000:]}")
    summary = [line for line in out.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return int(match.group(1)) / 1024, float(match.group(2)), summary[-1].strip("= ") if summary else "?"


REPORT = ROOT / "reports/test_footprint.md"
ROW = re.compile(r"^\| (test_\w+\.py) \| (\d+) \| ([\d.]+) \| (.*) \|$", re.M)
NOTE = re.compile(r"^(Measured by .*)$", re.M)


def previous() -> tuple[dict[str, tuple[float, float, str]], list[str]]:
    """The last report's rows by file name, and its notes (which say when they were measured)."""
    if not REPORT.exists():
        return {}, []
    text = REPORT.read_text()
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), m.group(4)) for m in ROW.finditer(text)}
    return rows, NOTE.findall(text)


def _files(note: str) -> list[str]:
    """The test files a note says it measured ("the rows of a.py, b.py, each file ..."); [] for all."""
    m = re.search(r"the rows of (.*?), each file", note)
    return m.group(1).split(", ") if m else []


def main() -> None:
    named = [Path(a).resolve() for a in sys.argv[1:]]
    for path in named:
        if not (path.is_file() and path.parent == ROOT / "tests" and path.name.startswith("test_")):
            raise SystemExit(f"{path}: not a test file in {ROOT / 'tests'} (give paths like tests/test_mmseg.py)")
    existing = sorted((ROOT / "tests").glob("test_*.py"))
    rows: dict[str, tuple[float, float, str]] = {}
    notes: list[str] = []
    if named:  # keep the other files' rows as last measured
        old, notes = previous()
        alive = {p.name for p in existing}
        rows = {name: row for name, row in old.items() if name in alive}
    started = time.time()
    for path in named or existing:
        rss, seconds, result = measure(path)
        rows[path.name] = (rss, seconds, result)
        print(f"{path.name:40s} {rss:8.0f} MB {seconds:7.1f} s  {result}", flush=True)
    ordered = [(name, *rows[name]) for name in sorted(rows)]
    total = sum(r[2] for r in ordered)
    table = ["| test file | peak RSS (MB) | wall time (s) | result |", "|---|---|---|---|"]
    table += [f"| {name} | {rss:.0f} | {seconds:.1f} | {result} |" for name, rss, seconds, result in ordered]
    table.append(f"| **all files, one at a time** | max {max(r[1] for r in ordered):.0f} | {total:.0f} | |")
    which = f"the rows of {', '.join(p.name for p in named)}" if named else "every file"
    note = (f"Measured by `scripts/test_footprint.py` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
            f"({platform.machine()}): {which}, each file in its own `pytest` process (interpreter start "
            f"included), {time.time() - started:.0f} s in all.")
    # an earlier note about only files measured again now says nothing that is still true
    notes = [n for n in notes if not (_files(n) and set(_files(n)) <= {p.name for p in named})]
    text = "\n\n".join(dict.fromkeys([*notes, note])) + "\n\n" + "\n".join(table) + "\n"
    (ROOT / "reports").mkdir(exist_ok=True)
    REPORT.write_text("# Test footprint\n\n" + text)
    doc = ROOT / "docs/testing.md"
    body = doc.read_text()
    if not MARK.search(body):
        raise SystemExit(f"{doc}: no <!-- test-footprint --> ... <!-- /test-footprint --> block; put the two "
                         f"markers where the table goes (the table is in reports/test_footprint.md)")
    doc.write_text(MARK.sub(lambda m: m.group(1) + text + m.group(2), body))


if __name__ == "__main__":
    main()
