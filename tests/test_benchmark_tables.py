"""The benchmarks' pure parts: what they print is computed right."""

import importlib

import pytest


def _load(name: str):
    return importlib.import_module(f"benchmarks.{name}")


def test_cpu_precision_records_the_capability_and_the_ratio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _load("cpu_precision").main(["--size", "16", "--rounds", "1"])
    written = __import__("json").loads((tmp_path / "reports/benchmarks/cpu_precision.json").read_text())
    assert written == result and result["cpu_capability"] and result["bf16_over_fp32_time"] > 0
    page = (tmp_path / "reports/benchmarks/cpu_precision.md").read_text()
    assert page.startswith("# bf16 sampling on this CPU") and f"| {result['bf16_over_fp32_time']:.2f} |" in page


def test_grounding_overhead_writes_its_ratios_itself(tmp_path, monkeypatch):
    """No shapes models in the folder: tiny random ones of the same architecture, two images, two steps."""
    import json

    monkeypatch.chdir(tmp_path)
    result = _load("grounding_overhead").main(["--batch", "2", "--steps", "2", "--rounds", "1"])
    assert json.loads((tmp_path / "reports/benchmarks/grounding_overhead.json").read_text()) == result
    assert result["models"] == "tiny random shapes pipeline" and result["capture_overhead"] > 0
    assert result["feature_bytes_per_sample"] > result["latent_bytes_per_sample"]
    page = (tmp_path / "reports/benchmarks/grounding_overhead.md").read_text()
    assert f"| feature-capture overhead | {result['capture_overhead']:.3f}x | <= 1.05x |" in page


def _paper_scale_result() -> dict:
    stage = {"seconds": 10.0, "cpu_seconds": 8.0, "peak_rss_gb": 5.5}
    return {
        "what": "SD v1.5's architecture with random weights",
        "settings": {"image_size": 512, "images": 1, "ddim_steps": 3, "batch": 1, "rounds": 2, "precision": "fp32", "train_batch": 1},
        "machine": {"gpu": None, "cpu_capability": "AVX2", "threads": 1, "torch": "2.x"},
        "parameters": {"unet": 859_520_964, "grounding_module": 18_796_560},
        "stages": {"plain_round0": stage, "captured_round0": {**stage, "cpu_seconds": 8.4}},
        "ratios": {"clock": "cpu_seconds", "capture_overhead": 1.05, "synthesize_over_plain": 1.01,
                   "labelling_over_plain": 1.2, "train_step_over_plain_image": 0.5},
        "derived": {"clock": "cpu_seconds", "plain_seconds_per_image": 8.0, "plain_seconds_per_unet_step": 2.7,
                    "train_step_seconds": 4.0, "feature_bytes_per_image": 63 * 2**20,
                    "latent_bytes_per_image": 65536, "peak_rss_gb": 6.0},
    }


def test_paper_scale_page_and_docs_block(tmp_path):
    scale = _load("paper_scale")
    text = scale.markdown(_paper_scale_result())
    assert "| captured_round0 | 10.0 | 8.4 | 5.50 |" in text and "Ratios and times below are of CPU time" in text
    assert "**1.050x**" in text and "63 MiB vs a stored latent of 64 KiB" in text
    docs = tmp_path / "gpu.md"
    docs.write_text(f"before\n{scale.BEGIN}\nold numbers\n{scale.END}\nafter\n")
    scale.update_docs(_paper_scale_result(), docs)
    written = docs.read_text()
    assert written.startswith("before\n") and written.endswith(f"{scale.END}\nafter\n")
    assert "old numbers" not in written and "**1.050x**" in written
    docs.write_text("no markers")
    with pytest.raises(ValueError, match="no block between"):
        scale.update_docs(_paper_scale_result(), docs)


def test_paper_scale_builds_the_unet_the_released_module_reads():
    """SD v1.5's UNet config as the dry run builds it gives the released module's input widths."""
    from groundiff.method.grounding.model import GroundingConfig
    from groundiff.method.grounding.official import official_shapes

    scale = _load("paper_scale")
    cfg = GroundingConfig.from_unet_config(scale.SD15_UNET, scale.SD15_TEXT["hidden_size"], 512)
    shapes = official_shapes()
    widths = [sum(cfg.feature_channels[i] for i in b) for b in cfg.buckets]
    names = ("low", "mid", "high", "highest")
    assert widths == [shapes[f"{n}_feature_conv.0.weight"][1] for n in names]
    assert shapes["to_q.weight"][1] == scale.SD15_TEXT["hidden_size"]


def test_paper_scale_runs_its_whole_flow_on_a_tiny_sd(tmp_path):
    """The dry run's every step (build, plain / captured generation, synthesize, a training step with
    replay, synth_dataset's labelling) on a tiny SD-architecture pipeline, and the files it writes."""
    import json

    scale = _load("paper_scale")
    out = tmp_path / "paper_scale.json"
    result = scale.main(["--tiny", "--images", "2", "--steps", "2", "--batch", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result and out.with_suffix(".md").is_file()
    assert set(result["stages"]) == {"build", "plain_round0", "captured_round0", "plain_round1", "captured_round1",
                                     "synthesize", "train_step_round0", "train_step_round1", "synth_dataset_labelling"}
    assert all(v["cpu_seconds"] >= 0 and v["peak_rss_gb"] > 0 for v in result["stages"].values())
    assert result["ratios"]["clock"] == "cpu_seconds" and result["ratios"]["capture_overhead"] > 0
    assert result["derived"]["feature_bytes_per_image"] > result["derived"]["latent_bytes_per_image"]
