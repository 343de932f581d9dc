"""Train world v2's diffusion model in world_diffusion's state folder, before it is shipped.

    python scripts/train_world_v2.py                # resumable: rerun after an interruption
    python scripts/train_world_v2.py --only-text    # the mini-CLIP text encoder alone (minutes)
    python scripts/train_world_v2.py --probe --out /tmp/v2_probe   # the unfinished cycle's EMA, assembled
    python scripts/train_world_v2.py --probe --snapshot unet_step4500.safetensors --out /tmp/v2_probe

The model is params.yaml's `world_diffusion.model` with `V2` applied: a mini-CLIP text encoder,
pretrained and frozen (`worlds/shapes_text.py`), and the UNet warm-started from world v1
(`worlds/shapes/diffusion-v1`, the pipeline shipped until v2) with its cross-attention's text pathway
re-initialised. It trains in `worlds/shapes/state/diffusion` exactly as `dvc repro world_diffusion`
would with V2 in params.yaml, so shipping is: copy V2 into params.yaml, `dvc repro world_diffusion`
(every phase is found finished and the pipeline is assembled), then world_fidelity and world_binding
check the bars. `--out DIR` assembles the pipeline there (a candidate to measure before shipping).
"""

import argparse
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from groundiff.core import paths
from groundiff.core.params import Params
from groundiff.core.io import write_json
from groundiff.core.schema import RunOptions
from groundiff.worlds.binding import class_word_cosine
from groundiff.worlds.shapes import CLASSES
from groundiff.worlds.shapes_diffusion import build_components, train_diffusion

STATE = paths.world_state("shapes", "diffusion")
TEXT_REPORT = paths.REPORTS / "world_v2_text_encoder.json"  # --only-text: the class words' cosine
V2 = {
    "text_encoder": "clip",
    "init_pipeline": "worlds/shapes/diffusion-v1",
    # One warm-started cycle of batch 32. 1000 steps (32k images, 18 min on 2 idle cores): DAAM 43.4 and
    # fidelity 90.0% / 56.0%, against 38.6 and 81.5% / 64.0% after the 3000 steps of the first run
    # (its weights: worlds/shapes/state/diffusion/unet_cycle1.safetensors at commit 31b933a).
    "steps": 1000,
    "batch_size": 32,
    "lr": 0.0005,
    "warmup_steps": 100,
    # Cycle 2 (2026-12-05): v1's CPU recipe for a second cycle (peak lr 4e-4 at batch 64, Min-SNR-gamma 5)
    # on fresh scenes, from cycle 1's EMA weights; sized to finish in one session on 2 idle cores.
    "finetune_steps": 1600,
    "finetune_lr": 0.0004,
    "finetune_snr_gamma": 5.0,
    "finetune_batch_size": 64,
    # Every cross-attention kept as cycle 1 left it: after the 3000-step cycle 1, DAAM went 40.8 -> 38.8
    # over this cycle with it (the same 71 images) and 40.8 -> 34.0 without, at similar fidelity.
    "finetune_freeze_cross_attention": True,
}
# On a lent GPU (`scripts/timeboxed_second_cycle.py --v2`): v1's shipped second cycle, batch 256 at
# peak lr 8e-4 (4e-4 at batch 64 scaled by sqrt(4)), Min-SNR-gamma 5; its length fits the time box.
V2_GPU_CYCLE2 = {"finetune_lr": 0.0008, "finetune_snr_gamma": 5.0, "finetune_batch_size": 256}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only-text", action="store_true", help="train the mini-CLIP text encoder phase only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe", action="store_true",
                    help="assemble a pipeline from the unfinished UNet's EMA weights into --out (progress checks)")
    ap.add_argument("--snapshot", type=Path,
                    help="with --probe: an EMA snapshot file (timeboxed_second_cycle.py --v2) instead of the state")
    ap.add_argument("--out", type=Path, default=Path("/tmp/world_v2_candidate"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = replace(Params().section("world_diffusion").model, **V2)
    opts = RunOptions(mixed_precision="no", num_threads=args.threads, checkpoint_every=50, log_every=10)
    print(f"world v2: {V2}", flush=True)
    if args.only_text:
        from groundiff.worlds.shapes_diffusion import _clip_batches
        from groundiff.worlds.shapes_text import train_text_encoder

        comps = build_components(cfg)
        STATE.mkdir(parents=True, exist_ok=True)
        print(train_text_encoder(comps["text_encoder"], comps["tokenizer"], cfg, opts, STATE, _clip_batches(cfg)))
        text = SimpleNamespace(tokenizer=comps["tokenizer"], text_encoder=comps["text_encoder"], device="cpu")
        with torch.no_grad():
            cosine = class_word_cosine(text, CLASSES)
        write_json(TEXT_REPORT, {"v2": V2, "cosine": cosine})
        print(f"class-word cosine mean {cosine['class_word']['mean']:.3f} (max {cosine['class_word']['max']:.3f}), "
              f"<eos> {cosine['eos']['mean']:.3f}; wrote {TEXT_REPORT}")
        return
    if args.probe:
        probe(cfg, opts, args.out, args.snapshot)
        return
    print(train_diffusion(cfg, opts, args.out, STATE))


def probe(cfg, opts: RunOptions, out: Path, snapshot: Path | None = None) -> None:
    """The pipeline train_diffusion would assemble, with the UNet's EMA weights from `snapshot` (a
    GPU cycle's, `timeboxed_second_cycle.py --v2`) or else from the last checkpoint of the newest cycle
    that has one: measure it (scripts/measure_binding.py, measure_fidelity.py) to see whether the run is
    on track. Its step is printed on the one axis both cycles share (cycle 2's step s is cycle 1's
    steps + s), which names the probe's reports."""
    from groundiff.worlds.shapes_diffusion import (_clip_batches, assemble_pipeline, latent_scaling_factor,
                                                   newest_checkpoint, read_ema_snapshot, warm_start)
    from groundiff.worlds.shapes_text import train_text_encoder

    comps = build_components(cfg)
    train_text_encoder(comps["text_encoder"], comps["tokenizer"], cfg, opts, STATE, _clip_batches(cfg))  # finished: loads
    warm_start(comps, cfg)
    if snapshot is None:
        try:
            snapshot = newest_checkpoint(cfg, STATE)[1]
        except FileNotFoundError as err:
            raise SystemExit(f"{err}: run this script without --probe first") from None
    unet_step, weights = read_ema_snapshot(cfg, snapshot)
    comps["unet"].load_state_dict(weights)
    pipe = assemble_pipeline(comps, latent_scaling_factor(comps["vae"], cfg, "cpu"))
    pipe.save_pretrained(out, safe_serialization=True)
    print(f"probe: the UNet's EMA from {snapshot} (UNet step {unet_step}), assembled in {out}")


if __name__ == "__main__":
    main()
