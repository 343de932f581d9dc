"""What the MLflow UI shows of the groundiff experiment: its kind tag and headline view in a real SQLite
store, and (marker `browser`) the page itself: `mlflow ui` on 127.0.0.1 over an imported store with a
three-seed study, opened in Debian's chromium.

MLflow 3.17's UI opens an experiment on the GenAI overview in a fresh browser whatever the experiment's
kind tag says (its GenAI / Model training switch lives in localStorage, mlflow/mlflow#24498); the link
`tracking.runs_url` gives opens the runs table in the Model training part, with the saved headline view.
GROUNDIFF_WRITE_SCREENSHOTS=1 refreshes docs/figures/mlflow_runs.png and mlflow_compare.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, free_port, stop_process_group, tracking_project
from groundiff.core import tracking
from test_mlflow_import import SEED_HIOU, client_for, seed_study, shipped_checkout

SCREENSHOTS = ROOT / "docs" / "figures"
SERVER_LIFETIME_S = 300  # `timeout` ends the UI server after this, whatever happens to pytest


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project as cwd, tracking on, no inherited MLflow settings."""
    monkeypatch.chdir(tracking_project(tmp_path, monkeypatch))
    return tmp_path


def view_columns(client, experiment_id: str) -> list[str] | None:
    value = client.get_experiment(experiment_id).tags.get(tracking.VIEW_TAG_PREFIX + tracking.VIEW_KEY)
    return None if value is None else json.loads(json.loads(value)["state"])["selectedColumns"]


# --------------------------------------------------------------------------- the store


def test_the_experiment_a_stage_creates_is_a_model_training_one(root: Path) -> None:
    with tracking.stage_run("prompts", {"seed": 0}) as run:
        run.log_metrics({"prompts": 12})
    client, experiment_id = tracking.open_experiment()
    assert client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert view_columns(client, experiment_id) is None  # no headline metric yet: no view


