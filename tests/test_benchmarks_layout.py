"""benchmarks/ holds speed and cost benchmarks only (studies are `groundiff study NAME`, studies.yaml): each
runs as `python -m benchmarks.<name>`, writes its own reports/benchmarks/<name>.json and .md, and uses the
library's public API (no stage module, no private name, no sys.path edits, no other benchmark)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("cpu_precision", "demo_request", "distributed_synthesis", "grounding_overhead", "paper_scale",
              "sampling_steps", "segmenter_backends")
HELPERS = ("__init__", "_results")  # _results: where every benchmark writes (reports/benchmarks/<name>.json|md)


def _tree(name: str) -> ast.Module:
    return ast.parse((ROOT / "benchmarks" / f"{name}.py").read_text())


def _imports(tree: ast.Module) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import, at any depth (lazy imports too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.module or "", a.name) for a in node.names]
    return found


def test_benchmarks_holds_only_the_speed_benchmarks():
    present = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
    assert present == sorted(BENCHMARKS + HELPERS), (
        "benchmarks/ is for speed and cost benchmarks; a study (seeds, an ablation, a diagnosis) is a studies.yaml "
        "entry over the pipeline's stages (`groundiff study NAME`), and what no stage computes a library function")


@pytest.mark.parametrize("name", BENCHMARKS + ("_results",))
def test_a_benchmark_uses_the_public_library_only(name):
    tree = _tree(name)
    offenders = []
    for module, imported in _imports(tree):
        parts = module.split(".") + ([imported] if imported else [])
        if parts[0] == "groundiff" and (parts[:2] == ["groundiff", "stages"] or any(p.startswith("_") for p in parts)):
            offenders.append(f"{module}{f' import {imported}' if imported else ''}")
        if parts[0] == "benchmarks" and parts[:2] != ["benchmarks", "_results"]:
            offenders.append(f"{module}{f' import {imported}' if imported else ''} (another benchmark)")
    offenders += [f"sys.path at line {n.lineno}" for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name)
                  and n.value.id == "sys"]
    assert not offenders, f"benchmarks/{name}.py: " + "; ".join(offenders)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_has_a_main_and_writes_its_own_results(name):
    tree = _tree(name)
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"benchmarks/{name}.py: no main(); `python -m benchmarks.{name}` runs main()"
    assert [a.arg for a in mains[0].args.args] == ["argv"], f"benchmarks/{name}.py: main(argv=None), callable from tests"
    guard = [n for n in tree.body if isinstance(n, ast.If) and "__name__" in ast.unparse(n.test)]
    assert guard and "main()" in ast.unparse(guard[0]), f"benchmarks/{name}.py: no `if __name__ == \"__main__\": main()`"
    source = ast.unparse(tree)
    writes = "write_results(" in source or f"reports/benchmarks/{name}.json" in source
    assert writes, f"benchmarks/{name}.py: write reports/benchmarks/{name}.json and .md (benchmarks._results.write_results)"
    assert "write_results(" in source or "'.md'" in source, f"benchmarks/{name}.py: and its .md page beside the JSON"


def test_the_results_helper_writes_json_and_a_page_that_links_it(tmp_path):
    import json

    from benchmarks._results import write_results

    json_path, md_path = write_results("demo", "A title", {"x": 1.5}, "| a |\n|---|\n| 1 |\n", tmp_path / "out")
    assert json.loads(json_path.read_text()) == {"x": 1.5} and json_path == tmp_path / "out/demo.json"
    assert md_path.read_text() == ("# A title\n\n| a |\n|---|\n| 1 |\n\nWritten by `python -m benchmarks.demo` "
                                   "([demo.json](demo.json)).\n")
