"""Bad input the way users meet it: through `dvc repro`, the `groundiff` CLI and the files on disk.

Each test hashes what is on disk before and after: a bad params.yaml under `dvc repro` (one stage or
all) stops at the `validate` stage before DVC deletes anything; a damaged shard is redone, never
resumed or labelled again from old labels; damaged model files are one line naming the folder and
the stage that remakes it; a locked MLflow store never costs a stage its work.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, copy_project, tiny_params
from groundiff.cli import main as cli
from groundiff.data.shards import MANIFEST, content_digest, damaged_files, write_shard
from groundiff.testing import tiny_shapes_pipeline

BIN = Path(sys.executable).parent


def _hashes(root: Path, skip: tuple[str, ...] = (".git", ".dvc/tmp", ".dvc/cache")) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
            and not any(str(p.relative_to(root)).startswith(s) for s in skip)}


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GROUNDIFF_TRACKING": "0", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC project: the real dvc.yaml, src/ and shapes world, tiny params, no dvc.lock."""
    repo = copy_project(tmp_path_factory.mktemp("repo"), ("metrics/world_diffusion*", "metrics/world_detector*"))
    params = tiny_params()
    params["synthesize"].update(shard_size=20, sampling={**params["synthesize"]["sampling"], "steps": 3,
                                                         "batch_size": 20, "precision": "fp32"})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert _dvc(repo, "init", "-q").returncode == 0
    done = _dvc(repo, "repro", "prompts", "world_setup")
    assert done.returncode == 0, done.stderr
    return repo


def _edit(repo: Path, edit) -> str:
    good = (repo / "params.yaml").read_text()
    params = yaml.safe_load(good)
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return good


# --------------------------------------------------------------------------- 1. nothing lost under dvc repro
@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda p: p["prompts"].update(n=0), "params.yaml: prompts: n must be a positive number of prompts, got 0"),
    (lambda p: p["world"].update(name="shapez"), "params.yaml: world: unknown world 'shapez'; choose one of"),
    (lambda p: p["shapes"]["splits"].update({1: ["ring", "hexagon"]}), "unknown class 'hexagon'"),
    (lambda p: p["shapes"]["splits"].update({1: ["ring", "heart", "ring"]}),
     "params.yaml: shapes.splits.1: unseen lists ring more than once; list each class once"),
    (lambda p: p["shapes"]["splits"].update({1: []}),
     "params.yaml: shapes.splits.1: no unseen classes; a zero-shot split holds out at least one class"),
], ids=["prompts.n=0", "world-typo", "unknown-class", "class-twice", "no-unseen"])
@pytest.mark.parametrize("target", [["prompts"], []], ids=["dvc-repro-prompts", "dvc-repro-all"])
def test_bad_params_under_dvc_repro_delete_nothing(repo, edit, message, target):
    before = _hashes(repo)
    good = _edit(repo, edit)
    try:
        proc = _dvc(repo, "repro", *target)
    finally:
        (repo / "params.yaml").write_text(good)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "failed to reproduce 'validate'" in proc.stderr  # stopped at the gate, before any stage ran
    assert _hashes(repo) == before
    assert _dvc(repo, "status", "prompts").stdout.strip().endswith("up to date.")


@pytest.mark.slow
def test_a_failing_preflight_keeps_the_last_good_world_setup(repo):
    """`world_setup` fails for a paper world without its models; its git-tracked metrics stay."""
    before = _hashes(repo)
    good = (repo / "params.yaml").read_text()
    env = {**os.environ, "GROUNDIFF_TRACKING": "0"}
    try:
        subprocess.run([str(BIN / "groundiff"), "world", "voc"], cwd=repo, check=True, env=env, capture_output=True)
        proc = _dvc(repo, "repro", "world_setup")
    finally:
        (repo / "params.yaml").write_text(good)
    assert proc.returncode != 0 and "the voc world is not ready" in proc.stderr, proc.stderr
    after = _hashes(repo)
    for changed in ("reports/validate.json", "dvc.lock"):  # voc's params are valid: validate ran and says so
        assert after.pop(changed) != before.pop(changed)
    assert after == before  # metrics/world_setup.json and the shapes sources kept


