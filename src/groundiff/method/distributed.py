"""Fan the shards of `synthesize` and `synth_dataset` out on a Dask cluster.

Synthesis is embarrassingly parallel: every row has its own seed, and a shard is written
atomically by whoever generates it. So the driver (the stage's process) does only three things:

    1. check the models once on a worker (a missing or mismatched model fails here, before any
       output is touched),
    2. prepare the output folder (fingerprint; half-written leftovers removed) and list the
       shards still to do, exactly as a serial run does,
    3. submit one task per shard; each task writes its shard and returns nothing but its number.

Models never travel through Dask: tasks get *paths* and each worker process loads the pipeline
(and grounding module; and the oracle, from a small picklable loader, when it labels) itself,
once, and keeps it for every later task it runs. The shards are
the same bytes as a serial run's, for the same seeds, because each image depends only on its
own row (prompt, seed) and settings — never on which worker or batch made it. (Bit-identity
also needs the same float arithmetic: the same device and torch threads per process; Dask's
workers run with OMP_NUM_THREADS=1, as the tests do.)

    distributed:
      scheduler: ""              # "" = serial, in the stage's process (default)
                                 # "local" = a LocalCluster of n_workers processes, 1 thread each
                                 # "tcp://host:8786" = a running `dask scheduler`
      n_workers: 2

A real cluster's workers need this package installed (`pip install -e .`, same version) and
the project folder at the same path (a shared file system): tasks carry absolute paths.
Dask is imported only when a cluster is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from groundiff.core.params import ParamsError
from groundiff.method.synthesis import (SynthesisConfig, model_fingerprint, plan_synthesis, shard_rows, synthesis_stats,
                                         synthesize, write_synthesis_shard)
from groundiff.core.schema import DistributedConfig

#: synth_dataset's oracle when it labels: (its id, a folder or a name; a picklable `() -> Oracle` loader).
#: The loader runs on the worker, in its working directory: a LocalCluster's is the stage's; start a
#: remote `dask worker` in the project folder (the stage's loader reads the world's oracle from there)
OracleSource = tuple[str, Callable[[], Any]]


class ClusterError(ParamsError):
    """The Dask scheduler named in params (`distributed.scheduler`) cannot be reached."""


SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"


def worker_environ() -> dict[str, Any]:
    """Dask's environment for new worker processes, without its MALLOC_TRIM_THRESHOLD_.

    Dask sets it to 64 KiB so that workers hand freed memory back to the OS at once. The bf16
    UNet casts its weights at every call, and with that setting each cast's buffers are unmapped
    and mapped again: a worker generated at fp32 speed (43.9 s for 50 images against 25.6 s in
    the stage's own process, one thread each, measured). Its other entries (one thread for
    OpenMP, MKL, OpenBLAS) stay.
    """
    import dask

    environ = dict(dask.config.get(SPAWN_ENVIRON, default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextmanager
def dask_client(cfg: DistributedConfig, timeout: float = 30.0) -> Iterator[Any]:
    """A `dask.distributed.Client` for `cfg`: a fresh LocalCluster, or a running scheduler."""
    if cfg.serial:
        raise ValueError("distributed.scheduler is \"\" (serial): no cluster to connect to")
    import dask
    from dask.distributed import Client, LocalCluster

    if cfg.scheduler == "local":
        # processes (not threads): torch releases the GIL only in places, and one thread per
        # worker keeps each worker's arithmetic identical to a single-threaded serial run.
        with dask.config.set({SPAWN_ENVIRON: worker_environ()}), \
                LocalCluster(n_workers=cfg.n_workers, threads_per_worker=1, processes=True,
                             host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(cfg.scheduler, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise ClusterError(
            f"params.yaml: distributed.scheduler: no Dask scheduler answers at {cfg.scheduler} ({err}); "
            "start one (`dask scheduler`, then `dask worker <address>` on each machine), or set "
            "distributed.scheduler to \"local\" (a cluster on this machine) or \"\" (serial)"
        ) from None
    with client:
        yield client


# --------------------------------------------------------------------------- on the workers

_MODELS: dict[str, tuple[tuple, Any]] = {}  # per worker process, per kind: (key, model), reused by later tasks


def _cached(kind: str, key: tuple, load):
    """The model of `kind` for `key`, loaded once per worker; a new key replaces the old model."""
    held = _MODELS.get(kind)
    if held is None or held[0] != key:
        _MODELS.pop(kind, None)  # free the old one first: a worker holds one model of each kind
        _MODELS[kind] = (key, load())
    return _MODELS[kind][1]


def _stamp(source: str) -> tuple:
    """What identifies a model folder's current files, cheaply (names, sizes, mtimes): a worker
    that outlives a retraining must not keep serving the old weights from its cache."""
    path = Path(source)
    if not path.is_dir():
        return (source,)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _pipeline(source: str, device: str):
    from groundiff.diffusion.pipeline import load_pipeline

    return _cached("pipeline", (source, device, _stamp(source)), lambda: load_pipeline(source, device))


def _grounding(folder: str, device: str):
    from groundiff.method.grounding import GroundingModule

    return _cached("grounding", (folder, device, _stamp(folder)),
                   lambda: GroundingModule.from_pretrained(folder, device=device))


def _check_pipeline_task(source: str, device: str) -> None:
    _pipeline(source, device)


def _synthesis_task(source: str, device: str, rows: pd.DataFrame, cfg: SynthesisConfig, root: str,
                    shard: int) -> int:
    write_synthesis_shard(_pipeline(source, device), rows, cfg, Path(root), shard)
    return shard


def _dataset_models(source: str, grounding: str, device: str, split, cfg):
    from groundiff.method.synth_dataset import check_models, dataset_embeddings

    pipe, module = _pipeline(source, device), _grounding(grounding, device)
    check_models(pipe, module)
    key = (source, device, _stamp(source), split.classes, cfg.grounding_template)
    return pipe, module, _cached("embeddings", key, lambda: dataset_embeddings(pipe, split, cfg))


def _oracle(oracle: OracleSource | None):
    """The oracle a worker labels with (synth_dataset.labels: oracle), loaded once per worker."""
    if oracle is None:
        return None
    oracle_id, load = oracle
    return _cached("oracle", (oracle_id, _stamp(oracle_id)), load)


def _check_dataset_task(source: str, grounding: str, device: str, split, cfg,
                        oracle: OracleSource | None = None) -> None:
    _dataset_models(source, grounding, device, split, cfg)
    _oracle(oracle)


def _dataset_task(source: str, grounding: str, device: str, split, cfg, rows: pd.DataFrame, root: str,
                  shard: int, oracle: OracleSource | None = None) -> int:
    from groundiff.method.synth_dataset import make_shard

    pipe, module, embeddings = _dataset_models(source, grounding, device, split, cfg)
    make_shard(pipe, module, rows, split, cfg, embeddings, Path(root), shard, _oracle(oracle))
    return shard


# --------------------------------------------------------------------------- on the driver


def _local(path: str | Path) -> str:
    """An absolute path for a local folder (workers may run elsewhere); a hub id stays as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def load_on_workers(client, source: str | Path, device: str = "cpu") -> None:
    """Load the pipeline on every worker now (e.g. so that a benchmark times generation only)."""
    client.run(_check_pipeline_task, _local(source), device)


