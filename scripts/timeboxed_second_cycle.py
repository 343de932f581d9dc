"""Train world_diffusion's second cycle as long as a time box allows: how the shipped one was made.

    python -m groundiff.stages.world_diffusion --continue      # seed cycle 1 into the state folder
    python scripts/timeboxed_second_cycle.py [--v2] BUDGET_S PROBE_STEPS DEVICE WORKERS OUT_DIR [STEPS]
    # e.g. on a lent GPU, inside one 10-minute call:  ... 515 400 cuda 8 $OUT

It times PROBE_STEPS steps of the second cycle on a scratch copy of the state, picks the longest
length (a multiple of 500) that fits 90% of what is left of BUDGET_S (or takes STEPS), and trains
that cycle into worlds/shapes/state/diffusion with the library's `train_diffusion`. OUT_DIR gets
the cycle's EMA weights (in two halves, for transfer limits; the file carries its params'
fingerprint), its loss log and report.json (device, steps/s, chosen length, times). Back here:
join the halves into the state folder as unet_cycle2.safetensors, copy the log, set
`world_diffusion.model.finetune_steps` to the chosen length, and run `dvc repro world_diffusion`;
it finds every phase done and assembles, records and logs the pipeline.
The shipped cycle 2 (4500 steps of 256, `finetune_batch_size`) came from `530 300 cuda 8` on an
H100 (11.6 steps/s); an earlier 4000 steps of 64 from `515 400 cuda 8` on an H200 (10.9 steps/s).

`--v2` trains world v2's second cycle instead (issue 26): `scripts/train_world_v2.py`'s `V2` settings
with `V2_GPU_CYCLE2` (v1's shipped GPU recipe) over them. Its first phases (mini-CLIP, cycle 1) are
committed in the state folder, so nothing needs seeding. Its length is a multiple of 1500 and OUT_DIR
also gets the EMA UNet at its first and second third (`unet_stepN.part0/1`, N on the axis both cycles
share), so the checkpoint can be chosen by issue 26's bars: binding was best early in the CPU runs and
fidelity late. That is 8 files, about 60 MB: what one call may bring back. Back here: join each pair
(`cat X.part0 X.part1 > X.safetensors`); a snapshot is assembled by `scripts/train_world_v2.py --probe
--snapshot unet_stepN.safetensors --out DIR`; the whole cycle by putting unet_cycle2.safetensors in the
state folder, setting `finetune_steps` and `V2_GPU_CYCLE2` in `V2` and `scripts/train_world_v2.py --out
DIR`. Measure each with scripts/measure_binding.py and scripts/measure_fidelity.py.
On a GPU the UNet trains in bf16; on a CPU in fp32 (bf16 pays only with AVX512-BF16).
"""

import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from groundiff.core import paths
from groundiff.core.params import Params
from groundiff.worlds.shapes_diffusion import (
    DiffusionConfig,
    RunOptions,
    save_ema_snapshot,
    train_diffusion,
)

STATE = paths.world_state("shapes", "diffusion")  # world_diffusion's resumable state


def probe_rate(cfg: DiffusionConfig, opts: RunOptions, probe_steps: int) -> float:
    """Second-cycle steps per second, timed after the first quarter of a scratch run (warm-up)."""
    scratch = Path("/tmp/gd_probe")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(STATE, scratch)
    marks: dict[int, float] = {}

    def mark(m: dict) -> None:
        if "unet_loss" in m:
            marks[m["step"] - cfg.steps] = time.time()

    train_diffusion(replace(cfg, finetune_steps=probe_steps), opts, Path("/tmp/gd_probe_out"), scratch, on_log=mark)
    first, last = min(k for k in marks if k >= probe_steps // 4), max(marks)
    return (last - first) / (marks[last] - marks[first])


def halves(path: Path, out: Path, stem: str) -> None:
    """`path` as out/stem.part0 and .part1 (one file may not come back from a device call over 16 MiB)."""
    data = path.read_bytes()
    (out / f"{stem}.part0").write_bytes(data[:len(data) // 2])
    (out / f"{stem}.part1").write_bytes(data[len(data) // 2:])


def main(argv: list[str]) -> None:
    t0 = time.time()
    v2 = "--v2" in argv
    argv = [a for a in argv if a != "--v2"]
    budget, probe_steps, device, workers, out = float(argv[0]), int(argv[1]), argv[2], int(argv[3]), Path(argv[4])
    cfg = Params().section("world_diffusion").model
    if v2:
        from train_world_v2 import V2, V2_GPU_CYCLE2  # this script's folder is on sys.path

        cfg = replace(cfg, **{**V2, **V2_GPU_CYCLE2})
    # bf16 on a GPU; on a CPU only where AVX512-BF16 exists (emulated ~35x slower on AVX2): fp32 there
    opts = RunOptions(device=device, mixed_precision="bf16" if device.startswith("cuda") else "no", checkpoint_every=10**6,
                      log_every=max(min(20, probe_steps // 4), 1), data_workers=workers)
    report = {"world": "v2" if v2 else "v1",
              "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "probe_steps": probe_steps, "budget_s": budget,
              "finetune_batch_size": cfg.finetune_batch_size or cfg.batch_size, "finetune_lr": cfg.finetune_lr}
    rate = probe_rate(cfg, opts, probe_steps)
    remaining = budget - (time.time() - t0) - 30  # the final save and the copy out
    unit = 1500 if v2 else 500  # v2: thirds of the cycle are snapshot
    steps = int(argv[5]) if len(argv) > 5 else int(rate * remaining * 0.9 // unit * unit)
    report.update(steps_per_s=rate, probe_done_s=time.time() - t0, finetune_steps=steps)
    print(report, flush=True)
    if steps <= 0:
        raise SystemExit("no time left for a second cycle")

    t1 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, finetune_steps=steps)
    third = steps // 3 if v2 and steps % 3 == 0 else 0
    snapshots: list[int] = []

    def snapshot(m: dict) -> None:  # called after the step's checkpoint (TrainingLoop)
        if third and "unet_loss" in m and m["step"] - cfg.steps in (third, 2 * third):
            tmp = Path("/tmp/gd_snapshot.safetensors")
            unet_step = save_ema_snapshot(cfg, STATE, tmp)
            halves(tmp, out, f"unet_step{unet_step}")
            snapshots.append(unet_step)

    # a report at each third, after its checkpoint: log_every must divide the third
    train_opts = replace(opts, log_every=math.gcd(20, third) if third else 20,
                         checkpoint_every=third or opts.checkpoint_every)
    metrics = train_diffusion(cfg, train_opts, Path("/tmp/gd_out"), STATE, on_log=snapshot)
    report.update(train_s=time.time() - t1, total_s=time.time() - t0, metrics=metrics, snapshots=snapshots)
    shutil.copy(STATE / "unet_cycle2_log.csv", out / "unet_cycle2_log.csv")
    halves(STATE / "unet_cycle2.safetensors", out, "unet_cycle2")
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(report, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
