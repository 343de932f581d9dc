"""Record in dvc.lock the current hashes of stages' code and params deps, keeping every recorded output.

    python scripts/relock_code_deps.py            # rewrite dvc.lock
    python scripts/relock_code_deps.py --dry-run  # only list the stages whose lock entry would change
    python scripts/relock_code_deps.py --skip eval_grounding   # leave a stage whose results change

`dvc commit` does this when every output is in the workspace; a clone without the DVC remote has none.
For a change that provably changes no output (a refactor checked old-vs-new on one machine, a new
param whose default is today's behaviour) this updates each stage's deps that exist in the workspace
(`src/` modules, params values, small git-tracked inputs) and keeps what dvc.lock records for the rest
and for every output. Never use it to hide a change that alters results: re-run those stages instead.
"""

from __future__ import annotations

import sys

from dvc.repo import Repo


def main() -> None:
    args = sys.argv[1:]
    dry = "--dry-run" in args
    skip = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--skip"}
    repo = Repo(".")
    changed = []
    with repo.lock:
        for stage in repo.index.stages:
            if not stage.cmd or stage.addressing in skip:
                continue
            before = {str(d.def_path): d.hash_info for d in stage.deps}
            for dep in stage.deps:
                if dep.exists:
                    dep.save()  # present here: hash it (params deps read their values)
                # absent (a data dep whose producer's output is not in this workspace): keep the record
            if any(before[str(d.def_path)] != d.hash_info for d in stage.deps):
                changed.append(stage.addressing)
                if not dry:
                    stage.dump(update_pipeline=False)
    print(("would relock: " if dry else "relocked: ") + (", ".join(changed) or "nothing"))


if __name__ == "__main__":
    main()
