"""Where every benchmark's numbers land: `reports/benchmarks/<name>.json` (the record) and `.md` (the
page docs link to), written by the benchmark that measured them, never pasted."""

from __future__ import annotations

import json
from pathlib import Path

OUT_DIR = Path("reports/benchmarks")


def write_results(name: str, title: str, result: dict, markdown: str, out_dir: Path = OUT_DIR) -> tuple[Path, Path]:
    """Write `result` as `<out_dir>/<name>.json` and `# title` + `markdown` as `<name>.md`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(f"# {title}\n\n{markdown.rstrip()}\n\nWritten by `python -m benchmarks.{name}` "
                       f"([{name}.json]({name}.json)).\n")
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path
