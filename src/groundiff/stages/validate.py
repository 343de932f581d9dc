"""Stage `validate`: all of params.yaml and the world, checked before any stage can lose its outputs.

DVC deletes a stage's outputs before it runs the stage's command, so an error that the stage itself
finds in params.yaml would cost the outputs of the last good run. This stage runs first instead: the
root stages (world_setup, world_data, prompts) depend on its output, so every stage is downstream of
it, DVC re-runs it whenever params.yaml or dvc.yaml changes, and a `dvc repro` (of one stage or of
all) stops here with the one clear error while everything else on disk stays as it was. Its output is
`persist` (DVC keeps it while the stage runs) and names only the world and split, so a valid edit of
params.yaml re-runs nothing downstream through it.

Checked: every section's types and ranges, the world (classes, split), and, for every dvc.yaml stage,
that its `${...}` templates fill and each params key it declares is written in params.yaml (DVC
refuses a stage whose declared key is missing, after deleting its outputs).
"""

from __future__ import annotations

from groundiff.core import paths
from groundiff.core.dvcfile import read_stages, require_declared_params
from groundiff.core.io import write_json
from groundiff.core.params import Params, load_params
from groundiff.stages.common import run_stage
from groundiff.worlds.active import check

OUT = paths.VALIDATED


def main() -> None:
    # Every section (types, ranges, unknown keys) and the world (classes the renderer draws, the split):
    # what open_stage checks, for the whole file (this stage depends on all of params.yaml, not on keys).
    params = Params(paths.PARAMS)
    check(params)
    raw = load_params(paths.PARAMS)
    stages = read_stages(paths.DVC_YAML, raw)  # every ${...} template fills
    require_declared_params(stages, raw, paths.PARAMS)
    world = params.peek("world")
    write_json(OUT, {"world": world.name, "split": world.split})
    print(f"validate: params.yaml and the {world.name} world (split {world.split}) are valid for "
          f"all {len(stages)} stages")


if __name__ == "__main__":
    run_stage(main)
