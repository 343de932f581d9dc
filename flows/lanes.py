"""Which DVC stages may run at the same time, and which to start first: the flow's lane planner.

`dvc repro` runs one stage at a time. On a machine with several cores that leaves most of them
idle whenever a stage is single-threaded (every stage of this project pins `world.num_threads: 1`,
so that its bytes do not depend on the machine). The DAG says what may overlap: the two
reference MaskFormers read only the real data, eval_grounding and synth_dataset both only need
the grounding module, the five variants only the synthetic dataset.

`LanePlanner` is that scheduling, without Prefect or processes, so it can be tested on its own:
- a stage starts once every stage it reads from (DVC's DAG, restricted to the selection) finished;
- at most `lanes` lanes are busy; a stage that fans out on a Dask LocalCluster (its deps, the
  import closure of its module, hold `method/distributed.py`, and `distributed.scheduler` is
  "local") is as wide as its workers;
- of the ready stages, the one with the longest chain of stages still ahead of it starts first
  (critical path first), ties in dvc.yaml order. A wide stage may start on one free lane and
  take the others as they free up: nothing else starts until it leaves room. Oversubscribing
  single-threaded processes only time-slices them; holding a free lane back idles it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageNode:
    """One DVC stage: the stages whose outputs it reads, the params.yaml keys and the files it lists."""

    name: str
    upstream: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()


#: The module that fans a stage's shards out on Dask (dvc.yaml lists it in the deps of such stages).
DASK_FANOUT = "src/groundiff/method/distributed.py"


def stage_graph(root: Path | str) -> dict[str, StageNode]:
    """DVC's DAG of the project at `root` (its own graph: the same edges `dvc dag` draws)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        nodes = {}
        for stage in graph.nodes:
            keys: list[str] = []
            files: list[str] = []
            for dep in stage.deps:
                if hasattr(dep, "params"):  # a ParamsDependency; no keys listed = the whole file
                    keys += list(dep.params) if dep.params else ["*"]
                else:
                    files.append(str(dep.def_path))
            name = _name(stage)
            nodes[name] = StageNode(name, tuple(sorted(_name(s) for s in graph.successors(stage))), tuple(keys),
                                    tuple(files))
    return nodes


def _name(stage) -> str:
    """A dvc.yaml stage's name as `dvc repro` takes it (`train_segmenter@A`); a .dvc file's path."""
    return getattr(stage, "name", None) or stage.addressing


def lane_widths(nodes: Mapping[str, StageNode], params: Mapping[str, Any]) -> dict[str, int]:
    """Lanes each stage occupies: n_workers for a stage fanning out on a LocalCluster, else 1."""
    dist = params.get("distributed") or {}
    wide = int(dist.get("n_workers", 1)) if dist.get("scheduler") == "local" else 1
    return {name: max(1, wide) if DASK_FANOUT in node.deps or "*" in node.params else 1
            for name, node in nodes.items()}


class LanePlanner:
    """Hands out the stages of `selected` in a DAG-respecting, critical-path-first order.

    Call `start()` for the stages to launch now, `finished(name)` when one ends; `done` is true
    once every stage has been started and finished. Upstream stages outside the selection are
    taken as built (as `dvc repro --single-item` does).
    """

    def __init__(self, nodes: Mapping[str, StageNode], selected: Sequence[str], lanes: int,
                 widths: Mapping[str, int] | None = None) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        unknown = [s for s in selected if s not in nodes]
        if unknown:
            raise ValueError(f"stage(s) {unknown} are not in DVC's graph ({', '.join(nodes)})")
        self.lanes = lanes
        self.order = list(dict.fromkeys(selected))
        chosen = set(self.order)
        self.upstream = {s: {u for u in nodes[s].upstream if u in chosen} for s in self.order}
        self.width = {s: min(lanes, max(1, (widths or {}).get(s, 1))) for s in self.order}
        self.chain = _chain_lengths(self.order, self.upstream)
        self.waiting = list(self.order)
        self.running: set[str] = set()
        self.finished_: set[str] = set()

    @property
    def busy(self) -> int:
        return sum(self.width[s] for s in self.running)

    @property
    def done(self) -> bool:
        return not self.waiting and not self.running

    def ready(self) -> list[str]:
        """Waiting stages whose upstream stages all finished, most urgent first."""
        ready = [s for s in self.waiting if self.upstream[s] <= self.finished_]
        return sorted(ready, key=lambda s: (-self.chain[s], self.order.index(s)))

    def start(self) -> list[str]:
        """The stages to launch now (marked running)."""
        started = []
        for stage in self.ready():
            if self.busy >= self.lanes:
                break
            self.waiting.remove(stage)
            self.running.add(stage)
            started.append(stage)
        if not started and not self.running and self.waiting:  # unreachable for a DAG; never hang
            raise RuntimeError(f"stages {self.waiting} wait on each other: is dvc.yaml's graph cyclic?")
        return started

    def finished(self, stage: str) -> None:
        self.running.remove(stage)
        self.finished_.add(stage)

    def cancel(self) -> list[str]:
        """Drop every stage not yet started (after a failure); returns them."""
        dropped, self.waiting = self.waiting, []
        return dropped


def _chain_lengths(order: Sequence[str], upstream: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """For each stage, the number of stages on the longest path from it to the end (itself included)."""
    downstream: dict[str, list[str]] = {s: [] for s in order}
    for stage in order:
        for up in upstream[stage]:
            downstream[up].append(stage)
    memo: dict[str, int] = {}

    def length(stage: str, path: tuple[str, ...] = ()) -> int:
        if stage in path:
            raise RuntimeError(f"dvc.yaml's graph has a cycle through {stage!r}")
        if stage not in memo:
            memo[stage] = 1 + max((length(d, (*path, stage)) for d in downstream[stage]), default=0)
        return memo[stage]

    return {s: length(s) for s in order}
