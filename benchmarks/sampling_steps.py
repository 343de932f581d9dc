"""Fidelity and speed of the world's diffusion model against DDIM steps and guidance, in one run.

    python -m benchmarks.sampling_steps                            # 25 vs 15 vs 10 steps, 200 prompts
    python -m benchmarks.sampling_steps --steps 25 15 --per-class 10 --two-object 100
    python -m benchmarks.sampling_steps --steps 25 --guidance 3 5 7.5 --prompt-seed 99
    python -m benchmarks.sampling_steps --steps 25 --precision fp32 bf16

Every setting (each step count with each guidance scale and precision) generates the same seeded prompts as
`world_fidelity` (a prefix of them: the first `--per-class` one-object prompts of each class and
the first `--two-object` two-object ones), and the world's oracle scores them exactly as the stage
does. It prints, per setting, the one-object recall, the two-object both-found recall, images/s
and the speed-up over the first setting. Fewer steps make every generating stage (synthesize,
eval_grounding, synth_dataset) proportionally faster; this is how to see what it costs.

To *choose* a setting, draw other prompts than the ones world_fidelity reports on
(`--prompt-seed`, any seed but world_fidelity.prompts.seed): picking on the reported prompts would
tune on the test. Run it on an otherwise idle machine. Writes reports/benchmarks/sampling_steps.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

import pandas as pd

from benchmarks._results import write_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 15, 10])
    parser.add_argument("--guidance", type=float, nargs="+", default=None, help="default: world_fidelity.sampling's")
    parser.add_argument("--precision", nargs="+", default=None, help="default: world_fidelity.sampling's")
    parser.add_argument("--prompt-seed", type=int, default=None,
                        help="draw the prompts with this seed (default: world_fidelity.prompts.seed, the reported set)")
    parser.add_argument("--per-class", type=int, default=10, help="one-object prompts per class")
    parser.add_argument("--two-object", type=int, default=100, help="two-object prompts")
    args = parser.parse_args(argv)

    from groundiff.diffusion.pipeline import generate, load_pipeline
    from groundiff.core.params import Params
    from groundiff.worlds.active import World
    from groundiff.worlds.fidelity import fidelity_metrics, fidelity_prompts

    params = Params()
    world = World(params)
    p = params.section("world_fidelity")
    classes = world.split.classes
    prompts = p.prompts if args.prompt_seed is None else replace(p.prompts, seed=args.prompt_seed)
    full = fidelity_prompts(classes, prompts)
    n = p.prompts.one_per_class
    one = [c * n + j for c in range(len(classes)) for j in range(min(args.per_class, n))]
    two = list(range(len(classes) * n, len(full)))[:args.two_object]
    table = full.iloc[one + two].reset_index(drop=True)
    pipe = load_pipeline(world.pipeline, params.world.device)
    oracle = world.load_oracle()
    rows = []
    guidances = [p.sampling.guidance_scale] if args.guidance is None else args.guidance
    precisions = [p.sampling.precision] if args.precision is None else args.precision
    for steps, guidance, precision in itertools.product(args.steps, guidances, precisions):
        sampling = replace(p.sampling, steps=steps, guidance_scale=guidance, precision=precision)
        t0 = time.perf_counter()
        images = []
        for i in range(0, len(table), sampling.batch_size):
            chunk = table.iloc[i:i + sampling.batch_size]
            images.extend(generate(pipe, list(chunk["prompt"]), list(chunk["seed"]), sampling))
        seconds = time.perf_counter() - t0
        m = fidelity_metrics(table, oracle.detect(images), classes, p.prompts.score_threshold)
        rows.append({"steps": steps, "guidance": guidance, "precision": precision, "prompt_seed": prompts.seed, "images": len(table),
                     "one_object_recall": round(m["one_object_recall"], 3),
                     "two_object_both_recall": round(m["two_object_both_recall"], 3),
                     "img_per_s": round(len(table) / seconds, 2)})
        print(rows[-1], flush=True)
    out = pd.DataFrame(rows)
    out["speedup"] = (out["img_per_s"] / out["img_per_s"].iloc[0]).round(2)
    print(out.to_string(index=False))
    result = {"world": world.name, "device": params.world.device, "settings": out.to_dict(orient="records")}
    columns = list(out.columns)
    text = "\n".join([f"The `{world.name}` world's diffusion model; the world's oracle scores every setting's images "
                      f"(prompt seed {prompts.seed}).", "",
                      "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                     + ["| " + " | ".join(str(v) for v in row) + " |" for row in out.itertuples(index=False)])
    write_results("sampling_steps", "Fidelity and speed against DDIM steps, guidance and precision", result, text)
    return result


if __name__ == "__main__":
    main()
