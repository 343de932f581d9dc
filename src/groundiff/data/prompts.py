"""The paper's training prompts: "a photograph of a {c1}" or "... a {c1} and a {c2}".

One or two classes with probability 1/2 each, drawn uniformly *with replacement* from the seen
classes (PAPER.md, Data). The table is the contract between `prompts` and `synthesize`: one row
per image to generate, with the seed that makes the row reproducible on its own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from groundiff.core.schema import PromptConfig

CLASS_SEP = "|"  # class names may contain spaces ("hot dog"), never a bar
COLUMNS = ["index", "prompt", "classes", "n_objects", "seed"]


def row_seed(seed: int, index: int) -> int:
    """An independent 31-bit seed for row `index` (stable across table sizes and machines)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def sample_prompts(classes: tuple[str, ...] | list[str], cfg: PromptConfig) -> pd.DataFrame:
    """The prompt table: columns index, prompt, classes ('|'-joined), n_objects, seed."""
    if not classes:
        raise ValueError("no classes to draw prompts from")
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for i in range(cfg.n):
        k = 2 if rng.random() < cfg.two_object_prob else 1
        names = [classes[j] for j in rng.integers(len(classes), size=k)]
        template = cfg.template_two if k == 2 else cfg.template_one
        rows.append((i, template.format(*names), CLASS_SEP.join(names), k, row_seed(cfg.seed, i)))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_prompts(table: pd.DataFrame, path: Path) -> None:
    """Write the table as CSV, whole or not at all (via `<name>.csv.partial`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.partial")
    table.to_csv(tmp, index=False)
    tmp.replace(path)


def prompt_stats(table: pd.DataFrame) -> dict:
    """Rows, the share of two-object prompts and how often each class is prompted."""
    counts = Counter(c for cell in table["classes"] for c in class_list(cell))
    return {
        "rows": len(table),
        "two_object_share": float((table["n_objects"] == 2).mean()),
        "class_counts": dict(sorted(counts.items())),
    }


def read_prompts(path: Path) -> pd.DataFrame:
    """Read a prompt table, checking it is one (a clear error beats a KeyError three stages later)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prompt table")
    table = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not a prompt table (missing columns {missing})")
    if table.empty:
        raise ValueError(f"{path}: the prompt table is empty (prompts.n must be > 0)")
    return table


def class_list(cell: str) -> list[str]:
    return cell.split(CLASS_SEP)
