"""Distributed synthesis on a Dask LocalCluster: the same bytes as a serial run; clear errors."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

import _resume_worker as world
from conftest import tiny_params, write_params
from groundiff.core.params import ParamsError, from_params
from groundiff.data.shards import complete_shards
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.method.distributed import (ClusterError, DistributedConfig, dask_client, synth_dataset_distributed,
                                   synthesize_distributed)
from groundiff.method.grounding import GroundingModule
from groundiff.method.synth_dataset import synth_dataset
from groundiff.method.synthesis import synthesize


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("section, message", [
    ({"scheduler": "127.0.0.1:8786"}, "is not one of"),
    ({"scheduler": "Local"}, "is not one of"),
    ({"scheduler": "local", "n_workers": 0}, "n_workers must be >= 1"),
    ({"n_workers": "2"}, "distributed.n_workers: expected an integer"),
    ({"workers": 2}, "unknown key(s) distributed.workers"),
])
def test_bad_distributed_params_are_one_clear_error(section, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_params(DistributedConfig, section, "distributed")


def test_defaults_and_addresses():
    assert DistributedConfig().serial and not DistributedConfig("local").serial
    assert DistributedConfig("tcp://10.0.0.5:8786").scheduler == "tcp://10.0.0.5:8786"


def test_unreachable_scheduler_is_one_clear_error_and_touches_nothing(tmp_path):
    with socket.socket() as s:  # a local port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "synth"
    with pytest.raises(ClusterError, match=f"no Dask scheduler answers at tcp://127.0.0.1:{port}"):
        synthesize_distributed(tmp_path / "pipe", world.table(), world.SYNTH_CFG, out, "tiny",
                               DistributedConfig(f"tcp://127.0.0.1:{port}"), timeout=1)
    assert not out.exists()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return world.build(tmp_path_factory.mktemp("tiny_world"))


@pytest.mark.slow  # starting 2 worker processes that import torch + diffusers: ~15-40 s on 2 busy cores
def test_distributed_runs_equal_serial_runs_byte_for_byte(models, tmp_path, project):
    pipe = load_pipeline(models / "pipe")
    module = GroundingModule.from_pretrained(models / "grounding")
    table = world.table()
    synthesize(pipe, table, world.SYNTH_CFG, tmp_path / "serial", "tiny")
    serial_stats = synth_dataset(pipe, module, world.SPLIT, world.DATASET_CFG, tmp_path / "serial_ds", ["a", "b"])
    with dask_client(DistributedConfig("local", n_workers=2)) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        # workers: one OpenMP thread each, and no MALLOC_TRIM_THRESHOLD_ (it made the bf16 UNet 1.8x slower)
        env = client.run(lambda: {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")})
        assert list(env.values()) == [{"OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": None}] * 2
        # synthesize, with one shard already done by an earlier (serial) run: resumed, not redone
        synthesize(pipe, table, world.SYNTH_CFG, tmp_path / "dist", "tiny", shards=[3])
        stats = synthesize_distributed(models / "pipe", table, world.SYNTH_CFG, tmp_path / "dist", "tiny",
                                       client=client)
        assert stats == {"shards": 12, "resumed_shards": 1, "images": len(table)}
        assert _files(tmp_path / "dist") == _files(tmp_path / "serial")
        # synth_dataset: workers load the pipeline and the grounding module from their folders
        dist_stats = synth_dataset_distributed(models / "pipe", models / "grounding", world.SPLIT, world.DATASET_CFG,
                                               tmp_path / "dist_ds", ["a", "b"], client=client)
        assert dist_stats == serial_stats
        assert _files(tmp_path / "dist_ds") == _files(tmp_path / "serial_ds")
        # a missing model fails on the worker, before the driver touches the output
        before = _files(tmp_path / "dist")
        with pytest.raises(FileNotFoundError, match="no diffusers pipeline folder"):
            synthesize_distributed(tmp_path / "nothing", table.iloc[:4], world.SYNTH_CFG, tmp_path / "dist",
                                   "other", client=client)
        assert _files(tmp_path / "dist") == before
        # a shard that fails on its worker: every other shard is still made, then the error is raised
        broken = table.iloc[:8].astype({"seed": object})
        broken.loc[2, "seed"] = 2**70  # no torch generator takes this seed
        with pytest.raises(Exception, match="Overflow"):
            synthesize_distributed(models / "pipe", broken, world.SYNTH_CFG, tmp_path / "broken", "tiny", client=client)
        assert [p.name for p in complete_shards(tmp_path / "broken")] == ["shard_00000", "shard_00002", "shard_00003"]
        # the stage, pointed at the running cluster by address (as a real cluster would be)
        shutil.copytree(models / "pipe", project / "worlds/shapes/diffusion")
        params = tiny_params()
        params["prompts"]["n"] = 8
        params["synthesize"].update(shard_size=3, sampling={"steps": 2, "guidance_scale": 3.0, "batch_size": 2})
        write_params(project, params)
        from groundiff.stages import prompts, synthesize as synthesize_stage

        prompts.main()
        synthesize_stage.main()
        serial = _files(project / "data/synth/train")
        shutil.rmtree(project / "data/synth/train")
        params["distributed"] = {"scheduler": client.scheduler.address, "n_workers": 2}
        write_params(project, params)
        synthesize_stage.main()
        assert _files(project / "data/synth/train") == serial
        assert yaml.safe_load((project / "metrics/synthesize.json").read_text())["shards"] == 3


def test_a_worker_reloads_a_model_retrained_in_place(tmp_path):
    from groundiff.method import distributed

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"old")
    loads = []

    def load():
        loads.append((folder / "weights.safetensors").read_bytes())
        return loads[-1]

    key = lambda: (str(folder), "cpu", distributed._stamp(str(folder)))  # noqa: E731
    assert distributed._cached("test", key(), load) == b"old"
    assert distributed._cached("test", key(), load) == b"old" and len(loads) == 1  # cached
    (folder / "weights.safetensors").write_bytes(b"newer")  # retrained: other size and mtime
    assert distributed._cached("test", key(), load) == b"newer" and len(loads) == 2
    distributed._MODELS.pop("test")