def _run(client, tasks: list[tuple], desc: str) -> None:
    """Submit (fn, *args) tasks and wait for *all* of them; then raise the first failure, as raised there.

    Waiting for all means that, once this returns, no task is still writing into the output (a
    rerun could otherwise race a straggler for the same shard), and every shard that could be
    made was made: the rerun redoes only the failed ones.
    """
    from dask.distributed import as_completed

    futures = [client.submit(fn, *args, pure=False, retries=0) for fn, *args in tasks]
    failed = None
    try:
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, mininterval=5):
            if failed is None and future.status == "error":
                failed = future
    except BaseException:  # interrupted: drop what has not started (a LocalCluster is closed anyway)
        client.cancel(futures)
        raise
    if failed is not None:
        failed.result()  # re-raises the worker's exception here


@contextmanager
def _client_for(dist: DistributedConfig | None, client, timeout: float) -> Iterator[Any]:
    if client is not None:
        yield client
    elif dist is None:
        raise ValueError("pass `dist` (a DistributedConfig) or an open dask `client`")
    else:
        with dask_client(dist, timeout) as opened:
            yield opened


def synthesize_distributed(source: str | Path, table: pd.DataFrame, cfg: SynthesisConfig, root: Path,
                           model_id: str, dist: DistributedConfig | None = None, device: str = "cpu",
                           shards: list[int] | None = None, client=None, timeout: float = 30.0) -> dict:
    """`synthesis.synthesize` with each shard generated by a Dask worker; the same output and stats.

    source: the diffusers pipeline (folder or hub id) each worker loads; `client`: an open Dask
    client to use instead of starting one from `dist`.
    """
    source, root = _local(source), Path(root).resolve()
    with _client_for(dist, client, timeout) as c:
        c.submit(_check_pipeline_task, source, device, pure=False).result()  # bad model: fail before any write
        plan = plan_synthesis(table, cfg, root, model_id, shards)
        _run(c, [(_synthesis_task, source, device, shard_rows(table, cfg.shard_size, s), cfg, str(root), s)
                 for s in plan.todo], "synthesize shards")
    return synthesis_stats(plan, table)


