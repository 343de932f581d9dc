"""The paper's scale, dry: Stable Diffusion v1.5's architecture (random weights) through the method's stages.

    OMP_NUM_THREADS=1 python -m benchmarks.paper_scale                  # CPU: 1 image, 3 DDIM steps
    python -m benchmarks.paper_scale --tiny                               # the same flow on a tiny SD (seconds)
    python -m benchmarks.paper_scale --paper --device cuda               # a GPU: the preset's settings
    python -m benchmarks.paper_scale --docs                              # also rewrite docs/gpu.md's block
    python -m benchmarks.paper_scale --from-json --docs                  # the block again, from the saved JSON

Nothing is downloaded: the UNet, the VAE and the CLIP text encoder are built from SD v1.5's
configs (the numbers below) with seeded random weights, so the run measures the architecture's
time and memory, not its images. The tokenizer is a small real CLIP BPE tokenizer (the text
encoder keeps CLIP's 49,408-token embedding table). Each step calls the library as the stage does:

1. build: the three components and the grounding module (18,796,560 parameters for SD v1).
2. plain: `generate`, no hooks: what any SD user pays.
3. captured: the same call inside `FeatureCapture` (all 25 UNet maps at the capture step), as
   `eval_grounding` and `synth_dataset` generate. Plain and captured calls alternate for
   `--rounds` rounds; the capture overhead is the ratio of their medians.
4. synthesize: `write_synthesis_shard` (images + capture-step latents, one shard, written to disk).
5. train_grounding step: one optimisation step as `train_grounding` takes it (batch 1, the
   paper's): replay the features from the stored latent (`replay_batch`, one UNet call), the
   module forward and backward with the paper's loss, one Adam step.
6. synth_dataset labelling: `make_shard` (generation with capture, the module, label maps written).

Per step: wall time, this process's CPU time, and peak memory (resident set sampled every 20 ms;
on a GPU also torch's peak allocation). On a CPU the ratios use CPU time: with one thread it is the
work done, whatever else the machine runs (on a shared machine wall time mostly measures the
neighbours); on a GPU they use wall time. Writes reports/benchmarks/paper_scale.json and .md; with `--docs`, the
block between the markers in docs/gpu.md is rewritten from that JSON, so the page quotes the
measured numbers and nothing else.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

OUT_JSON = Path("reports/benchmarks/paper_scale.json")
DOCS = Path("docs/gpu.md")
BEGIN, END = "<!-- paper_scale:begin (written by benchmarks/paper_scale.py --docs) -->", "<!-- paper_scale:end -->"

#: Stable Diffusion v1.5's component configs (runwayml/stable-diffusion-v1-5, diffusers layout).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD15_VAE = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
#: The classes prompted here (VOC names; the tokenizer spells each as one token).
CLASSES = ("dog", "cat", "horse", "sheep")


def build_sd15(folder: Path, seed: int = 0):
    """A StableDiffusionPipeline with SD v1.5's architecture and seeded random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from groundiff.testing import write_clip_tokenizer

    write_clip_tokenizer(folder, ["a", "photograph", "of", "and", *CLASSES], model_max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PeakMemory:
    """Peak memory of a block: the process's resident set, sampled every 20 ms, and on a GPU
    torch's peak allocation (exact)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.rss_peak = 0
        self._stop = threading.Event()
        self._page = resource.getpagesize()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss_peak = max(self.rss_peak, self._rss())

    @contextmanager
    def measure(self, into: dict, label: str = "") -> Iterator[None]:
        if label:
            print(f"paper_scale: {label} ...", flush=True)
        self.rss_peak = self._rss()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._stop.clear()
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            into["seconds"] = round(time.perf_counter() - start, 3)
            into["cpu_seconds"] = round(time.process_time() - cpu_start, 3)
            self._stop.set()
            sampler.join()
            self.rss_peak = max(self.rss_peak, self._rss())
            into["peak_rss_gb"] = round(self.rss_peak / 2**30, 3)
            if self.cuda:
                into["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def build_tiny(folder: Path):
    """The same flow's smoke size: a tiny random SD-architecture pipeline (groundiff.testing)."""
    from groundiff.diffusion.pipeline import load_pipeline
    from groundiff.testing import tiny_sd_pipeline

    return load_pipeline(tiny_sd_pipeline(folder, CLASSES))


def run(args: argparse.Namespace) -> dict:
    from groundiff.core.schema import (PromptConfig, SamplingConfig, SynthDatasetConfig, SynthesisConfig,
                                       TrainConfig)
    from groundiff.data.prompts import sample_prompts
    from groundiff.data.shards import read_shard
    from groundiff.diffusion.capture import FeatureCapture, capture_call_for
    from groundiff.diffusion.pipeline import generate, image_size
    from groundiff.diffusion.text import class_embeddings
    from groundiff.method.grounding.model import GroundingConfig, GroundingModule
    from groundiff.method.grounding.train import grounding_loss, replay_batch
    from groundiff.method.synth_dataset import make_shard, synth_prompts
    from groundiff.method.synthesis import write_synthesis_shard
    from groundiff.worlds.base import make_split
    from groundiff.worlds.paper import VOC_CLASSES, VOC_SPLITS

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    memory = PeakMemory(device)
    # the time ratios are taken of: CPU time on a CPU (robust to other processes), wall time on a GPU
    clock = "seconds" if device.startswith("cuda") else "cpu_seconds"
    stages: dict[str, dict] = {}
    sampling = SamplingConfig(steps=args.steps, guidance_scale=5.0, batch_size=args.batch, precision=args.precision)
    call = capture_call_for(args.steps, 1)  # the released code's capture step (t = 1)
    # two-object prompts, made by the prompts stage's own table builder
    rows = sample_prompts(CLASSES, PromptConfig(n=args.images, seed=0, two_object_prob=1.0))
    prompts, seeds = list(rows["prompt"]), [int(s) for s in rows["seed"]]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. build
        with memory.measure(stages.setdefault("build", {}), "build"):
            pipe = (build_tiny(work / "tiny") if args.tiny else build_sd15(work / "tokenizer")).to(device)
            gcfg = GroundingConfig.from_unet_config(pipe.unet.config, pipe.text_encoder.config.hidden_size,
                                                    image_size(pipe))
            torch.manual_seed(42)
            module = GroundingModule(gcfg).to(device)
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in
                  (("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder),
                   ("grounding_module", module))}

        # 2.-3. plain vs captured generation, alternating
        plain, captured = [], []
        for r in range(args.rounds):
            with memory.measure(stages.setdefault(f"plain_round{r}", {}), f"plain generation, round {r}"):
                generate(pipe, prompts, seeds, sampling)
            plain.append(stages[f"plain_round{r}"][clock])
            with memory.measure(stages.setdefault(f"captured_round{r}", {}), f"captured generation, round {r}"):
                with FeatureCapture(pipe.unet, call) as cap:
                    generate(pipe, prompts, seeds, sampling, fp32_call=call)
                features = cap.result()
            captured.append(stages[f"captured_round{r}"][clock])
        feature_bytes = sum(f[0].numel() * f.element_size() for f in features)
        del features, cap

        # 4. synthesize: one shard of images + capture-step latents
        synth_cfg = SynthesisConfig(sampling=sampling, capture_t=1, shard_size=args.images)
        with memory.measure(stages.setdefault("synthesize", {}), "synthesize"):
            shard = write_synthesis_shard(pipe, rows, synth_cfg, work / "synth", 0)
        samples = read_shard(shard)

        # 5. one train_grounding step at batch 1: replay, forward, the paper's loss, backward, Adam
        train_cfg = TrainConfig(lr=1e-5, batch_size=1)
        table = class_embeddings(pipe, list(CLASSES), train_cfg.template).to(device)  # (N, D)
        opt = torch.optim.Adam(module.parameters(), lr=train_cfg.lr)
        module.train()
        s = samples[0]
        names = rows["classes"].iloc[0].split("|")
        size = gcfg.image_size
        targets = torch.zeros(1, len(names), size, size, device=device)
        targets[0, 0, : size // 2] = 1  # any target: the step's cost does not depend on it
        targets[0, 1, :, : size // 2] = 1
        found = torch.ones(1, len(names), dtype=torch.bool, device=device)
        emb = table[torch.tensor([[CLASSES.index(n) for n in names]], device=device)]  # (1, K, D)
        for r in range(args.rounds):  # the first step also allocates Adam's state
            with memory.measure(stages.setdefault(f"train_step_round{r}", {}), f"train_grounding step {r}"):
                feats = [f.to(device) for f in replay_batch(pipe, s.latent[None], [s.timestep], [s.prompt])]
                logits = module(feats, emb)
                loss, _ = grounding_loss(logits, targets, found, found, train_cfg.strategy)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            del feats, logits, loss
        module.eval()

        # 6. synth_dataset's labelling of one shard
        split = make_split("voc", VOC_CLASSES, VOC_SPLITS[1])
        ds_cfg = SynthDatasetConfig(sampling=sampling, shard_size=args.images, n_one=0, n_two=args.images,
                                    n_complicated=0)
        ds_rows = synth_prompts(CLASSES, ds_cfg)  # synth_dataset's own table: kind, prompt, classes, seed
        embeddings = dict(zip(CLASSES, class_embeddings(pipe, list(CLASSES), ds_cfg.grounding_template)))
        root = work / "segmentation"
        for sub in ("JPEGImages", "SegmentationClass", "shards"):
            (root / sub).mkdir(parents=True)
        with memory.measure(stages.setdefault("synth_dataset_labelling", {}), "synth_dataset labelling"):
            make_shard(pipe, module, ds_rows, split, ds_cfg, embeddings, root, 0)

    gen = statistics.median(plain)
    train_step = stages[f"train_step_round{args.rounds - 1}"][clock]  # Adam's state already allocated
    unet_calls = args.steps * -(-args.images // args.batch)
    result = {
        "what": ("a tiny random SD-architecture pipeline (smoke run)" if args.tiny else
                 "SD v1.5's architecture with random weights"),
        "settings": {"image_size": gcfg.image_size, "images": args.images, "ddim_steps": args.steps, "batch": args.batch, "rounds": args.rounds,
                     "precision": args.precision, "guidance_scale": 5.0, "capture_t": 1,
                     "train_batch": 1},
        "machine": {"device": device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "machine": platform.machine()},
        "parameters": counts,
        "stages": stages,
        "ratios": {
            "clock": clock,
            "capture_overhead": round(statistics.median(captured) / gen, 3),
            "synthesize_over_plain": round(stages["synthesize"][clock] / gen, 3),
            "labelling_over_plain": round(stages["synth_dataset_labelling"][clock] / gen, 3),
            "train_step_over_plain_image": round(train_step / (gen / args.images), 3),
        },
        "derived": {
            "clock": clock,
            "plain_seconds_per_image": round(gen / args.images, 3),
            "plain_seconds_per_unet_step": round(gen / unet_calls, 3),  # VAE and text encoder included
            "train_step_seconds": train_step,
            "feature_bytes_per_image": feature_bytes,
            "latent_bytes_per_image": s.latent.numel() * 4,  # float32, as synthesize stores it
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        },
    }
    return result


def markdown(result: dict) -> str:
    """The JSON as a page: the per-stage table, the ratios, the settings."""
    s, m = result["settings"], result["machine"]
    where = m["gpu"] or f"CPU ({m['cpu_capability']}, {m['threads']} thread(s))"
    gpu = any("peak_gpu_gb" in v for v in result["stages"].values())
    lines = [
        f"Measured by `benchmarks/paper_scale.py` on {where}, torch {m['torch']}: {result['what']}, "
        f"{s['image_size']}x{s['image_size']}, {s['images']} image(s), {s['ddim_steps']} DDIM steps, sampling batch "
        f"{s['batch']}, {s['precision']}, grounding-module training batch {s['train_batch']}.",
        "",
        "| step | wall seconds | CPU seconds | peak resident memory (GB) |" + (" peak GPU memory (GB) |" if gpu else ""),
        "|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for name, v in result["stages"].items():
        lines.append(f"| {name} | {v['seconds']:.1f} | {v['cpu_seconds']:.1f} | {v['peak_rss_gb']:.2f} |"
                     + (f" {v.get('peak_gpu_gb', float('nan')):.2f} |" if gpu else ""))
    r, d = result["ratios"], result["derived"]
    clock = "CPU time" if r["clock"] == "cpu_seconds" else "wall time"
    # steps that make the same UNet calls: their spread is the measurement's noise
    same = [v[r["clock"]] for k, v in result["stages"].items()
            if k.startswith(("plain_", "captured_")) or k in ("synthesize", "synth_dataset_labelling")]
    lines += [
        "",
        f"Ratios and times below are of {clock}. The steps that make the same UNet calls (plain, captured, "
        f"synthesize, labelling) spread by {100 * (max(same) / min(same) - 1):.0f}% here: ratios within that "
        "are equal within the noise.",
        "",
        f"- feature-capture overhead (captured / plain generation, medians of {s['rounds']} alternating rounds): "
        f"**{r['capture_overhead']:.3f}x**",
        f"- synthesize (latents kept, shard written) / plain generation: {r['synthesize_over_plain']:.3f}x; "
        f"synth_dataset labelling (capture + module + label maps written) / plain: {r['labelling_over_plain']:.3f}x",
        f"- one train_grounding step (replay + forward + backward + Adam, batch 1): {d['train_step_seconds']:.1f} s, "
        f"{r['train_step_over_plain_image']:.2f}x one plain image at {s['ddim_steps']} steps",
        f"- plain generation: {d['plain_seconds_per_image']:.1f} s per image, {d['plain_seconds_per_unet_step']:.1f} s "
        "per DDIM step (VAE decode and text encoder included)",
        f"- UNet features per image at the capture step: {d['feature_bytes_per_image'] / 2**20:.0f} MiB vs a stored "
        f"latent of {d['latent_bytes_per_image'] // 1024} KiB",
        f"- peak resident memory of the whole run: {d['peak_rss_gb']:.2f} GB; parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in result["parameters"].items()),
    ]
    return "\n".join(lines) + "\n"


def update_docs(result: dict, docs: Path = DOCS) -> None:
    """Rewrite docs/gpu.md's block between the paper_scale markers from the measured result."""
    text = docs.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{docs}: no block between {BEGIN!r} and {END!r} to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    docs.write_text(head + BEGIN + "\n" + markdown(result) + END + tail)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true",
                        help="the preset's settings: 8 images, 50 DDIM steps, sampling batch 8 (a GPU)")
    parser.add_argument("--images", type=int, default=1, help="images per generating step")
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps")
    parser.add_argument("--batch", type=int, default=1, help="sampling batch")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain / captured rounds (and train steps)")
    parser.add_argument("--precision", default="fp32", help="UNet sampling precision: fp32 | bf16 | fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/gpu.md's measured block from the result")
    parser.add_argument("--tiny", action="store_true", help="a tiny random SD-architecture pipeline: the flow, in seconds")
    parser.add_argument("--out", default=str(OUT_JSON), help="the JSON to write (the .md goes beside it)")
    parser.add_argument("--from-json", action="store_true",
                        help="run nothing: rewrite the .md (and with --docs the docs block) from the saved JSON")
    args = parser.parse_args(argv)
    out_json = Path(args.out)
    out_md = out_json.with_suffix(".md")
    if args.from_json:
        result = json.loads(out_json.read_text())
        out_md.write_text("# Paper-scale dry run\n\n" + markdown(result))
        if args.docs:
            update_docs(result)
        return result
    if args.paper:
        args.images, args.steps, args.batch = 8, 50, 8
    result = run(args)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    out_md.write_text("# Paper-scale dry run\n\n" + markdown(result))
    if args.docs:
        update_docs(result)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
