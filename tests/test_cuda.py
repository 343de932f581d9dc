"""The paper worlds' GPU path: the tiny SD-architecture pipeline on CUDA in fp16 and under autocast.

These run only where a CUDA GPU is present (`pytest -m gpu`); everywhere else they are skipped.
The same code paths run on CPU in test_capture_daam.py and test_paper_world_pipeline.py.
"""

import numpy as np
import pytest
import torch

from groundiff.diffusion.capture import FeatureCapture, capture_call_for, replay_features
from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline
from groundiff.diffusion.text import class_embeddings
from groundiff.method.grounding.model import GroundingConfig, GroundingModule
from groundiff.testing import tiny_sd_pipeline

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPTS = ["a photograph of a dog", "a photograph of a cat and a pottedplant"]


@pytest.fixture(scope="module")
def fp16_pipe(tmp_path_factory):
    folder = tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"), ["dog", "cat", "car"], ["pottedplant"])
    return load_pipeline(folder, "cuda", dtype=torch.float16)


def test_fp16_generation_capture_and_replay(fp16_pipe):
    sampling = SamplingConfig(steps=4, guidance_scale=5.0, batch_size=2)
    with FeatureCapture(fp16_pipe.unet, capture_call_for(4, 1)) as cap:
        images = generate(fp16_pipe, PROMPTS, [0, 1], sampling)
    assert images.shape[0] == 2 and images.dtype.name == "uint8"
    captured = cap.result()
    assert all(f.device.type == "cuda" and f.dtype == torch.float16 for f in captured)
    replayed = replay_features(fp16_pipe, cap.latents, cap.timestep, PROMPTS)
    # fp16 kernels may differ between batch compositions: equal to fp16 precision, not bit for bit
    assert max((a.float() - b.float()).abs().max().item() for a, b in zip(captured, replayed)) <= 5e-2


def test_grounding_module_trains_under_autocast(fp16_pipe):
    with FeatureCapture(fp16_pipe.unet, capture_call_for(2, 1)) as cap:
        generate(fp16_pipe, PROMPTS, [2, 3], SamplingConfig(steps=2, guidance_scale=5.0, batch_size=2))
    features = [f.float() for f in cap.result()]
    emb = class_embeddings(fp16_pipe, ["dog", "pottedplant"]).float()
    cfg = GroundingConfig.from_unet_config(fp16_pipe.unet.config, text_dim=emb.shape[-1], image_size=32,
                                           d_model=64, n_heads=2, ffn_dim=64, n_layers=1)
    model = GroundingModule(cfg).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.zeros(2, 2, 32, 32, device="cuda")
    target[:, :, 8:24, 8:24] = 1
    with torch.autocast("cuda", dtype=torch.float16):
        logits = model(features, emb.unsqueeze(0).expand(2, -1, -1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    loss.backward()
    opt.step()
    assert logits.shape == (2, 2, 32, 32) and torch.isfinite(loss)


def test_bf16_sampling_on_cuda_keeps_the_capture_step_in_fp32(tmp_path):
    """The shapes world's default sampling (fp32 weights, bf16 UNet autocast) on CUDA: the capture
    step runs in fp32, so the captured features match the fp32 replay of the stored latent."""
    folder = tiny_sd_pipeline(tmp_path / "tiny_sd", ["dog", "cat", "car"], ["pottedplant"])
    pipe = load_pipeline(folder, "cuda")
    steps, t = 4, 2
    call = capture_call_for(steps, t)
    bf16 = SamplingConfig(steps=steps, guidance_scale=5.0, batch_size=2, precision="bf16")
    errors = {}
    for name, fp32_call in (("exact", call), ("all_bf16", None)):
        with FeatureCapture(pipe.unet, call) as cap:
            images = generate(pipe, PROMPTS, [0, 1], bf16, fp32_call=fp32_call)
        assert images.shape[0] == 2 and images.dtype.name == "uint8"
        replayed = replay_features(pipe, cap.latents, cap.timestep, PROMPTS)
        errors[name] = max((a.float() - b).abs().max().item() for a, b in zip(cap.result(), replayed))
    # TF32 convolutions may differ between batch compositions: close, and far closer than bf16
    assert errors["exact"] <= 1e-2 and errors["exact"] < errors["all_bf16"] / 4, errors
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_segmenter_trains_on_cuda_and_loads_back_on_cpu(tmp_path):
    from test_segmenter import CLASSES, make_voc, tiny_cfg

    from groundiff.segmenter import DataSource, Segmenter, train_segmenter

    voc = make_voc(tmp_path / "voc")
    cfg = tiny_cfg(steps=30, checkpoint_every=100, log_every=10, scale_jitter=(1.0, 1.0))
    logs = []
    seg, _ = train_segmenter([DataSource(str(voc), "train")], CLASSES, cfg, tmp_path / "work", device="cuda",
                             on_log=logs.append, progress=False)
    assert next(seg.model.parameters()).is_cuda and logs[-1]["loss"] < logs[0]["loss"]
    seg.save_pretrained(tmp_path / "model")
    images = [np.full((32, 32, 3), 110, np.uint8), np.full((24, 40, 3), 110, np.uint8)]
    on_gpu, on_cpu = seg.predict(images), Segmenter.from_pretrained(tmp_path / "model").predict(images)
    assert [p.shape for p in on_gpu] == [(32, 32), (24, 40)]
    assert all((p == q).mean() > 0.99 for p, q in zip(on_gpu, on_cpu))  # same weights, other kernels