def synth_dataset_distributed(source: str | Path, grounding: str | Path, split, cfg, root: Path,
                              model_ids: list[str], dist: DistributedConfig | None = None, device: str = "cpu",
                              shards: list[int] | None = None, client=None, timeout: float = 30.0,
                              oracle: OracleSource | None = None) -> dict:
    """`synth_dataset.synth_dataset` with each shard made by a Dask worker; the same output and stats.

    source / grounding: the pipeline and the grounding-module folder each worker loads; `oracle`
    (cfg.labels: oracle): the oracle's id and a picklable loader each worker calls once.
    """
    from groundiff.method.synth_dataset import check_oracle, dataset_stats, plan_dataset

    check_oracle(cfg, oracle)
    source, grounding, root = _local(source), _local(grounding), Path(root).resolve()
    with _client_for(dist, client, timeout) as c:
        c.submit(_check_dataset_task, source, grounding, device, split, cfg, oracle, pure=False).result()
        table, plan = plan_dataset(split, cfg, root, model_ids, shards)
        _run(c, [(_dataset_task, source, grounding, device, split, cfg, shard_rows(table, cfg.shard_size, s),
                  str(root), s, oracle) for s in plan.todo], "synth_dataset shards")
    return dataset_stats(root, split, plan)


# --------------------------------------------------------------------------- either way


def run_synthesize(source: str | Path, table: pd.DataFrame, cfg: SynthesisConfig, root: Path,
                   dist: DistributedConfig, device: str = "cpu") -> dict:
    """The `synthesize` stage's work: serially in this process when `dist.serial` (the pipeline
    loaded here), else on the Dask cluster `dist` names (each worker loads it); the same bytes.

    The model enters the fingerprint by content: a retrained model does not resume old shards.
    """
    model_id = model_fingerprint(source)
    if dist.serial:
        from groundiff.diffusion.pipeline import load_pipeline

        return synthesize(load_pipeline(source, device), table, cfg, root, model_id=model_id)
    return synthesize_distributed(source, table, cfg, root, model_id=model_id, dist=dist, device=device)


def run_synth_dataset(source: str | Path, grounding: str | Path, split, cfg, root: Path,
                      dist: DistributedConfig, device: str = "cpu", oracle: OracleSource | None = None) -> dict:
    """The `synth_dataset` stage's work, serially or on a Dask cluster as `run_synthesize`; the
    pipeline and the grounding module enter the fingerprint by content (retrained: start over).

    oracle: (its id: a folder or a name, its loader: a picklable `() -> Oracle`), exactly when
    `cfg.labels` is oracle; it then labels the images and enters the fingerprint by content too.
    """
    model_ids = [model_fingerprint(source), model_fingerprint(grounding)]
    if oracle is not None:  # by the id as given (a relative folder): the same fingerprint in any checkout
        model_ids.append(model_fingerprint(oracle[0]))
        oracle = (_local(oracle[0]), oracle[1])
    if dist.serial:
        from groundiff.diffusion.pipeline import load_pipeline
        from groundiff.method.grounding import GroundingModule
        from groundiff.method.synth_dataset import synth_dataset

        module = GroundingModule.from_pretrained(grounding, device=device)
        pipe = load_pipeline(source, device)
        return synth_dataset(pipe, module, split, cfg, root, model_ids=model_ids,
                             oracle=None if oracle is None else oracle[1]())
    return synth_dataset_distributed(source, grounding, split, cfg, root, model_ids=model_ids, dist=dist,
                                     device=device, oracle=oracle)
