"""The world's models, loaded once, and one call per request: what `groundiff generate` and
`groundiff demo` share, so that the command and the app return the same bytes for the same request.

    grounder = Grounder(params, world)                 # the pipeline, and the module when trained
    result = grounder("a photograph of a star and a ring", ["star", "ring"], seed=0)
    save_grounded(result, Path("out"), scale=8)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from groundiff.core import paths

if TYPE_CHECKING:
    from groundiff.core.params import Params
    from groundiff.method.generate import Grounded
    from groundiff.worlds.active import World


@dataclass(frozen=True)
class Defaults:
    """A request's settings when it names none: the ones the pipeline's synthesis used."""

    steps: int  # DDIM steps (synthesize.sampling.steps)
    guidance: float  # classifier-free guidance (synthesize.sampling.guidance_scale)
    precision: str  # UNet autocast of the denoising calls (synthesize.sampling.precision)
    capture_t: int  # the step whose features the module reads (synthesize.capture_t)
    threshold: float  # ours: pixel in the mask when sigmoid(logit) > this
    daam_threshold: float  # DAAM: pixel in the mask when its normalised heat map > this (eval_grounding's)


class Grounder:
    """A world's diffusion pipeline and trained grounding module, with params.yaml's defaults.

    require_module=False (the demo) lets the pipeline load without a trained module; each call
    then retries the module's folder, so a module trained after start is picked up, and until
    then a call raises the loader's FileNotFoundError (the app adds the `dvc repro` that makes it).
    """

    def __init__(self, params: Params, world: World, grounding: str | Path = paths.GROUNDING,
                 precision: str | None = None, require_module: bool = True) -> None:
        from groundiff.diffusion.pipeline import load_pipeline

        synth = params.section("synthesize")
        self.split = world.split
        self.world = world
        self.device = params.world.device
        self.defaults = Defaults(steps=synth.sampling.steps, guidance=synth.sampling.guidance_scale,
                                 precision=precision or synth.sampling.precision, capture_t=synth.capture_t,
                                 threshold=0.5, daam_threshold=params.section("eval_grounding").daam_threshold)
        self.grounding = Path(grounding)
        self.module = None
        if require_module:  # the module first: its absence is the likelier error, and fails fast
            self.module = self._load_module(None)
        self.pipe = load_pipeline(world.pipeline, self.device)
        if self.module is not None:
            self._check(self.module)
        else:
            try:
                self.load_module()
            except FileNotFoundError:
                pass  # reported by the first request, and by the app's banner

    def _load_module(self, pipe):
        from groundiff.method.grounding import GroundingModule

        module = GroundingModule.from_pretrained(self.grounding, device=self.device)
        if pipe is not None:
            self._check(module)
        return module

    def _check(self, module) -> None:
        from groundiff.method.synth_dataset import check_models

        check_models(self.pipe, module)

    def load_module(self):
        """The trained module, loaded on first need (FileNotFoundError while there is none)."""
        if self.module is None:
            self.module = self._load_module(self.pipe)
        return self.module

    def __call__(self, prompt: str, classes: list[str], seed: int, steps: int | None = None,
                 guidance: float | None = None, threshold: float | None = None, daam: bool = False,
                 on_step: Callable[[int, int], None] | None = None) -> Grounded:
        """Generate `prompt` from `seed` and ground `classes` (and DAAM's maps when `daam`)."""
        from groundiff.diffusion.pipeline import SamplingConfig
        from groundiff.method.generate import generate_grounded

        d = self.defaults
        sampling = SamplingConfig(steps=d.steps if steps is None else steps,
                                  guidance_scale=d.guidance if guidance is None else guidance,
                                  batch_size=1, precision=d.precision)
        module = self.load_module()
        return generate_grounded(self.pipe, module, prompt, classes, seed, sampling, capture_t=d.capture_t,
                                 threshold=d.threshold if threshold is None else threshold,
                                 daam_threshold=d.daam_threshold if daam else None, on_step=on_step)
