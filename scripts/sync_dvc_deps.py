"""Rewrite each dvc.yaml stage's `src/` deps to the groundiff modules its command imports.

    python scripts/sync_dvc_deps.py          # rewrite dvc.yaml in place (comments and order kept)
    python scripts/sync_dvc_deps.py --check  # exit 1 listing the stages whose deps are out of date

The import closure is read from the source (tests/_imports.py, the same code tests/test_dvc_truth.py
checks with): the stage's module first, then every other module it loads, sorted; empty package
`__init__.py` files are left out (they change nothing). Run it after adding or moving an import.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _imports import module_path, needed_files  # noqa: E402

CMD = re.compile(r"^\s+cmd: python -m (groundiff\.stages\.\w+)")
SRC_DEP = re.compile(r"^(\s+)- src/")


def needed(module: str) -> list[str]:
    first = str(module_path(module).relative_to(ROOT))
    return [first, *sorted(needed_files(module) - {first})]


def sync(text: str) -> tuple[str, list[str]]:
    lines, out, changed, module = text.splitlines(keepends=True), [], [], None
    i = 0
    while i < len(lines):
        match = CMD.match(lines[i])
        if match:
            module = match.group(1)
        dep = SRC_DEP.match(lines[i])
        if dep and module:
            block = []
            while i < len(lines) and SRC_DEP.match(lines[i]):
                block.append(lines[i])
                i += 1
            new = [f"{dep.group(1)}- {f}\n" for f in needed(module)]
            if new != block:
                changed.append(module)
            out.extend(new)
            module = None
            continue
        out.append(lines[i])
        i += 1
    return "".join(out), changed


def main() -> None:
    path = ROOT / "dvc.yaml"
    text, changed = sync(path.read_text())
    if "--check" in sys.argv[1:]:
        if changed:
            sys.exit(f"dvc.yaml: src deps out of date for {', '.join(changed)}; run python scripts/sync_dvc_deps.py")
        print("dvc.yaml: every stage's src deps are its import closure")
        return
    path.write_text(text)
    print(f"dvc.yaml: rewrote the src deps of {len(changed)} stage(s)" + (f": {', '.join(changed)}" if changed else ""))


if __name__ == "__main__":
    main()
