"""Studies: sets of DVC experiments through the pipeline's own stages, summarised from their metrics.

    groundiff study seeds              # queue, run on N lanes, write reports/studies/seeds.md and .json
    groundiff study seeds --dry-run    # the `dvc exp run` commands, and which runs are already done
    groundiff study seeds --report-only

A study (`studies.yaml`, loaded and checked in one place: `spec`) names the segmenter variants, the seeds
and a grid of params.yaml values. Each grid point x seed is one DVC experiment (`experiments`),

    dvc exp run --queue -n seeds-s3 -S train_segmenter.segmenter.seed=3 -S eval_zs3.split='dev' \\
        -S eval_zs3.variants=[...] -S tracking.study='seeds' ... --single-item train_segmenter@C ... eval_zs3

Why it looks like this:
- `--single-item` with the study's stages as targets: eval_zs3 depends on every variant's model, and a
  seed changes every trainer's params, so a plain target would retrain all seven variants. With it, DVC
  runs exactly the listed stages, in order, skipping one whose deps and params did not change (seed 0's
  trainers when params.yaml's seed is 0); everything upstream is checked out from the DVC cache.
- The MLflow grouping travels as params (`tracking.*`, RUN_ONLY: no stage reruns for it), not env
  vars: a queued experiment runs in a temp workspace started by a DVC queue worker.
- Resumable (`runner`): a run whose experiment (same name, on this baseline commit) already holds the
  study's params is not run again, and one already queued or running is waited for, not queued twice.
- The report (`report`) is written from `dvc exp show --json` (the experiments' metrics/zs3.json),
  nothing else.

Modules: `spec` (studies.yaml, Study, Run, the checks), `experiments` (dvc, its queue and workers, the
finished experiments), `report` (summary, reports/studies/<name>.md and .json), `runner` (`run_study`).
"""

from groundiff.app.study.experiments import Experiment, dvc_command, experiments
from groundiff.app.study.report import collect, markdown, summarize, write_report
from groundiff.app.study.runner import run_study
from groundiff.app.study.spec import Run, Study, StudyError, check_study, load_studies, load_study, parse_study

__all__ = ["Experiment", "Run", "Study", "StudyError", "check_study", "collect", "dvc_command", "experiments",
           "load_studies", "load_study", "markdown", "parse_study", "run_study", "summarize", "write_report"]