# --------------------------------------------------------------------------- 2. nothing corrupt resumed or recorded
@pytest.mark.slow
def test_a_damaged_image_is_redone_not_recorded_under_dvc_repro(repo):
    """A synthesized PNG truncated after the run: `dvc repro pseudo_label` redoes its shard (warning
    naming it), and dvc.lock records the same data hash as before the damage, never the damaged one."""
    assert _dvc(repo, "repro", "world_data").returncode == 0
    # the shipped world models stand as world_diffusion's and world_detector's outputs (no retraining)
    committed = _dvc(repo, "commit", "-f", "world_diffusion", "world_detector")
    assert committed.returncode == 0, committed.stderr
    first = _dvc(repo, "repro", "pseudo_label")
    assert first.returncode == 0, first.stderr
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    recorded = {o["path"]: o["md5"] for stage in ("synthesize", "pseudo_label") for o in lock[stage]["outs"]
                if o["path"].startswith("data/")}
    png = repo / "data/synth/train/shard_00001/images/000021.png"
    good = png.read_bytes()
    png.write_bytes(good[: len(good) // 2])
    again = _dvc(repo, "repro", "pseudo_label")
    assert again.returncode == 0, again.stderr
    assert "shard_00001: damaged synthesis shard (images/000021.png" in again.stderr, again.stderr
    assert png.read_bytes() == good
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {o["path"]: o["md5"] for stage in ("synthesize", "pseudo_label") for o in lock[stage]["outs"]
            if o["path"].startswith("data/")} == recorded  # the data as before the damage
    assert json.loads((repo / "metrics/synthesize.json").read_text())["resumed_shards"] == 1  # one shard redone


def _synthesize(root: Path):
    from groundiff.core.schema import SamplingConfig, SynthesisConfig
    from groundiff.data.prompts import PromptConfig, sample_prompts
    from groundiff.method.synthesis import synthesize
    from groundiff.worlds.shapes import CLASSES

    table = sample_prompts(CLASSES[:4], PromptConfig(n=4, seed=0))
    cfg = SynthesisConfig(sampling=SamplingConfig(steps=2, guidance_scale=4.0, batch_size=2), capture_t=2,
                          shard_size=2)
    return synthesize(tiny_shapes_pipeline(), table, cfg, root, model_id="tiny")


@pytest.mark.parametrize("damage", ["truncated", "text", "other-valid-png", "deleted"])
def test_a_damaged_shard_is_redone_on_resume_not_passed_on(tmp_path, damage):
    root = tmp_path / "synth"
    _synthesize(root)
    clean = _hashes(root)
    png = root / "shard_00001/images/000002.png"
    other = (root / "shard_00000/images/000000.png").read_bytes()
    {"truncated": lambda: png.write_bytes(png.read_bytes()[: png.stat().st_size // 2]),
     "text": lambda: png.write_text("not an image"),
     "other-valid-png": lambda: png.write_bytes(other),
     "deleted": png.unlink}[damage]()
    assert damaged_files(root / "shard_00001") and not damaged_files(root / "shard_00000")
    with pytest.warns(UserWarning, match=r"shard_00001: damaged synthesis shard \(images/000002.png"):
        stats = _synthesize(root)
    assert stats["resumed_shards"] == 1  # the intact shard kept, the damaged one made again
    assert _hashes(root) == clean  # seeded: the same bytes as the first run


def test_manifest_is_outside_the_data_hash():
    """.dvcignore lists the manifest: DVC's md5 of a shard folder is what it was before manifests."""
    assert MANIFEST in (ROOT / ".dvcignore").read_text().split()


def test_labels_are_reused_only_for_the_images_they_were_made_from(tmp_path):
    from groundiff.method.pseudo_label import reusable_labels, label_shard
    from groundiff.core.schema import PseudoLabelConfig
    from test_bad_inputs import NoDetections, _write_shards

    synth, labels = tmp_path / "synth", tmp_path / "labels"
    _write_shards(synth, n=1, size=2)
    label_shard(NoDetections(), synth / "shard_00000", labels, PseudoLabelConfig())
    assert reusable_labels(labels / "shard_00000", synth / "shard_00000")
    before = content_digest(synth / "shard_00000")
    png = synth / "shard_00000/images/000001.png"
    png.write_bytes((synth / "shard_00000/images/000000.png").read_bytes())  # a valid, different image
    assert content_digest(synth / "shard_00000") != before
    with pytest.warns(UserWarning, match="labelling it again"):
        assert not reusable_labels(labels / "shard_00000", synth / "shard_00000")
    (labels / "shard_00000" / MANIFEST).unlink()  # labels without the writer's record: not trusted
    with pytest.warns(UserWarning):
        assert not reusable_labels(labels / "shard_00000", synth / "shard_00000")


# --------------------------------------------------------------------------- 3. damaged model files
@pytest.fixture
def world(grounded_world):
    return grounded_world


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _widen(path: Path) -> None:
    config = json.loads(path.read_text())
    config["d_model"] *= 2
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("damage, file, cause", [
    (_truncate, "models/grounding/model.safetensors", "SafetensorError"),
    (_widen, "models/grounding/config.json", "size mismatch"),
    (_truncate, "worlds/shapes/diffusion/unet/diffusion_pytorch_model.safetensors", "Error"),
])
def test_damaged_model_files_are_one_line_naming_the_folder_and_its_stage(world, capsys, damage, file, cause):
    damage(world / file)
    before = _hashes(world)
    with pytest.raises(SystemExit) as exit_info:
        cli(["generate", "a photograph of a star", "--classes", "star", "--steps", "2", "--out", "out"])
    assert exit_info.value.code == 2
    out = capsys.readouterr().err
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in out, out
    err = errors[0]
    folder = str(Path(file).parent) if "unet" not in file else "worlds/shapes/diffusion"
    stage = "train_grounding" if "grounding" in file else "world_diffusion"
    assert err.startswith(f"groundiff: error: {folder}: the ") and "cannot be loaded" in err and cause in err, err
    assert err.endswith(f"run `dvc repro {stage}`"), err
    assert _hashes(world) == before


# --------------------------------------------------------------------------- 4. tracking never costs work
STAGE_SCRIPT = """
import sys, time, warnings
from pathlib import Path
from groundiff.core import tracking
warnings.simplefilter("always")
name, hold, log = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "log"
with tracking.stage_run(name, {"p": 1}, root=".") as run:
    Path(name + ".started").touch()       # the run is open
    time.sleep(hold)                      # the work
    Path(name + ".out").write_text("done")
    if log:
        run.log_metrics({"m": 1.0})
print("finished", name)
"""


def _lock_database(db: Path, seconds: float, started: threading.Event) -> None:
    con = sqlite3.connect(db, timeout=60)
    con.execute("BEGIN EXCLUSIVE")
    started.set()
    time.sleep(seconds)
    con.rollback()
    con.close()


def _run_stage(tmp: Path, name: str, hold: float, wait_s: float, log: bool = True) -> subprocess.Popen:
    (tmp / "stage.py").write_text(STAGE_SCRIPT)
    env = {**os.environ, "GROUNDIFF_TRACKING": "1", "GROUNDIFF_TRACKING_WAIT_S": str(wait_s),
           "GROUNDIFF_PARENT_RUN_ID": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "stage.py", name, str(hold), "log" if log else "-"], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs(db: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("groundiff")
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


@pytest.fixture
def tracked(tmp_path: Path) -> Path:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    from groundiff.core import tracking

    os.environ.pop("GROUNDIFF_PARENT_RUN_ID", None)
    with tracking.stage_run("setup", {}, root=tmp_path):  # creates and migrates mlflow.db
        pass
    return tmp_path


@pytest.mark.slow
def test_two_lanes_logging_while_the_store_is_locked_both_finish(tracked):
    """Two stages at once, the database held locked for 28 s: longer than the 20 s MLflow's SQLite
    sessions wait (busy_timeout), so groundiff's own retry carries them through."""
    started = threading.Event()
    locker = threading.Thread(target=_lock_database, args=(tracked / "mlflow.db", 28, started))
    locker.start()
    started.wait(10)
    procs = [_run_stage(tracked, name, 1, wait_s=120) for name in ("lane_a", "lane_b")]
    outs = [p.communicate(timeout=300) for p in procs]
    locker.join()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "finished" in out and "TrackingWarning" not in err, err
    runs = _runs(tracked / "mlflow.db")
    assert runs["lane_a"] == runs["lane_b"] == "FINISHED"


@pytest.mark.slow
def test_a_store_locked_past_the_wait_costs_no_work_and_no_run_stays_running(tracked):
    """Locked mid-stage for longer than the stage waits (MLflow's 20 s, then groundiff's 1 s here): the
    stage warns, exits 0 with its output; the run's end is recorded for later and the next stage
    settles it."""
    proc = _run_stage(tracked, "victim", 1, wait_s=1, log=False)
    deadline = time.time() + 120
    while not (tracked / "victim.started").exists():  # the run is open, the work in progress
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    started = threading.Event()
    locker = threading.Thread(target=_lock_database, args=(tracked / "mlflow.db", 26, started))
    locker.start()
    out, err = proc.communicate(timeout=300)
    locker.join()
    assert proc.returncode == 0 and "finished victim" in out, err
    assert (tracked / "victim.out").read_text() == "done"
    assert "TrackingWarning: MLflow tracking:" in err and "database is locked" in err and "Traceback" not in err, err
    assert _runs(tracked / "mlflow.db")["victim"] == "RUNNING"  # its end could not be written then
    nxt = _run_stage(tracked, "next", 0, wait_s=60)
    assert nxt.wait(timeout=300) == 0
    runs = _runs(tracked / "mlflow.db")
    assert runs["victim"] == "FINISHED" and runs["next"] == "FINISHED"
    assert not (tracked / "mlruns/.unfinished.jsonl").exists()


# --------------------------------------------------------------------------- 6. data validated up front
@pytest.mark.slow
def test_a_bad_training_label_is_named_before_training_under_dvc_repro(repo):
    """One label value outside the vocabulary in one real training label: found before step 1 (not when a
    batch happens to draw it), naming the file and the fix; nothing else on disk changes."""
    done = _dvc(repo, "repro", "world_data")
    assert done.returncode == 0, done.stderr
    import numpy as np
    from PIL import Image

    real = repo / "data/shapes/real"
    first = (real / "ImageSets/Segmentation/train.txt").read_text().split()[3]
    saved = {f: (real / f / f"{first}.png").read_bytes() for f in ("SegmentationClass", "SegmentationClassFull")}
    for folder in ("SegmentationClass", "SegmentationClassFull"):  # seen-only and every-class labels
        label_path = real / folder / f"{first}.png"
        with Image.open(label_path) as img:
            palette, label = img.getpalette(), np.array(img)
        label[0, 0] = 77
        bad = Image.fromarray(label, mode="P")
        bad.putpalette(palette)
        bad.save(label_path)
    before = _hashes(repo)
    try:
        proc = _dvc(repo, "repro", "--single-item", "train_reference@real_all")
        after = _hashes(repo)
    finally:
        for folder, data in saved.items():
            (real / folder / f"{first}.png").write_bytes(data)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"/{first}.png holds label value(s) [77]" in errors[0], errors
    assert "drop " + first + " from " in errors[0] and "train.txt" in errors[0], errors
    assert after == before


# --------------------------------------------------------------------------- 7. file-system errors
def test_an_output_path_that_cannot_be_written_is_one_line(project):
    """`data/prompts` is a file where the stage writes a folder: one line naming it, exit 2."""
    (project / "data").mkdir()
    (project / "data/prompts").write_text("in the way")
    proc = subprocess.run([sys.executable, "-m", "groundiff.stages.prompts"], cwd=project, capture_output=True,
                          text=True, env={**os.environ, "GROUNDIFF_TRACKING": "0"})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: data/prompts: File exists; could not write or remove it: check that the path is a folder")
    assert (project / "data/prompts").read_text() == "in the way"
