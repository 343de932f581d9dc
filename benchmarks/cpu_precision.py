"""Does this CPU run the pipeline's bf16 sampling fast, and which kernels does it use? (one run, ratios)

    python -m benchmarks.cpu_precision            # writes reports/benchmarks/cpu_precision.json and .md

The generating stages sample under bf16 autocast (`*.sampling.precision: bf16`), chosen on a CPU
with AVX512-BF16, where it was 1.71x faster than fp32. Without native bf16 the same call is
emulated and far slower, and fp32 kernels differ by instruction set (AVX2 vs AVX-512), so the
last bits of a training run differ from those of a machine of the other kind. This benchmark
records the CPU capability torch sees and times one single-thread matmul in fp32 and under bf16
autocast, alternating, so that a session knows at once whether the shipped settings fit its machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks._results import OUT_DIR, write_results


def time_matmul(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype | None) -> float:
    start = time.perf_counter()
    if dtype is None:
        x @ w
    else:
        with torch.autocast("cpu", dtype=dtype):
            x @ w
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square matmul side (batch 16)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(16, args.size, args.size, generator=gen), torch.randn(args.size, args.size, generator=gen)
    fp32, bf16 = [], []
    for _ in range(args.rounds):
        fp32.append(time_matmul(x, w, None))
        bf16.append(time_matmul(x, w, torch.bfloat16))
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    result = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "machine": platform.machine(),
        "fp32_seconds": statistics.median(fp32),
        "bf16_autocast_seconds": statistics.median(bf16),
        "bf16_over_fp32_time": round(statistics.median(bf16) / statistics.median(fp32), 2),
        "size": args.size, "rounds": args.rounds, "threads": 1,
    }
    print(json.dumps(result, indent=2))
    fast = "runs bf16 natively" if result["bf16_over_fp32_time"] < 1 else "emulates bf16: keep `precision: fp32` here"
    text = "\n".join([
        f"CPU capability `{result['cpu_capability']}` ({result['machine']}), AVX512-BF16: {result['avx512_bf16']}; "
        f"a ({args.size} x {args.size}) batch-16 matmul on one thread, median of {args.rounds} rounds: this CPU {fast}.", "",
        "| fp32 (s) | bf16 autocast (s) | bf16 / fp32 time |", "|---|---|---|",
        f"| {result['fp32_seconds']:.4f} | {result['bf16_autocast_seconds']:.4f} | {result['bf16_over_fp32_time']:.2f} |"])
    write_results("cpu_precision", "bf16 sampling on this CPU", result, text, OUT_DIR)
    return result


if __name__ == "__main__":
    main()
