"""Stage `world_diffusion`: train the shapes world's text-to-image model (resumable).

Output: a diffusers pipeline folder, committed to git; `worlds/shapes/state/diffusion/` resumes an
interrupted run and is deleted once the pipeline is saved. `--continue` seeds that state with the
shipped first cycle, so that the stage then trains only a (longer) second cycle. voc / coco: Stable
Diffusion comes from outside; the stage checks it is complete and records it (`source.json`).
"""

from __future__ import annotations

import sys

from groundiff.core import paths, tracking
from groundiff.core.io import atomic_dir, write_json
from groundiff.core.params import to_dict
from groundiff.core.schema import RunOptions
from groundiff.core.training import publish
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.paper_models import record_paper_pipeline
from groundiff.worlds.shapes_continue import NoShippedFirstCycle, seed_from_shipped
from groundiff.worlds.shapes_diffusion import loss_curve, train_diffusion, write_loss_plot

STAGE, OUT, STATE = "world_diffusion", paths.world_diffusion("shapes"), paths.world_state("shapes", "diffusion")
METRICS, LOSS_PLOT = paths.metrics(STAGE), paths.loss_plot(STAGE)


def main(argv: list[str] | None = None) -> None:
    """Train (or record) the world's diffusion model; `--continue` seeds cycle 1 from the shipped one."""
    argv = argv or []
    params, world = open_stage(STAGE)
    if argv not in ([], ["--continue"]):
        raise ValueError(f"unknown arguments {argv}: the stage takes none, or --continue")
    name = params.world.name
    if name != "shapes":
        if argv:
            raise ValueError(f"the {name} world's diffusion model is not trained by this project")
        write_json(METRICS, record_paper_pipeline(world, paths.world_diffusion(name)))
        LOSS_PLOT.write_text("step,loss\n")  # nothing was trained here
        print(f"{STAGE}: the {name} world uses {world.paper.diffusion} (recorded in {paths.world_diffusion(name)})")
        return
    p = params.section(STAGE)
    if argv:
        try:
            rev = seed_from_shipped(p.model, STATE)
        except NoShippedFirstCycle as err:
            raise NoShippedFirstCycle(f"{err}: train from scratch with `dvc repro --force {STAGE}`") from None
        print(f"{STAGE}: the first cycle shipped in {rev} seeds {STATE}; `dvc repro {STAGE}` trains cycle 2 only")
        return
    opts = RunOptions(**{**to_dict(p.run), "device": params.world.device})
    with tracking.stage_run(STAGE, {"model": to_dict(p.model), "run": to_dict(opts)}) as run:
        with atomic_dir(OUT) as tmp:
            metrics = train_diffusion(p.model, opts, tmp, STATE, on_log=lambda m: run.log_metrics(
                {k: v for k, v in m.items() if k != "step"}, step=m["step"]))
        write_loss_plot(loss_curve(p.model, STATE), LOSS_PLOT)
        publish(run, STATE, metrics, METRICS, LOSS_PLOT, copy_log=False)
    print(f"{STAGE}: saved the pipeline to {OUT}")


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
