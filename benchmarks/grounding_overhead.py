"""What grounding costs on top of generation, measured in one run (ratios, not absolute times).

    python -m benchmarks.grounding_overhead                     # the shapes world's models
    python -m benchmarks.grounding_overhead --batch 10 --rounds 3   # a quick smoke run
    python -m benchmarks.grounding_overhead --precision bf16        # as the pipeline samples (bf16 UNet)

Three numbers, each with its goal:
1. feature-capture overhead: the pipeline call with FeatureCapture's hooks on vs off (goal <= 1.05x).
   Plain and captured calls alternate, round by round; the ratio is of the medians. Under a
   reduced --precision the captured call also runs its capture step in fp32, as the stages do.
2. grounding inference as a fraction of generation: the grounding module's forward for the batch
   (features already captured) vs generating the batch (goal <= 5%).
3. bytes stored per sample: the capture-step latent synthesize writes vs the UNet features that
   train_grounding needs (recomputed from the latent with one UNet call, instead of stored).

Uses `worlds/shapes/diffusion` and `models/grounding` when they exist, else tiny random models of
the same architecture (the ratios then describe those). Run on an otherwise idle machine.
Writes reports/benchmarks/grounding_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline
from groundiff.diffusion.text import class_embeddings
from groundiff.method.grounding.model import GroundingConfig, GroundingModule

from benchmarks._results import write_results

PIPELINE = Path("worlds/shapes/diffusion")
GROUNDING = Path("models/grounding")


def _models():
    if PIPELINE.is_dir():
        pipe, source = load_pipeline(PIPELINE), str(PIPELINE)
    else:
        from groundiff.testing import tiny_shapes_pipeline

        pipe, source = tiny_shapes_pipeline(), "tiny random shapes pipeline"
    if GROUNDING.is_dir():
        module = GroundingModule.from_pretrained(GROUNDING)
    else:
        cfg = GroundingConfig.from_unet_config(pipe.unet.config, pipe.text_encoder.config.hidden_size,
                                               pipe.unet.config.sample_size * pipe.vae_scale_factor)
        module = GroundingModule(cfg)
    return pipe, module.eval(), source


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=50, help="images per generation call")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--capture-t", type=int, default=1, help="capture step, counted from the end")
    parser.add_argument("--rounds", type=int, default=5, help="alternating plain / captured rounds")
    parser.add_argument("--precision", default="fp32", help="the UNet's sampling precision: fp32 | bf16 | fp16")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    pipe, module, source = _models()
    classes = ["circle", "star"]
    prompts = [f"a photograph of a {classes[i % 2]}" for i in range(args.batch)]
    seeds = list(range(args.batch))
    sampling = SamplingConfig(steps=args.steps, guidance_scale=5.0, batch_size=args.batch, precision=args.precision)
    call = capture_call_for(args.steps, args.capture_t)

    generate(pipe, prompts[:2], seeds[:2], sampling)  # warm-up (allocator, kernels)
    plain, captured, grounding = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        generate(pipe, prompts, seeds, sampling)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with FeatureCapture(pipe.unet, call) as cap:
            generate(pipe, prompts, seeds, sampling, fp32_call=call)
        captured.append(time.perf_counter() - t0)
        features = cap.result()
        emb = class_embeddings(pipe, classes)[None].expand(args.batch, -1, -1)
        with torch.no_grad():
            t0 = time.perf_counter()
            module(features, emb)
            grounding.append(time.perf_counter() - t0)

    gen = statistics.median(plain)
    latent_bytes = cap.latents[0].numel() * 4  # float32, as synthesize stores it
    feature_bytes = sum(f[0].numel() for f in features) * 4
    result = {
        "models": source, "batch": args.batch, "ddim_steps": args.steps, "precision": args.precision,
        "capture_t": args.capture_t, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "generation_seconds_per_batch": round(gen, 4),
        "capture_overhead": round(statistics.median(captured) / gen, 4),  # goal <= 1.05
        "grounding_share_of_generation": round(statistics.median(grounding) / gen, 5),  # goal <= 0.05
        "latent_bytes_per_sample": latent_bytes, "feature_bytes_per_sample": feature_bytes,
    }
    text = "\n".join([
        f"Models: {source}; batch {args.batch}, {args.steps} DDIM steps, {args.precision} UNet, capture "
        f"t={args.capture_t}, {args.rounds} rounds, {result['torch_threads']} thread(s).", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| generation | {gen:.2f} s per batch ({args.batch / gen:.2f} images/s) | |",
        f"| feature-capture overhead | {result['capture_overhead']:.3f}x | <= 1.05x |",
        f"| grounding / generation | {100 * result['grounding_share_of_generation']:.2f}% | <= 5% |",
        f"| bytes per sample | latent {latent_bytes:,} vs features {feature_bytes:,} "
        f"({feature_bytes / latent_bytes:.0f}x smaller stored) | |",
    ])
    print(text)
    write_results("grounding_overhead", "What grounding costs on top of generation", result, text)
    return result


if __name__ == "__main__":
    main()
