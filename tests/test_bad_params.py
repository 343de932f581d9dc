"""Bad params give one clear error naming the key and the fix, and leave outputs untouched."""

import subprocess
import sys

import pytest

from conftest import tiny_params, write_params
from groundiff.core.params import ParamsError
from groundiff.stages import prompts
from groundiff.core.params import Params
from groundiff.worlds.active import World
from groundiff.worlds.base import WorldError, make_split


def _run(params, root, tmp_path):
    write_params(root, params)
    with pytest.raises((ParamsError, WorldError)) as err:
        prompts.main()
    return str(err.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["shapes"]["splits"].update({1: ["ring", "hexagon"]}), "unknown class 'hexagon'"),
        (lambda p: p["shapes"]["splits"].update({1: list(p["shapes"]["classes"])}), "no seen classes"),
        (lambda p: p["prompts"].update(n=0), "n must be a positive"),
        (lambda p: p["prompts"].update(n=-5), "n must be a positive"),
        (lambda p: p["prompts"].update(n="many"), "prompts.n: expected an integer, got str 'many'"),
        (lambda p: p["prompts"].update(two_object_prob="half"), "expected a number"),
        (lambda p: p["prompts"].update(nn=3), "unknown key"),
        (lambda p: p["world"].update(name="mars"), "unknown world 'mars'"),
        (lambda p: p["world"].update(split=9), "world.split is 9"),
        (lambda p: p["world"].update(num_threads=-1), "world.num_threads must be >= 0"),
        (lambda p: p["shapes"].update(classes=["circle", "hexagon"]), "cannot draw"),
        (lambda p: p["eval_grounding"].update(norm_at_test="train"),
         "eval_grounding: norm_at_test: 'train' is not one of running, batch"),
        (lambda p: p["train_grounding"].update(spectral_norm="power"),
         "train_grounding: spectral_norm: 'power' is not one of torch, biggan"),
        (lambda p: p["eval_zs3"].update(split="test"), "split: 'test' is not one of val, dev"),
        (lambda p: p["eval_zs3"].update(variants=["C", "Z"]),
         "eval_zs3: variants: ['Z'] not in train_segmenter.variants"),
        (lambda p: p["world_data"].update(n_dev=0), "n_train, n_val and n_dev must be positive"),
    ],
)
def test_bad_params_fail_clearly_and_touch_nothing(project, tmp_path, mutate, message):
    prompts.main()
    out = project / "data/prompts/train.csv"
    before = out.read_bytes()
    params = tiny_params()
    mutate(params)
    assert message in _run(params, project, tmp_path)
    assert out.read_bytes() == before


def test_world_num_threads_pins_torch_and_zero_leaves_it(tmp_path):
    import torch

    from groundiff.stages.common import pin_threads

    def params(threads: int) -> Params:
        params = tiny_params()
        params["world"]["num_threads"] = threads
        path = tmp_path / f"params{threads}" / "params.yaml"
        path.parent.mkdir()
        write_params(path.parent, params)
        return Params(path)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pin_threads(params(0))
        assert torch.get_num_threads() == 2
        pin_threads(params(1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_seen_unseen_overlap_is_rejected():
    with pytest.raises(WorldError, match="both seen and unseen: star"):
        make_split("shapes", ["circle", "star", "ring"], unseen=["star"], seen=["circle", "star"])


def test_malformed_yaml(project):
    (project / "params.yaml").write_text("world: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        Params()


def test_stage_cli_prints_one_line_and_exits_2(project):
    params = tiny_params()
    params["world"]["name"] = "mars"
    write_params(project, params)
    proc = subprocess.run([sys.executable, "-m", "groundiff.stages.prompts"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: params.yaml: world: unknown world 'mars'; choose one of shapes")
    assert "Traceback" not in proc.stderr


def test_a_declared_key_params_yaml_does_not_write_is_named():
    """validate's check: DVC refuses (after deleting outputs) a stage whose declared key is missing."""
    from groundiff.core.dvcfile import DvcStage, require_declared_params

    stages = {"a": DvcStage("a", "", params=("world.name", "shapes.splits.1")),
              "b": DvcStage("b", "", params=("prompts.nn",))}
    params = {"world": {"name": "shapes"}, "shapes": {"splits": {1: ["ring"]}}, "prompts": {"n": 3}}
    with pytest.raises(ParamsError, match=r"params.yaml: dvc.yaml's stages declare params that it does not "
                                          r"write \(b: prompts.nn\); add them to params.yaml"):
        require_declared_params(stages, params, "params.yaml")
    require_declared_params({"a": stages["a"]}, params, "params.yaml")  # int split keys are found
