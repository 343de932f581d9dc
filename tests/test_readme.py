"""The README is a user's document that cannot drift: short, its results table equal to metrics/, its
links and anchors real, its Python example runnable, its test command the one CI runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groundiff.eval.protocol1 import CATEGORIES, PAPER_PASCAL_SIM
from groundiff.eval.report import README_BEGIN, README_END, Facts, readme_block
from groundiff.eval.zs3 import PAPER_TABLE2_VOC

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
REFRESH = "python -m groundiff.stages.report --readme"


def _json(name: str) -> dict:
    path = ROOT / "metrics" / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _tables(block: str) -> list[list[list[str]]]:
    """Each markdown table of `block` as rows of cells (header and rule left out)."""
    tables, current = [], None
    for line in block.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []  # the header
            elif not set("".join(cells)) <= set("-: "):
                current.append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    return tables + ([current] if current is not None else [])


def _number(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def readme_results() -> str:
    text = README.read_text()
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1, \
        f"README.md needs one {README_BEGIN} ... {README_END} block (the results table)"
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; the limit is 250: move detail into docs/"


def test_readme_protocol1_rows_are_metrics_protocol1_json():
    p1, details = _json("protocol1.json"), _json("protocol1_details.json")
    if not p1:
        pytest.skip("metrics/protocol1.json not there: eval_grounding has not run in this checkout")
    other = (details.get("norm_at_test") or {})
    protocol1 = _tables(readme_results())[0]
    seen = set()
    for label, *cells in protocol1:
        if label.startswith("target"):
            continue
        if "(paper" in label:
            expected = PAPER_PASCAL_SIM["daam" if label.startswith("DAAM") else "ours"]
        elif label.startswith("DAAM"):
            expected = p1["daam"]
        elif other.get("other") and f"norm_at_test {other['other']})" in label:
            expected = other["ours_other"]
        else:
            key = next((k for k in p1 if k not in ("ours", "daam") and f"this run, {k})" in label), "ours")
            expected = p1[key]
        seen.add(label)
        assert cells == [_number(expected.get(c)) for c in CATEGORIES], \
            f"README's Protocol I row {label!r} is not metrics/: run {REFRESH}"
    assert sum("(this run" in s for s in seen) == 2 + bool(other.get("ours_other")) + sum(
        k not in ("ours", "daam") for k in p1), f"README's Protocol I table lacks a row of metrics/: run {REFRESH}"


def test_readme_protocol2_rows_are_metrics_zs3_json():
    zs3 = {k: v for k, v in _json("zs3.json").items() if isinstance(v, dict) and "hiou" in v}
    if not zs3:
        pytest.skip("metrics/zs3.json not there: eval_zs3 has not run in this checkout")
    protocol2 = _tables(readme_results())[1]
    assert [row[0] for row in protocol2] == list(zs3), f"README's Protocol II variants are not metrics/: run {REFRESH}"
    reference = zs3.get("real_all", {}).get("hiou")
    for variant, seen, unseen, hiou, share, _target, paper in protocol2:
        m = zs3[variant]
        assert [seen, unseen, hiou] == [_number(m["miou_seen"]), _number(m["miou_unseen"]), _number(m["hiou"])], \
            f"README's Protocol II row {variant} is not metrics/zs3.json: run {REFRESH}"
        assert share == (f"{100 * m['hiou'] / reference:.0f}%" if reference and m["hiou"] is not None else "—")
        assert paper == (_number(PAPER_TABLE2_VOC[f"Model-{variant}"][2]) if f"Model-{variant}" in PAPER_TABLE2_VOC
                         else "—")


def test_readme_results_block_is_what_the_report_code_writes():
    """Everything in the block, targets and captions included, is today's metrics/ and params.yaml."""
    if not _json("protocol1.json") or not _json("zs3.json"):
        pytest.skip("metrics of both protocols are needed")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    facts = Facts(mask_threshold=params["eval_grounding"]["mask_threshold"], zs3_split=params["eval_zs3"]["split"])
    block = readme_block(ROOT, facts)
    assert README_BEGIN + readme_results() + README_END == block, f"README's results block is stale: run {REFRESH}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    """Links and images between README.md and docs/*.md point at files that exist, and at headings
    that exist when they name one."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    broken = []
    for link in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_the_table_of_contents_lists_every_section():
    text = README.read_text()
    toc = text.split("\n## ", 1)[0]
    sections = [h for h in re.findall(r"^## (.+)$", text, flags=re.M)]
    missing = [h for h in sections if f"(#{_slug(h)})" not in toc]
    assert not missing, f"README's table of contents lacks {missing}"
    listed = {p.name for p in DOCS}
    unlisted = sorted(listed - set(re.findall(r"docs/([\w]+\.md)", toc)))
    assert not unlisted, f"docs/ pages not in the README's table of contents: {unlisted}"


def test_the_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci.startswith("OMP_NUM_THREADS=1 .venv/bin/python -m pytest")
    assert ci in README.read_text(), f"README's test command differs from .ci/run's: {ci}"


def test_the_python_example_runs(grounded_world):
    """The README's Python block, run as it is on tiny models of the same shapes (conftest)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README should hold one Python example"
    (grounded_world / "example.py").write_text(blocks[0])
    out = subprocess.run([sys.executable, "example.py"], cwd=grounded_world, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (grounded_world / "out").iterdir()) == [
        "image.png", "mask_ring.png", "mask_star.png", "overlay.png"]
