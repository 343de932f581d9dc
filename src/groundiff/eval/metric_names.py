"""The names the evaluation stages log their metrics under in MLflow, in one torch-free module:
eval_zs3 and eval_grounding log with them, and `groundiff mlflow-import` names the committed
metrics files with them, without loading the models' libraries."""

from __future__ import annotations

import math


def zs3_metric_names(results: dict[str, dict]) -> dict[str, float]:
    """{"C.hiou": 61.2, "C.iou_star": 70.1, ...} for MLflow; classes without an IoU are left out."""
    flat = {f"{name}.{key}": value for name, r in results.items() for key, value in r.items()
            if key != "per_class" and value is not None}
    flat.update({f"{name}.iou_{c}": v for name, r in results.items() for c, v in r["per_class"].items()
                 if v is not None and math.isfinite(v)})
    return flat


def protocol1_metric_names(metrics: dict[str, dict[str, float | None]]) -> dict[str, float]:
    """{"ours_one_unseen": 71.2, ...} for MLflow; categories with no scored pair are left out."""
    return {f"{m}_{c}": v for m, row in metrics.items() for c, v in row.items() if v is not None}
