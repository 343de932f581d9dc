"""MLflow tracking for the pipeline: one parent run per pipeline run, one child run per stage.

Why it looks like this:
- Tracking goes to SQLite at `<project root>/mlflow.db` (absolute), artifacts to `<root>/mlruns/`.
  MLflow 3 refuses a bare `./mlruns` file store, and a *relative* URI would land in DVC's temp
  workspaces under `dvc exp run --temp/--queue`; from such a workspace (`.dvc/tmp/exps/...`) the
  root resolves to the real repository so every run lands in one database. No server is needed.
- Everything goes through `MlflowClient` with explicit run ids, never MLflow's *active run*: the
  active-run stack is thread-local, so a Prefect task or Dask worker thread would not see the
  pipeline's run and would start a stray top-level run instead of nesting.
- A stage finds its parent in this order: the `parent_run_id` argument, the env var
  `GROUNDIFF_PARENT_RUN_ID` (set by the Prefect flow for the `dvc repro` it launches), params.yaml's
  `tracking.parent_run_id` (set by `groundiff study` in each of its DVC experiments: the study's one
  parent run; the stage run is then tagged with the study, grid point, seed, split and variant), else
  a "dvc repro @ <commit>" run that groups every stage a plain `dvc repro` ran on that commit.

Environment:
    MLFLOW_TRACKING_URI       use this store (e.g. an MLflow server) instead of `<root>/mlflow.db`
    GROUNDIFF_EXPERIMENT      experiment name (default "groundiff")
    GROUNDIFF_PARENT_RUN_ID   nest stage runs under this run
    GROUNDIFF_TRACKING=0      turn tracking off (`off`/`false` too): `stage_run` yields a no-op
    GROUNDIFF_TRACKING_WAIT_S how long a call waits while the SQLite store is busy (default 120)

Tracking never costs work. Two Prefect lanes (or a user's `mlflow ui`) share one SQLite file, so a
call that finds it locked waits and retries (`GROUNDIFF_TRACKING_WAIT_S`). If the store stays
unavailable, the stage warns once and goes on untracked: its outputs and exit status are what its
work deserves. A run whose end could not be recorded is listed in `<root>/mlruns/.unfinished.jsonl`
and marked FINISHED/FAILED by the next stage that reaches the store, so no run stays RUNNING.

Browse the runs with `mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --default-artifact-root
$PWD/mlruns` and open `runs_url(...)` (docs/mlflow.md: why that link, and `groundiff mlflow-import`).

Modules, each importing only those before it (mlflow itself is imported only inside the calls that
need it, so a stage with tracking off never loads it):
- `store`: where things go (project root, tracking URI, artifact root, `enabled`, `git_commit`), the
  client that waits out a locked store, `TrackingWarning`, runs left unfinished, the experiment.
- `view`: the experiment in the UI: headline metrics, the saved view that shows them, `runs_url`.
- `handle`: `StageRun`, one run's logging handle (`flatten_params`, MLflow's limits), how a run ends.
- `studies`: `study_context` (a stage's study, from params.yaml) and the study's parent run.
- `runs`: `pipeline_run` and `stage_run`, nested under the parent found as above.
"""

from groundiff.core.tracking.handle import (MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, NullStageRun, StageRun,
                                            flatten_params, is_number)
from groundiff.core.tracking.runs import PARENT_ENV, ParentRunMissing, pipeline_run, stage_run
from groundiff.core.tracking.store import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TrackingWarning, artifact_root, enabled,
                                           git_commit, open_experiment, project_root, tracking_uri)
from groundiff.core.tracking.studies import STUDY_TAGS, end_study_run, find_study_run, study_context, study_run
from groundiff.core.tracking.view import (VIEW_KEY, VIEW_TAG_PREFIX, VIEW_TAGS, compare_url, headline_columns,
                                          is_headline, refresh_headline_view, runs_url)

__all__ = [
    "NullStageRun", "ParentRunMissing", "StageRun", "TrackingWarning", "artifact_root", "enabled", "flatten_params", "git_commit", "is_number",
    "pipeline_run", "project_root", "stage_run", "tracking_uri",
    "STUDY_TAGS", "end_study_run", "find_study_run", "study_context", "study_run",
    "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "VIEW_KEY", "compare_url", "headline_columns", "is_headline",
    "open_experiment", "refresh_headline_view", "runs_url",
    "MAX_METRICS_PER_BATCH", "MAX_PARAMS_PER_BATCH", "PARENT_ENV", "VIEW_TAG_PREFIX", "VIEW_TAGS",
]
