"""Feature capture, replay from the stored latent, class embeddings and DAAM on a tiny SD-architecture pipeline."""


import numpy as np
import pytest
import torch

from groundiff.diffusion.capture import FeatureCapture, capture_call_for, fold_guidance, replay_features
from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.features import feature_specs
from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline, unet_precision
from groundiff.diffusion.text import class_embeddings, token_positions
from groundiff.testing import tiny_sd_pipeline

PROMPTS = ["a photograph of a dog", "a photograph of a cat and a pottedplant", "a photograph of a car"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"), ["dog", "cat", "car", "sofa"], ["pottedplant"])
    return load_pipeline(folder)


def _generate(pipe, prompts, seeds, steps=4, **kw):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=gens, output_type="np", **kw).images


def test_capture_records_every_block_folded_per_sample(pipe):
    specs = feature_specs(pipe.unet.config)
    assert len(specs) == 25  # SD v1's 12 input blocks + mid + 12 output blocks
    with FeatureCapture(pipe.unet, capture_call_for(4, 1)) as cap:
        _generate(pipe, PROMPTS, [1, 2, 3])
    feats = cap.result()
    for spec, f in zip(specs, feats):
        side = 16 // spec.stride
        assert f.shape == (3, 2 * spec.channels, side, side), spec
    assert cap.timestep == 1  # the final DDIM step is DDPM t=1 (steps_offset=1), as in the released code
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks, "hooks must be removed on exit"


def test_fold_is_per_sample_for_batch_above_one():
    # [uncond_0, uncond_1; cond_0, cond_1] -> sample i gets [uncond_i || cond_i]
    x = torch.arange(4.0).view(4, 1, 1, 1)
    folded = fold_guidance(x)
    assert folded.shape == (2, 2, 1, 1)
    assert folded[:, :, 0, 0].tolist() == [[0.0, 2.0], [1.0, 3.0]]
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        fold_guidance(torch.zeros(3, 1, 1, 1))


def test_replay_from_stored_latent_equals_capture(pipe):
    with FeatureCapture(pipe.unet, capture_call_for(4, 2)) as cap:
        _generate(pipe, PROMPTS, [5, 6, 7])
    captured = cap.result()
    # replay per sample (a different batch composition than generation) and all at once
    replayed = replay_features(pipe, cap.latents, cap.timestep, PROMPTS)
    single = replay_features(pipe, cap.latents[1:2], cap.timestep, PROMPTS[1:2])
    assert max((a - b).abs().max().item() for a, b in zip(captured, replayed)) <= 1e-5
    assert max((a[1:2] - b).abs().max().item() for a, b in zip(captured, single)) <= 1e-5


def test_bf16_generation_keeps_the_capture_step_in_fp32(pipe):
    """bf16 denoising, fp32 capture step: captured features equal the fp32 replay of the stored latent."""
    steps, t = 4, 2
    call = capture_call_for(steps, t)
    fp32 = SamplingConfig(steps=steps, guidance_scale=5.0, batch_size=4)
    bf16 = SamplingConfig(steps=steps, guidance_scale=5.0, batch_size=4, precision="bf16")
    reference = generate(pipe, PROMPTS, [5, 6, 7], fp32)
    runs = {}
    for name, fp32_call in (("exact", call), ("all_bf16", None)):
        with FeatureCapture(pipe.unet, call) as cap:
            images = generate(pipe, PROMPTS, [5, 6, 7], bf16, fp32_call=fp32_call)
        replayed = replay_features(pipe, cap.latents, cap.timestep, PROMPTS)
        runs[name] = (images, max((a.float() - b).abs().max().item() for a, b in zip(cap.result(), replayed)))
        if fp32_call is not None:
            assert all(f.dtype == torch.float32 for f in cap.result())
    assert runs["exact"][1] <= 1e-5  # the capture step ran in fp32, as replay does
    assert runs["all_bf16"][1] > 1e-3  # ... which autocast would otherwise change: the hook took effect
    assert np.array_equal(generate(pipe, PROMPTS, [5, 6, 7], bf16, fp32_call=call), runs["exact"][0])  # seeded
    assert 0 < np.abs(runs["exact"][0].astype(int) - reference.astype(int)).mean() < 8  # close to fp32, not equal
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_unet_precision_restores_autocast_when_the_unet_raises(pipe):
    with pytest.raises(RuntimeError):
        with unet_precision(pipe.unet, "bf16"):
            pipe.unet(torch.zeros(1, 3, 16, 16), 1, encoder_hidden_states=torch.zeros(1, 77, 16))  # wrong channels
    assert not torch.is_autocast_enabled("cpu")
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        SamplingConfig(precision="int8")


def test_capture_errors_teach(pipe):
    with FeatureCapture(pipe.unet, capture_call=10) as cap:
        _generate(pipe, PROMPTS[:1], [1], steps=2)
    with pytest.raises(RuntimeError, match="no features captured at UNet call 10"):
        cap.result()
    with pytest.raises(ValueError, match="do not fit this UNet"):
        replay_features(pipe, torch.zeros(1, 4, 32, 32), 1, PROMPTS[:1])
    with pytest.raises(ValueError, match="1..50"):
        capture_call_for(50, 0)


def test_class_embeddings_average_sub_tokens(pipe):
    pos = token_positions(pipe.tokenizer, "a photograph of a pottedplant", "pottedplant")
    assert len(pos) > 1 and pos[0] == 5  # after <start>, a, photograph, of, a
    emb = class_embeddings(pipe, ["dog", "pottedplant"])
    assert emb.shape == (2, pipe.text_encoder.config.hidden_size)
    ids = pipe.tokenizer("a photograph of a pottedplant", padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids)[0][0]
    torch.testing.assert_close(emb[1], hidden[pos].mean(0))
    with pytest.raises(ValueError, match="does not occur"):
        token_positions(pipe.tokenizer, "a photograph of a dog", "cat")


def test_daam_maps_are_normalised_and_leave_images_unchanged(pipe):
    with DAAMTrace(pipe) as trace:
        traced = _generate(pipe, PROMPTS, [1, 2, 3])
    plain = _generate(pipe, PROMPTS, [1, 2, 3])
    np.testing.assert_array_equal(traced, plain)
    # SD v1 layout: cross-attention in down 0-2 (2 each) and up 1-3 (3 each); none at 8x8 / mid
    assert len(trace.layers) == 15 and not any("mid_block" in n for n in trace.layers)
    maps = trace.heat_maps(PROMPTS, [["dog"], ["cat", "pottedplant"], ["car"]], image_size=128)
    assert [m.shape for m in maps] == [(1, 128, 128), (2, 128, 128), (1, 128, 128)]
    for m in maps:
        flat = m.flatten(1)
        torch.testing.assert_close(flat.min(1).values, torch.zeros(len(m)))
        torch.testing.assert_close(flat.max(1).values, torch.ones(len(m)))
    assert not any("Recorder" in type(p).__name__ for p in pipe.unet.attn_processors.values())


def test_daam_without_trace_teaches():
    trace = DAAMTrace.__new__(DAAMTrace)
    trace.store = {}
    with pytest.raises(RuntimeError, match="forget to run generation inside"):
        trace.token_maps()
