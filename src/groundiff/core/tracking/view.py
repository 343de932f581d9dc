"""The experiment in MLflow's UI: which metrics are headline ones, the saved view that shows them, links.

MLflow 3.17's UI does not open an experiment by its kind tag: its own "GenAI / Model training" switch
decides (browser localStorage `mlflow.workflowType`, GenAI in a fresh browser; the URL parameter
`workflowType=machine_learning` overrides it), so a fresh browser lands on the GenAI overview whatever the
tag says (mlflow/mlflow#24498). The runs table keeps its visible columns in localStorage too. What the
store itself can hold is a *saved view*: experiment tag `mlflow.sharedViewState.<key>`, a JSON envelope
{name, createdAt, updatedAt, state} whose state names the columns; the runs page lists it under "Views"
and `?viewStateShareKey=<key>` opens it. `runs_url` is the link that opens both: runs table, headline
columns. It is rewritten with the headline metrics the experiment holds when a stage run logged one
(and by `groundiff mlflow-import`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

VIEW_KEY = "groundiff-headline"
VIEW_NAME = "Headline metrics"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
HEADLINE = ("hiou", "miou_seen", "miou_unseen")  # Protocol II, per variant: `<variant>.hiou`, ...
PROTOCOL1 = ("one_seen", "one_unseen", "two_seen", "two_unseen", "two_seen_unseen")  # `ours_<category>`
VIEW_TAGS = ("groundiff.study", "groundiff.variant", "groundiff.seed", "groundiff.split")  # shown as columns


def is_headline(key: str) -> bool:
    """A headline metric: `[<point>/]<variant>.hiou|miou_seen|miou_unseen[_mean]`, or Protocol I's
    `ours_<category>`."""
    last = key.rsplit(".", 1)[-1].removesuffix("_mean")
    return ("." in key and last in HEADLINE) or key in {f"ours_{c}" for c in PROTOCOL1}


def headline_columns(metric_keys: Iterable[str]) -> list[str]:
    """The runs table's column ids for the headline metrics among `metric_keys`, in reading order:
    every variant's hIoU (then its study mean), Protocol I, then the variants' seen and unseen mIoU."""
    def order(key: str) -> tuple:
        if key.startswith("ours_"):
            return (1, PROTOCOL1.index(key.removeprefix("ours_")), "", False)
        head, last = key.rsplit(".", 1)
        metric = HEADLINE.index(last.removesuffix("_mean"))
        return (0 if metric == 0 else 2, metric, head, last.endswith("_mean"))

    return [f"metrics.`{k}`" for k in sorted({k for k in metric_keys if is_headline(k)}, key=order)]


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table with the headline view, in the "Model training" part of the UI."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def compare_url(run_ids: Iterable[str], experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """MLflow's run-comparison page for `run_ids` (every metric of each run side by side)."""
    from urllib.parse import quote

    runs = quote(json.dumps(list(run_ids)), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([experiment_id]), safe='')}" \
           "&workflowType=machine_learning"


def refresh_headline_view(client: MlflowClient, experiment_id: str) -> list[str]:
    """Rewrite the saved view `VIEW_KEY` with the headline metrics the experiment's runs hold; returns
    its metric columns. A column no run has is not shown by the UI, so the view never shows empty ones."""
    keys: set[str] = set()
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            keys.update(run.data.metrics)
        token = page.token
        if not token:
            break
    columns = headline_columns(keys)
    shown = columns + [f"tags.`{t}`" for t in VIEW_TAGS]
    old = client.get_experiment(experiment_id).tags.get(VIEW_TAG_PREFIX + VIEW_KEY)
    now = int(time.time() * 1000)
    try:
        created = int(json.loads(old)["createdAt"]) if old else now
    except (ValueError, KeyError, TypeError):  # not ours, or damaged: rewritten
        created = now
    state = {"selectedColumns": shown, "columnOrder": shown}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(
        {"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": json.dumps(state)}))
    return columns
