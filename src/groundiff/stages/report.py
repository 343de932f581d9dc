"""Stage `report`: reports/report.md from the metrics the pipeline wrote (linked from README)."""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.checkpoint import write_text_atomic
from groundiff.eval.report import SETTINGS, build_report
from groundiff.stages.common import open_stage, run_stage

OUT = paths.REPORT


def main() -> None:
    params, world = open_stage("report")
    name = params.world.name
    split, settings = params.world.split, {key: params.written(key) for key in SETTINGS if key in params.raw}
    shapes = params.section("shapes") if name == "shapes" else None
    paper = params.written(name) if world.is_paper else None
    with tracking.stage_run("report", params.logged()) as run:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(OUT, build_report(name, split, settings, shapes=shapes, paper=paper,
                                            how_to_run=lambda stage: f"`dvc repro {stage}`"))
        run.log_artifact(OUT)
    print(f"report: wrote {OUT}")


if __name__ == "__main__":
    run_stage(main)
