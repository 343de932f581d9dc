"""Shared fixtures: tiny params and a temp project directory to run real stages in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Tests run single-threaded: with 2 cores, torch's 2 threads crawl when anything else is busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_params() -> dict:
    """The project's real params.yaml, shrunk to test size."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world_data"].update(n_train=12, n_val=6, n_dev=4)
    params["prompts"].update(n=40)
    params["distributed"].update(scheduler="")  # in the stage's process; test_distributed covers clusters
    return params


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp project root holding tiny params.yaml; stages run with cwd there, tracking off."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GROUNDIFF_TRACKING", "0")
    return tmp_path


def copy_project(dest: Path, extra: tuple[str, ...] = ()) -> Path:
    """Copy the project's real dvc.yaml, src/ and shapes world (and `extra` paths, globs allowed) to `dest`,
    as git lists them (tracked and not ignored): what a tiny `dvc repro` / `dvc exp run` project needs."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                            "dvc.yaml", "src", "worlds/shapes", ".dvcignore", *extra],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes((ROOT / rel).read_bytes())
    return dest


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def grounded_world(project: Path) -> Path:
    """`project` with a tiny shapes pipeline in worlds/shapes/diffusion and an untrained grounding module
    of its architecture in models/grounding: what `groundiff generate` needs."""
    from groundiff.method.grounding import GroundingConfig, GroundingModule
    from groundiff.testing import tiny_shapes_pipeline

    pipe = tiny_shapes_pipeline(project / "worlds/shapes/diffusion")
    cfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=16, image_size=32,
                                           d_model=32, n_heads=2, ffn_dim=64, n_layers=1)
    GroundingModule(cfg).save_pretrained(project / "models/grounding")
    return project


def tracking_project(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`root` as an empty project (dvc.yaml only) with tracking on and no inherited MLflow settings."""
    for name in ("MLFLOW_TRACKING_URI", "GROUNDIFF_PARENT_RUN_ID", "GROUNDIFF_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GROUNDIFF_TRACKING", "1")
    (root / "dvc.yaml").write_text("")
    return root


def stop_process_group(proc, timeout: float) -> None:
    """SIGTERM the process group a test started (start_new_session=True), then SIGKILL what is left."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mmseg_missing() -> str:
    """Why the mmseg backend cannot run here ("" when it can)."""
    try:
        import mmseg  # noqa: F401
        from mmcv.ops import point_sample  # noqa: F401
    except (ImportError, AssertionError) as err:
        return f"{type(err).__name__}: {err}"
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `mmseg` need `bash scripts/install_mmseg.sh`: skipped without it, unless
    GROUNDIFF_REQUIRE_MMSEG=1 (CI), where a missing mmseg stops the run instead of hiding them."""
    marked = [item for item in items if item.get_closest_marker("mmseg")]
    if not marked or not (why := _mmseg_missing()):
        return
    if os.environ.get("GROUNDIFF_REQUIRE_MMSEG") == "1":
        raise pytest.UsageError(f"GROUNDIFF_REQUIRE_MMSEG=1 but the mmseg backend cannot run ({why}); "
                                "run `bash scripts/install_mmseg.sh`")
    skip = pytest.mark.skip(reason=f"needs mmseg: bash scripts/install_mmseg.sh ({why})")
    for item in marked:
        item.add_marker(skip)
