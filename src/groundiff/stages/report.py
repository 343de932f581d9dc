"""Stage `report`: reports/report.md from the metrics the pipeline wrote (linked from README)."""

from __future__ import annotations

from pathlib import Path

from groundiff.core import tracking
from groundiff.core.checkpoint import write_text_atomic
from groundiff.eval.report import build_report
from groundiff.stages.common import open_stage, run_stage

OUT = Path("reports/report.md")


def main() -> None:
    params, world = open_stage("report")
    with tracking.stage_run("report", {"world": params.raw.get("world", {})}) as run:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(OUT, build_report(params.raw, Path(".")))
        run.log_artifact(OUT)
    print(f"report: wrote {OUT}")


if __name__ == "__main__":
    run_stage(main)
