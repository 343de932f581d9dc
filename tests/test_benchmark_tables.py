"""The benchmarks' pure parts: what they print is computed right."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segmenter_seeds_table_means_spreads_and_shares():
    seeds = _load("segmenter_seeds")
    row = lambda h, s, u: {"hiou": h, "miou_seen": s, "miou_unseen": u}  # noqa: E731
    results = {("C", 0): row(30.0, 20.0, 40.0), ("C", 1): row(40.0, 30.0, 50.0),
               ("real_all", 0): row(50.0, 50.0, 50.0), ("real_all", 1): row(70.0, 60.0, 80.0)}
    lines = seeds.table(results, ["C", "real_all"], [0, 1]).splitlines()
    assert lines[0].startswith("| variant | hIoU seed 0 | hIoU seed 1 | hIoU mean ± sd |")
    assert lines[2] == "| C | 30.0 | 40.0 | 35.0 ± 7.1 | 25.0 ± 7.1 | 45.0 ± 7.1 | 58% |"
    assert lines[3] == "| real_all | 50.0 | 70.0 | 60.0 ± 14.1 | 55.0 ± 7.1 | 65.0 ± 21.2 | 100% |"
