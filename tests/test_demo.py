"""`groundiff demo`: the real command serving a tiny shapes world, driven by gradio_client and by
headless Chromium. A request returns what `groundiff generate` writes, byte for byte; bad input is
one message and the server keeps serving; a module trained after start is picked up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmarks.demo_request import browser_generate, memory_mb, running_demo
from groundiff.app.demo import parse_classes
from groundiff.method.grounding import GroundingConfig, GroundingModule
from groundiff.testing import tiny_shapes_pipeline
from conftest import ROOT, tiny_params

# prompt, classes (multi-select), classes (free text), seed, DDIM steps, guidance, mask threshold
GOOD = ("a photograph of a star and a ring", ["star", "ring"], "", 3, 4, 5.0, 0.5)
ENV = {"OMP_NUM_THREADS": "1", "GROUNDIFF_TRACKING": "0"}


def predict(client, *args):
    return client.predict(*args, api_name="/generate")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny shapes project served by `groundiff demo --queue 1`, started before any module is trained."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    root = tmp_path_factory.mktemp("demo_project")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    pipe = tiny_shapes_pipeline(root / "worlds/shapes/diffusion")
    with running_demo(root, "--queue", "1", env=ENV) as server:
        client = Client(server.url, download_files=str(tmp_path_factory.mktemp("downloads")),
                        analytics_enabled=False, verbose=False)
        try:
            predict(client, *GOOD)
            missing = None
        except AppError as err:
            missing = str(err)
        # train_grounding's output appears while the app runs (a tiny module of the real architecture)
        cfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=16, image_size=32,
                                               d_model=32, n_heads=2, ffn_dim=64, n_layers=1)
        GroundingModule(cfg).save_pretrained(root / "models/grounding")
        yield SimpleNamespace(root=root, client=client, server=server, missing=missing, url=server.url)


def by_name(files: list[str]) -> dict[str, bytes]:
    return {Path(f).name: Path(f).read_bytes() for f in files}


@pytest.mark.slow
def test_without_a_trained_module_a_request_says_how_to_train_one_and_a_later_module_is_used(served):
    assert served.missing is not None, "a request without models/grounding must be refused"
    assert "no trained grounding module in models/grounding" in served.missing
    assert served.missing.rstrip().endswith("run `dvc repro train_grounding`")
    image, *_ = predict(served.client, *GOOD)  # the module saved after start
    assert Image.open(image).size == (256, 256)


@pytest.mark.slow
def test_a_request_returns_the_image_and_one_mask_per_class_as_generate_writes_them(served):
    image, ours, daam, gallery, files, notes = predict(served.client, *GOOD)
    got = by_name(files)
    assert sorted(got) == sorted(["image.png", "mask_star.png", "mask_ring.png", "overlay.png",
                                  "daam_heat_star.png", "daam_mask_star.png", "daam_heat_ring.png",
                                  "daam_mask_ring.png"])
    for overlay in (ours, daam):
        assert [a["label"] for a in overlay["value"]["annotations"]] == ["star", "ring"]
        assert set(overlay["color_map"]) == {"star", "ring"}
    assert [g["caption"] for g in gallery][:3] == ["star: ours (mask)", "star: DAAM heat map", "star: DAAM mask"]
    assert "| star | seen |" in notes and "| ring | unseen |" in notes
    np.testing.assert_array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(files[0])))
    # the command, same prompt, classes and settings, in the same project: the same bytes
    prompt, classes, _, seed, steps, guidance, threshold = GOOD
    out = served.root / "cli_out"
    subprocess.run([str(Path(sys.executable).parent / "groundiff"), "generate", prompt, "--classes", *classes,
                    "--seed", str(seed), "--steps", str(steps), "--guidance", str(guidance),
                    "--threshold", str(threshold), "--out", str(out)],
                   cwd=served.root, env={**os.environ, **ENV}, check=True, capture_output=True)
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(written) == ["image.png", "mask_ring.png", "mask_star.png", "overlay.png"]
    for name, data in written.items():
        assert got[name] == data, f"{name} differs from groundiff generate's"
    for name in ("mask_star.png", "daam_mask_ring.png"):
        assert set(np.unique(np.asarray(Image.open(BytesIO(got[name]))))) <= {0, 255}


@pytest.mark.slow
def test_a_seed_gives_the_same_bytes_and_another_seed_another_image(served):
    first = by_name(predict(served.client, *GOOD)[4])
    again = by_name(predict(served.client, *GOOD)[4])
    assert first == again
    other = by_name(predict(served.client, *GOOD[:3], 4, *GOOD[4:])[4])
    assert other["image.png"] != first["image.png"]


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({0: "   "}, "the prompt is empty"),
    ({1: ["dragon"]}, "unknown class 'dragon' (classes); the shapes world knows: circle"),
    ({1: [], 2: "dragon"}, "unknown class 'dragon' (classes)"),
    ({1: ["star", "heart"]}, "class 'heart' is not named in the prompt"),
    ({1: []}, "name at least one class to ground"),
    ({3: -1}, "seed must be a whole number >= 0"),
    ({5: 1.0}, "Value 1.0 is less than minimum value 1.5"),  # Gradio's own range check of a slider
    ({6: 1.0}, "Value 1.0 is greater than maximum value 0.95"),
])
def test_bad_input_is_one_message_and_the_server_keeps_serving(served, change, message):
    from gradio_client.exceptions import AppError

    args = [change.get(i, value) for i, value in enumerate(GOOD)]
    with pytest.raises(AppError) as info:
        predict(served.client, *args)
    text = str(info.value)
    assert message in text and "Traceback" not in text and "\n" not in text.strip()
    image, *_ = predict(served.client, *GOOD)
    assert Image.open(image).size == (256, 256)


@pytest.mark.slow
def test_an_over_long_prompt_is_generated_as_read_with_a_notice(served):
    long = "a photograph of a star and a ring " + "on a black background " * 6  # > 24 tokens
    image, ours, _, _, files, notes = predict(served.client, long, ["star", "ring"], "", 3, 4, 5.0, 0.5)
    assert "The prompt was too long" in notes and "on a black background" in notes.split("left out:")[1]
    assert len(ours["value"]["annotations"]) == 2


@pytest.mark.slow
def test_one_generation_at_a_time_and_a_bounded_queue(served):
    """--queue 1: while one request generates, one more waits and the rest are turned away; the
    waiting one starts only when the first is done."""
    from gradio_client.utils import Status

    expected = by_name(predict(served.client, *GOOD)[4])
    slow = served.client.submit(*GOOD[:4], 100, *GOOD[5:], api_name="/generate")  # 100 steps: seconds
    deadline = time.monotonic() + 120
    while slow.status().code not in (Status.PROCESSING, Status.PROGRESS, Status.ITERATING):
        assert not slow.done() and time.monotonic() < deadline, "the first request never started generating"
        time.sleep(0.02)
    burst = [served.client.submit(*GOOD, api_name="/generate") for _ in range(3)]
    outcomes = []
    for job in burst:
        try:
            outcomes.append(by_name(job.result()[4]))
            assert slow.done(), "a waiting request finished while the first one still generated"
        except Exception as err:  # gradio_client's QueueError when the queue is full
            outcomes.append(err)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert refused and all("queue is full" in str(r).lower() for r in refused), outcomes
    assert len(refused) < len(burst) and all(o == expected for o in outcomes if not isinstance(o, Exception))
    assert Image.open(slow.result()[0]).size == (256, 256)
    assert memory_mb(served.server.pid)["rss_mb"] < 3000


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_generates_in_a_real_browser(served, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    shown = browser_generate(served.url, tmp_path / "demo.png", "a photograph of a ring and a star", ["ring", "star"])
    for name, stats in shown.items():  # pictures, not blank boxes
        assert stats["std"] > 10 and stats["colours"] > 16, (name, stats)
    with Image.open(tmp_path / "demo.png") as page:
        assert page.width >= 1000 and page.height >= 600


def test_classes_come_from_the_multi_select_then_the_free_text_each_once():
    assert parse_classes(["star", "ring"], " ring, potted plant ,, star") == ["star", "ring", "potted plant"]
    assert parse_classes(None, None) == []


def test_an_over_long_prompt_names_what_clip_never_reads(tmp_path):
    """CLIP's BPE tokenizer (16 tokens here; SD's reads 77): the dropped words, and a class only among them."""
    from transformers import CLIPTokenizer

    from groundiff.method.generate import check_request, prompt_overflow
    from groundiff.testing import write_clip_tokenizer

    write_clip_tokenizer(tmp_path, ["a", "photograph", "of", "and", "dog", "cat", "sofa"], model_max_length=16)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    fits = "a photograph of a dog and a cat"
    assert prompt_overflow(tok, fits) == ""
    long = fits + " and a sofa and a dog and a cat and a sofa"  # 20 words: 14 fit between start and end
    assert tok(long, truncation=True).input_ids[1:-1] == tok(long, add_special_tokens=False).input_ids[:14]
    assert prompt_overflow(tok, long) == "and a cat and a sofa"  # the words after the 14th
    check_request(tok, long, ["dog", "sofa"])  # both within the first 14 tokens
    tail_only = "a photograph of a dog " + "and a dog " * 5 + "and a cat"
    with pytest.raises(ValueError, match="'cat' is not named in the prompt within the first 16 tokens"):
        check_request(tok, tail_only, ["dog", "cat"])


def test_a_paper_world_takes_free_text_classes_and_marks_the_split(project):
    """Open vocabulary: in a paper world a typed class outside the vocabulary is grounded too."""
    from groundiff.app.demo import DemoSession
    from groundiff.app.grounder import Grounder
    from groundiff.app.presets import apply_preset
    from groundiff.core.params import Params
    from groundiff.testing import tiny_sd_pipeline
    from groundiff.worlds.active import World

    tiny_sd_pipeline(project / "models/tiny-sd", ["dog", "zebra"])
    apply_preset(project / "params.yaml", "voc", {"world.device": "cpu", "voc.diffusion": "models/tiny-sd",
                                                  "synthesize.sampling.steps": 3})
    params = Params()
    grounder = Grounder(params, World(params), require_module=False)
    session = DemoSession(grounder, scale=1, out_root=project / "requests")
    assert session.open_vocabulary and ("dog (unseen)", "dog") in session.choices()  # VOC split 1
    assert "No grounding module yet" in session.status() and "dvc repro train_grounding" in session.status()
    cfg = GroundingConfig.from_unet_config(grounder.pipe.unet.config, text_dim=16, image_size=128,
                                           d_model=32, n_heads=2, ffn_dim=64, n_layers=1)
    GroundingModule(cfg).save_pretrained(project / "models/grounding")
    reply = session.request("a photograph of a dog and a zebra", ["dog"], "zebra", 0, 3, 7.5, 0.5)
    assert [label for _, label in reply.ours[1]] == ["dog", "zebra"]
    assert "| dog | unseen |" in reply.notes and "| zebra | not in the vocabulary |" in reply.notes
    assert sorted(Path(f).name for f in reply.files)[:4] == ["daam_heat_dog.png", "daam_heat_zebra.png",
                                                            "daam_mask_dog.png", "daam_mask_zebra.png"]


def test_generate_refuses_a_class_the_prompt_does_not_name(grounded_world, capsys):
    from groundiff.cli import main

    project = grounded_world
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a photograph of a star", "--classes", "star", "ring", "--steps", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "class 'ring' is not named in the prompt" in err and not (project / "out").exists()


def test_the_measured_numbers_are_written_between_their_markers(tmp_path):
    from benchmarks.demo_request import replace_block, summary, table

    result = {"runs": {"fp32": {"load_seconds": 9.0, "first_request_seconds": 2.5, "request_seconds": [1.0, 1.5, 2.0],
                                "median_request_seconds": 1.5, "rss_after_load_mb": 900.0,
                                "rss_after_requests_mb": 950.0, "peak_rss_mb": 1000.0}},
              "steps": "synthesize.sampling.steps", "cpu_count": 2, "torch_threads": 1, "cpu": "x",
              "load_average_at_end": [1.0, 1.0, 1.0], "grounding_module": {"trained": "here"}, "what": "w"}
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- demo-measured -->\nstale numbers\n<!-- /demo-measured -->\nafter\n")
    replace_block(doc, "demo-measured", summary(result))
    text = doc.read_text()
    assert "stale" not in text and text.startswith("before\n") and text.endswith("<!-- /demo-measured -->\nafter\n")
    assert "fp32: 1.50 s (first 2.50 s)" in text and "950 MB resident (1000 MB at its peak)" in text
    assert "| fp32 | 9.0 | 2.50 | 1.50 (of 3) | 900 | 950 | 1000 |" in table(result)
    with pytest.raises(ValueError, match="no <!-- demo-measured-table -->"):
        replace_block(doc, "demo-measured-table", "x")
