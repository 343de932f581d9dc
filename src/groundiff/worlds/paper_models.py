"""The voc / coco worlds' models come from outside: the world_diffusion and world_detector stages
check that they are complete (the oracle: that it loads) and record where they came from.

    metrics = record_paper_pipeline(world, paths.world_diffusion(world.name))   # writes source.json
    metrics = record_paper_oracle(world, paths.world_detector(world.name))
"""

from __future__ import annotations

import json
from pathlib import Path

from groundiff.core.errors import WorldError
from groundiff.core.io import atomic_dir, write_json
from groundiff.worlds.active import World
from groundiff.worlds.preflight import (describe_diffusion, describe_oracle, diffusion_folder,
                                       missing_pipeline_parts, require_paper_world)


def record_paper_pipeline(active: World, out: Path) -> dict:
    """Check the external pipeline is complete; write `out/source.json`; return the stage's metrics."""
    world, settings = active.name, active.paper
    require_paper_world(world, settings)
    sources = describe_diffusion(settings.diffusion)
    folder = diffusion_folder(settings.diffusion)
    missing = missing_pipeline_parts(folder)  # a hub snapshot is checked here (preflight: local folders)
    if missing:
        raise FileNotFoundError(f"{settings.diffusion}: the diffusers pipeline lacks {', '.join(missing)}; "
                                "a Stable Diffusion v1.x folder saved with save_pretrained has them all")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    sources["unet"] = {k: unet.get(k) for k in ("sample_size", "block_out_channels", "cross_attention_dim")}
    with atomic_dir(out) as tmp:
        write_json(tmp / "source.json", sources)
    return {"world": world, "source": settings.diffusion, **sources["unet"]}


def record_paper_oracle(active: World, out: Path) -> dict:
    """Load the external oracle once (it must load and detect every class of the world); write
    `out/source.json`; return the stage's metrics."""
    world, settings = active.name, active.paper
    require_paper_world(world, settings)
    oracle = active.load_oracle()
    record = {**describe_oracle(settings.oracle), "classes": list(oracle.classes)}
    missing = sorted(set(active.classes) - set(oracle.classes))
    if missing:
        raise WorldError(f"the {world} oracle cannot detect {missing}; it needs every class of the world")
    with atomic_dir(out) as tmp:
        write_json(tmp / "source.json", record)
    return {"world": world, "weights": record["weights"], "world_classes_detected": len(oracle.classes)}
