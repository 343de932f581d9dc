"""Synthesis throughput on a Dask LocalCluster: 2 workers vs 1, measured in one run.

    python -m benchmarks.distributed_synthesis                      # the shapes world's model
    python -m benchmarks.distributed_synthesis --images 40 --steps 5  # a quick smoke run
    python -m benchmarks.distributed_synthesis --workers 1 2 4 --pipeline worlds/shapes/diffusion

For each worker count it starts a LocalCluster (one thread per worker), loads the pipeline on
every worker (not timed: a worker loads it once and keeps it), then times
`groundiff.method.distributed.synthesize_distributed` writing the same prompt table into a fresh
folder. It prints images/s per worker count and each count's speed-up over the first, and
checks that every run wrote the same bytes. Run it on an otherwise idle machine: with other
work on the cores, the ratio measures the contention, not the scaling. Without the shapes
world's model (`dvc repro world_diffusion`) it uses a tiny random pipeline of the same shape.
Writes reports/benchmarks/distributed_synthesis.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._results import write_results

SHAPES_PIPELINE = Path("worlds/shapes/diffusion")


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _tiny_pipeline(folder: Path) -> Path:
    from groundiff.worlds.shapes_diffusion import DiffusionConfig, assemble_pipeline, build_components

    components = build_components(DiffusionConfig(vae_channels=8, block_out_channels=(8, 16, 16),
                                                  attention_heads=2, text_width=16))
    assemble_pipeline(components, 1.0).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers pipeline folder (default: the shapes "
                        "world's, else a tiny random one)")
    parser.add_argument("--images", type=int, default=400, help="prompts to synthesize per worker count")
    parser.add_argument("--shard-size", type=int, default=20, help="rows per shard (= per task)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16", help="the UNet's sampling precision (the pipeline's: bf16)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from groundiff.data.prompts import PromptConfig, sample_prompts
    from groundiff.diffusion.pipeline import SamplingConfig
    from groundiff.method.distributed import DistributedConfig, dask_client, load_on_workers, synthesize_distributed
    from groundiff.method.synthesis import SynthesisConfig
    from groundiff.worlds.shapes import CLASSES

    work = Path(tempfile.mkdtemp(prefix="groundiff-bench-"))
    try:
        if args.pipeline:
            source, which = Path(args.pipeline), args.pipeline
        elif (SHAPES_PIPELINE / "model_index.json").is_file():
            source, which = SHAPES_PIPELINE, "shapes world"
        else:
            source, which = _tiny_pipeline(work / "tiny_pipe"), "tiny random pipeline"
        table = sample_prompts(CLASSES, PromptConfig(n=args.images, seed=0))
        cfg = SynthesisConfig(sampling=SamplingConfig(steps=args.steps, guidance_scale=5.0, batch_size=args.batch_size,
                                                      precision=args.precision), shard_size=args.shard_size)
        print(f"pipeline: {which}; {args.images} images, {args.steps} DDIM steps, shards of {args.shard_size}, "
              f"batch {args.batch_size}, {args.precision}, {os.cpu_count()} CPUs, device {args.device}")
        rows, digests = [], set()
        for n in args.workers:
            start = time.perf_counter()
            with dask_client(DistributedConfig("local", n_workers=n)) as client:  # as the stages start it
                load_on_workers(client, source, args.device)
                ready = time.perf_counter()
                out = work / f"out_{n}"
                synthesize_distributed(source, table, cfg, out, model_id="bench", device=args.device, client=client)
                seconds = time.perf_counter() - ready
            digests.add(_digest(out))
            shutil.rmtree(out)
            rows.append((n, ready - start, seconds, args.images / seconds))
            print(f"  {n} worker(s): cluster + model load {ready - start:.1f} s, synthesis {seconds:.1f} s, "
                  f"{args.images / seconds:.2f} img/s", flush=True)
        base = rows[0][3]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "pipeline": which, "images": args.images, "ddim_steps": args.steps, "shard_size": args.shard_size,
        "batch_size": args.batch_size, "precision": args.precision, "device": args.device, "cpus": os.cpu_count(),
        "runs": [{"workers": n, "startup_seconds": round(load, 2), "synthesis_seconds": round(seconds, 2),
                  "images_per_second": round(rate, 3), "speedup": round(rate / base, 3)}
                 for n, load, seconds, rate in rows],
        "same_bytes": len(digests) == 1,
    }
    text = "\n".join([f"Pipeline: {which}; {args.images} images, {args.steps} DDIM steps, shards of {args.shard_size}, "
                      f"batch {args.batch_size}, {args.precision}, {os.cpu_count()} CPUs, device {args.device}.", "",
                      "| workers | img/s | speed-up |", "|---|---|---|"]
                     + [f"| {r['workers']} | {r['images_per_second']:.2f} | {r['speedup']:.2f}x |" for r in result["runs"]]
                     + ["", f"Every run wrote the same bytes: {result['same_bytes']}."])
    print(text)
    write_results("distributed_synthesis", "Synthesis throughput on a Dask LocalCluster", result, text)
    return result


if __name__ == "__main__":  # LocalCluster starts worker processes with `spawn`: guard the entry point
    main()
