"""Stage `report`: reports/report.md and docs/results.md from the metrics the pipeline wrote
(`groundiff.eval.report`).

    python -m groundiff.stages.report            # the stage (what `dvc repro report` runs)
    python -m groundiff.stages.report --readme   # only README.md's results block, from metrics/

`--readme` rewrites the text between README.md's `<!-- results:begin -->` and `<!-- results:end -->`
markers and nothing else (tests/test_readme.py compares that block with metrics/).
"""

from __future__ import annotations

import sys

from groundiff.core import paths, tracking
from groundiff.core.checkpoint import write_text_atomic
from groundiff.eval.report import SETTINGS, Facts, build_report, readme_block, replace_readme_block, results_page
from groundiff.stages.common import open_stage, run_stage

OUT = paths.REPORT
RESULTS = paths.RESULTS_PAGE


def main(argv: list[str] | None = None) -> None:
    argv = argv or []
    if argv not in ([], ["--readme"]):
        raise ValueError(f"unknown arguments {argv}: the stage takes none, or --readme")
    params, world = open_stage("report")
    name = params.world.name
    facts = Facts(mask_threshold=params.get("eval_grounding.mask_threshold"),
                  zs3_split=params.get("eval_zs3.split"))
    how_to_run = lambda stage: f"`dvc repro {stage}`"  # noqa: E731
    if argv:
        write_text_atomic(paths.README, replace_readme_block(paths.README.read_text(), readme_block(facts=facts)))
        print(f"report: rewrote the results block of {paths.README}")
        return
    split, settings = params.world.split, {key: params.written(key) for key in SETTINGS if key in params.raw}
    shapes = params.section("shapes") if name == "shapes" else None
    paper = params.written(name) if world.is_paper else None
    with tracking.stage_run("report", params.logged()) as run:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(OUT, build_report(name, split, settings, shapes=shapes, paper=paper,
                                            how_to_run=how_to_run, facts=facts))
        write_text_atomic(RESULTS, results_page(world=name, split=split, facts=facts, how_to_run=how_to_run))
        run.log_artifact(OUT)
        run.log_artifact(RESULTS)
    print(f"report: wrote {OUT} and {RESULTS}")


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
