"""flows.lanes: the flow's lane planner on hand-made DAGs and on this project's own dvc.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.lanes import DASK_FANOUT, LanePlanner, StageNode, lane_widths, stage_graph

ROOT = Path(__file__).resolve().parents[1]


def dag(**upstream: str) -> dict[str, StageNode]:
    """dag(b="a", c="a b") -> b reads a, c reads a and b."""
    return {name: StageNode(name, tuple(ups.split())) for name, ups in upstream.items()}


def simulate(planner: LanePlanner, duration: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Run the planner on a clock: stage -> (start, end)."""
    clock, ends, spans = 0, {}, {}
    while not planner.done:
        for stage in planner.start():
            ends[stage] = clock + duration.get(stage, 1)
            spans[stage] = (clock, ends[stage])
        clock = min(ends.values())
        for stage in [s for s, t in ends.items() if t == clock]:
            del ends[stage]
            planner.finished(stage)
    return spans


def test_one_lane_is_a_topological_order_and_two_lanes_overlap_independent_stages() -> None:
    nodes = dag(a="", b="a", c="a", d="b c")
    serial = simulate(LanePlanner(nodes, list(nodes), lanes=1), {})
    assert sorted(serial, key=serial.get) == ["a", "b", "c", "d"]
    parallel = simulate(LanePlanner(nodes, list(nodes), lanes=2), {})
    assert parallel == {"a": (0, 1), "b": (1, 2), "c": (1, 2), "d": (2, 3)}


def test_the_longest_chain_starts_first() -> None:
    # short and long are both ready; long has three stages ahead of it, so it takes the one lane
    nodes = dag(short="", long="", mid="long", end="mid")
    planner = LanePlanner(nodes, list(nodes), lanes=1)
    assert planner.start() == ["long"]


def test_a_wide_stage_holds_its_lanes_and_may_start_on_one_free_lane() -> None:
    nodes = dag(ref="", wide="", after="wide")
    spans = simulate(LanePlanner(nodes, list(nodes), lanes=2, widths={"wide": 2}), {"ref": 3, "wide": 2})
    # wide (longer chain) starts at once on the free lane; ref waits until wide leaves room
    assert spans["wide"] == (0, 2) and spans["ref"][0] >= 2
    planner = LanePlanner(nodes, list(nodes), lanes=2, widths={"wide": 5})
    assert planner.width["wide"] == 2  # never wider than the lanes there are


def test_upstream_stages_outside_the_selection_count_as_built() -> None:
    nodes = dag(a="", b="a", c="b")
    planner = LanePlanner(nodes, ["b", "c"], lanes=2)
    assert planner.start() == ["b"]  # a is not selected: b need not wait for it
    planner.finished("b")
    assert planner.start() == ["c"]


def test_cancel_drops_what_has_not_started() -> None:
    nodes = dag(a="", b="a", c="")
    planner = LanePlanner(nodes, list(nodes), lanes=1)
    assert planner.start() == ["a"]
    assert sorted(planner.cancel()) == ["b", "c"]
    planner.finished("a")
    assert planner.done and planner.start() == []


def test_bad_plans_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        LanePlanner(dag(a=""), ["a"], lanes=0)
    with pytest.raises(ValueError, match=r"\['nope'\] are not in DVC's graph"):
        LanePlanner(dag(a=""), ["a", "nope"], lanes=1)
    with pytest.raises(RuntimeError, match="cycle"):
        LanePlanner(dag(a="b", b="a"), ["a", "b"], lanes=1)


def test_lane_widths_follow_the_dask_fanout_and_the_distributed_params() -> None:
    nodes = {"gen": StageNode("gen", params=("world",), deps=("src/x.py", DASK_FANOUT)),
             "train": StageNode("train", params=("world",), deps=("src/x.py",)),
             "legacy": StageNode("legacy", params=("*",))}  # lists all of params.yaml
    local = {"distributed": {"scheduler": "local", "n_workers": 3}}
    assert lane_widths(nodes, local) == {"gen": 3, "train": 1, "legacy": 3}
    for serial in ({"distributed": {"scheduler": "", "n_workers": 3}},
                   {"distributed": {"scheduler": "tcp://host:8786", "n_workers": 3}}, {}):
        assert lane_widths(nodes, serial) == {"gen": 1, "train": 1, "legacy": 1}


def test_this_projects_dag_in_two_lanes() -> None:
    """The project's own graph: the real-data references fill the lane train_grounding leaves free,
    and nothing starts before the stages it reads from ended."""
    nodes = stage_graph(ROOT)
    assert "train_grounding" in nodes["eval_grounding"].upstream
    assert DASK_FANOUT in nodes["synthesize"].deps and DASK_FANOUT not in nodes["train_grounding"].deps
    method = [n for n in nodes if not n.startswith("world_")]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    planner = LanePlanner(nodes, method, lanes=2, widths=lane_widths(nodes, params))
    # rough minutes on one thread (README); a stage on the LocalCluster takes half its time
    minutes = {"validate": 1, "prompts": 1, "synthesize": 5, "pseudo_label": 1, "train_grounding": 6, "synth_dataset": 4,
               "eval_grounding": 3, "eval_zs3": 1, "report": 1,
               **{n: 3 for n in method if n.startswith(("train_segmenter@", "train_reference@"))}}
    spans = simulate(planner, minutes)
    for stage in method:
        for up in nodes[stage].upstream:
            if up in spans:
                assert spans[up][1] <= spans[stage][0], f"{stage} started before {up} ended"
    ref = spans["train_reference@real_all"]
    assert spans["train_grounding"][0] < ref[1] and ref[0] < spans["train_grounding"][1]  # side by side
    assert max(end for _, end in spans.values()) < sum(minutes[s] for s in method)  # faster than serial
