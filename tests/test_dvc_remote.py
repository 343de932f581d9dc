"""DVC remote storage: the project's default remote, and a push / wipe / pull round trip."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from groundiff.data.shards import read_shard, write_shard

ROOT = Path(__file__).resolve().parents[1]


def test_default_remote_is_a_folder_beside_the_clone():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["core"]["remote"] == "local"
    url = config['\'remote "local"\'']["url"]
    assert not Path(url).is_absolute(), "a relative url works for every clone, wherever it lives"
    # DVC resolves a relative url against .dvc/: the remote is <clone>/../groundiff-dvc-remote
    assert (ROOT / ".dvc" / url).resolve() == ROOT.parent.resolve() / "groundiff-dvc-remote"


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_wipe_pull_gives_back_the_same_bytes(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "remote", "add", "-d", "local", "../groundiff-dvc-remote")  # the project's setup, in miniature
    # a synthetic-dataset-like folder (a real shard) and a model-like file
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"index": [0, 1], "prompt": ["a photograph of a star"] * 2, "classes": ["star"] * 2,
                         "n_objects": [1, 1], "seed": [3, 4]})
    write_shard(repo / "data/synth/train", 0, meta, rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                torch.randn(2, 4, 32, 32), torch.tensor([21, 21]))
    (repo / "models").mkdir()
    save_file({"w": torch.randn(64, 64)}, str(repo / "models/grounding.safetensors"))
    data, model = _files(repo / "data/synth/train"), (repo / "models/grounding.safetensors").read_bytes()

    _dvc(repo, "add", "data/synth/train", "models/grounding.safetensors")
    _dvc(repo, "push")
    assert (tmp_path / "groundiff-dvc-remote" / "files").is_dir()
    shutil.rmtree(repo / ".dvc" / "cache")  # a fresh clone: no cache and no workspace copies
    shutil.rmtree(repo / "data/synth/train")
    (repo / "models/grounding.safetensors").unlink()

    _dvc(repo, "pull")
    assert _files(repo / "data/synth/train") == data
    assert (repo / "models/grounding.safetensors").read_bytes() == model
    assert [s.index for s in read_shard(repo / "data/synth/train/shard_00000")] == [0, 1]
    assert "in sync" in _dvc(repo, "status", "--cloud")