def test_an_older_untagged_experiment_is_tagged_and_a_kind_a_user_chose_is_kept(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    old = client.create_experiment("groundiff", artifact_location=tracking.artifact_root())  # before the tag
    chosen = client.create_experiment("mine", tags={tracking.EXPERIMENT_KIND_TAG: "regression"})
    with tracking.stage_run("prompts", {}):
        pass
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    monkeypatch.setenv("GROUNDIFF_EXPERIMENT", "mine")
    with tracking.stage_run("prompts", {}):
        pass
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "regression"


def test_a_stage_that_logs_a_headline_metric_puts_it_in_the_saved_view(root: Path) -> None:
    with tracking.pipeline_run("pipeline") as parent:
        with tracking.stage_run("eval_zs3", {}, parent_run_id=parent) as run:
            run.log_metrics({"C.hiou": 61.0, "C.miou_seen": 58.0, "C.miou_unseen": 64.5, "C.iou_star": 70.0})
        with tracking.stage_run("eval_grounding", {}, parent_run_id=parent) as run:
            run.log_metrics({"ours_one_unseen": 80.0, "daam_one_unseen": 7.0})
    client, experiment_id = tracking.open_experiment()
    assert view_columns(client, experiment_id) == [
        "metrics.`C.hiou`", "metrics.`ours_one_unseen`", "metrics.`C.miou_seen`", "metrics.`C.miou_unseen`",
        *[f"tags.`{t}`" for t in tracking.VIEW_TAGS]]


def test_a_study_s_means_join_the_saved_view_when_it_ends(root: Path) -> None:
    run_id = tracking.study_run("seeds")
    tracking.end_study_run(run_id, metrics={"C.hiou_mean": 60.1, "C.hiou_sd": 1.2})
    client, experiment_id = tracking.open_experiment()
    assert "metrics.`C.hiou_mean`" in view_columns(client, experiment_id)


def test_headline_columns_read_hiou_first_then_protocol_one_then_seen_and_unseen() -> None:
    keys = ["loss", "D.miou_seen", "C.hiou", "real_all.hiou", "C.hiou_mean", "ours_two_seen", "ours_one_seen",
            "ours_norm_batch_one_seen", "C.miou_unseen", "lr=0.1/C.hiou_mean", "C.iou_star"]
    assert tracking.headline_columns(keys) == [f"metrics.`{k}`" for k in [
        "C.hiou", "C.hiou_mean", "lr=0.1/C.hiou_mean", "real_all.hiou", "ours_one_seen", "ours_two_seen",
        "D.miou_seen", "C.miou_unseen"]]


# --------------------------------------------------------------------------- the page, in a browser


@dataclass
class Served:
    base: str
    experiment_id: str
    parent_run_id: str  # "shipped results @ <commit>"
    study_run_id: str  # "study seeds (shipped)"
    seed_runs: dict[int, str]  # seed -> run id
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A checkout with the shipped Protocol I/II metrics and a three-seed study, imported, served by
    `mlflow ui` as docs/mlflow.md starts it (a free 127.0.0.1 port)."""
    from groundiff.app.mlflow_import import import_shipped

    if shutil.which("chromium") is None:  # before starting anything
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    for name in ("MLFLOW_TRACKING_URI", "GROUNDIFF_EXPERIMENT"):
        os.environ.pop(name, None)
    root = shipped_checkout(tmp_path_factory.mktemp("clone") / "groundiff",
                            only=("metrics/zs3.json", "metrics/protocol1.json"), study=seed_study())
    result = import_shipped(root)
    seeds = client_for(root).search_runs([result.experiment_id], "tags.`groundiff.study` = 'seeds' and "
                                         "tags.`groundiff.seed` != ''")
    seed_runs = dict(sorted((int(r.data.tags["groundiff.seed"]), r.info.run_id) for r in seeds))
    (study,) = client_for(root).search_runs([result.experiment_id], "tags.`groundiff.kind` = 'shipped_study'")
    port, log = free_port(), root / "mlflow_ui.log"
    cmd = ["timeout", str(SERVER_LIFETIME_S), str(Path(sys.executable).parent / "mlflow"), "ui",
           "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", str(root / "mlruns"),
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"mlflow ui exited:\n{log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, f"mlflow ui not up after 60 s:\n{log.read_text()[-3000:]}"
                time.sleep(0.3)
        yield Served(base, result.experiment_id, result.parent_run_id, study.info.run_id, seed_runs, log)
    finally:
        stop_process_group(proc, timeout=20)


@pytest.mark.browser
def test_the_runs_table_and_the_seed_comparison_show_each_seeds_hiou(served: Served, tmp_path: Path) -> None:
    import playwright.sync_api as playwright

    chromium, expect = shutil.which("chromium"), playwright.expect
    expect.set_options(timeout=30_000)  # a loaded CI machine: the UI's first paint can take more than 5 s
    assert sorted(served.seed_runs) == [0, 1, 2]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(30_000)

            # The link `groundiff mlflow-import` prints: the runs table (not the GenAI overview), headline columns.
            page.goto(tracking.runs_url(served.experiment_id, served.base))
            expect(page.get_by_test_id("saved-views-trigger")).to_have_text("Headline metrics")
            assert f"/experiments/{served.experiment_id}/runs" in page.url
            expect(page.get_by_text("Detect Issues")).to_have_count(0)  # the GenAI overview's button
            header = page.get_by_role("row").filter(has_text="A.hiou")
            expect(header).to_contain_text("C.hiou")  # hIoU first; the table renders the columns in view only
            page.get_by_role("button", name="Close").last.click()  # the assistant panel: room for the table

            def row(run_id: str, text: str):  # the table draws a row as parts (name, metrics): any part with text
                return page.locator(f'[role="row"][row-id="{run_id}"]', has_text=text).first

            zs3 = json.loads((ROOT / "metrics/zs3.json").read_text())  # the checkout holds HEAD's copy
            expect(row(served.parent_run_id, f"{zs3['A']['hiou']:g}")).to_be_visible()
            row(served.parent_run_id, "shipped results @").locator("button").first.click()  # its stages and study
            row(served.study_run_id, "study seeds (shipped)").locator("button").first.click()  # a run per seed
            for seed, run_id in served.seed_runs.items():
                expect(row(run_id, f"seeds-s{seed}")).to_be_visible()
                expect(row(run_id, f"{SEED_HIOU['C'][seed]:g}")).to_be_visible()
            page.screenshot(path=str(tmp_path / "mlflow_runs.png"))

            # MLflow's run comparison of the three seeds: each seed's hIoU side by side.
            page.set_viewport_size({"width": 1600, "height": 1500})  # the plot, run names and metrics in one view
            page.goto(tracking.compare_url(served.seed_runs.values(), served.experiment_id, served.base))
            expect(page.get_by_text("Comparing 3 Runs")).to_be_visible()
            for seed in served.seed_runs:
                expect(page.get_by_text(f"seeds-s{seed}", exact=True).first).to_be_visible()
            for variant, values in SEED_HIOU.items():  # the metrics grid: names, then a value per run
                expect(page.get_by_text(f"{variant}.hiou", exact=True).last).to_be_visible()
                for value in values:
                    expect(page.get_by_text(f"{value:g}", exact=True).first).to_be_visible()
            close = page.get_by_role("button", name="Close")
            if close.count():
                close.last.click()
            expect(page.locator(".js-plotly-plot").first).to_be_visible()  # the plot drawn before the picture
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "mlflow_compare.png"))
        finally:
            browser.close()
    if os.environ.get("GROUNDIFF_WRITE_SCREENSHOTS") == "1":  # refresh the docs' screenshots
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in ("mlflow_runs.png", "mlflow_compare.png"):
            shutil.copy(tmp_path / name, SCREENSHOTS / name)
