"""Record the UNet's block outputs at one denoising step, and recompute them from a stored latent.

    with FeatureCapture(pipe.unet, capture_call=steps - t) as cap:
        images = pipe(prompts, num_inference_steps=steps, ...).images
    cap.features   # 25 maps for SD v1, each (B, 2C, h, w): [uncond || cond] per sample
    cap.latents    # (B, 4, h, w), the UNet's input at that step: all that must be stored
    cap.timestep   # the DDPM timestep of that step

Forward hooks (reversible: removed on exit, even on error) sit on the modules whose outputs are
the LDM blocks listed by `features.feature_specs`. Classifier-free guidance runs the UNet on
[uncond (B), cond (B)]; each map is folded to (B, 2C, h, w) per sample — the official code's
reshape is only right for batch size 1.

`replay_features(pipe, latents, timestep, prompts)` runs one UNet call on the stored latent and
returns the same maps: storing a 4x64x64 latent instead of ~60 MB of features per SD image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from groundiff.core.schema import check_capture_t
from groundiff.diffusion.features import FeatureSpec, feature_specs


def capture_modules(unet: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the LDM blocks, in `feature_specs` order."""
    modules: list[nn.Module] = [unet.conv_in]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            modules.append(attentions[j] if attentions is not None and len(attentions) else resnet)
        if getattr(block, "downsamplers", None):
            modules.append(block.downsamplers[0])
    modules.append(unet.mid_block)
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        units = [attentions[j] if attentions is not None and len(attentions) else r for j, r in enumerate(block.resnets)]
        if getattr(block, "upsamplers", None):
            units[-1] = block.upsamplers[0]  # the upsampler is folded into the level's last unit
        modules.extend(units)
    return modules


def _as_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample  # Transformer2DModelOutput


def fold_guidance(x: torch.Tensor) -> torch.Tensor:
    """(2B, C, h, w) = [uncond; cond] -> (B, 2C, h, w) = [uncond || cond] for every sample."""
    if x.shape[0] % 2:
        raise ValueError(
            f"expected a classifier-free-guidance batch [uncond; cond] of even size, got {x.shape[0]}; "
            "capture features with guidance_scale > 1"
        )
    uncond, cond = x.chunk(2, dim=0)
    return torch.cat([uncond, cond], dim=1)


class FeatureCapture:
    """Context manager recording every LDM block output at UNet call number `capture_call`.

    capture_call: 0-based index of the UNet call (= denoising step) to record; with N DDIM steps,
    the paper's "t" (steps counted from the end, 1 = final step) is call N - t.
    record_features: False records only the capture-step latent and timestep (all that
    synthesis stores), at no memory cost.
    """

    def __init__(self, unet: nn.Module, capture_call: int, record_features: bool = True) -> None:
        if capture_call < 0:
            raise ValueError(f"capture_call must be >= 0, got {capture_call}")
        self.unet = unet
        self.capture_call = capture_call
        self.record_features = record_features  # False: only the latent and timestep (synthesis)
        self.specs: list[FeatureSpec] = feature_specs(unet.config)
        self.modules = capture_modules(unet)
        if len(self.modules) != len(self.specs):
            raise RuntimeError(
                f"found {len(self.modules)} capture points in the UNet but its config implies "
                f"{len(self.specs)}; is this a UNet2DConditionModel with standard blocks?"
            )
        self.features: list[torch.Tensor] = []
        self.latents: torch.Tensor | None = None
        self.timestep: int | None = None
        self._calls = 0
        self._handles: list = []

    def __enter__(self) -> "FeatureCapture":
        self._calls, self.features, self.latents, self.timestep = 0, [], None, None
        self._handles.append(self.unet.register_forward_pre_hook(self._pre_unet, with_kwargs=True))
        self._handles.append(self.unet.register_forward_hook(self._post_unet))
        if self.record_features:
            for module in self.modules:
                self._handles.append(module.register_forward_hook(self._record))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def recording(self) -> bool:
        return self._calls == self.capture_call

    def _pre_unet(self, module, args, kwargs):
        if self.recording:
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            self.latents = sample.chunk(2, dim=0)[1].detach().clone()  # the cond half; both are equal
            self.timestep = int(torch.as_tensor(timestep).flatten()[0])
        return None

    def _post_unet(self, module, args, output):
        self._calls += 1

    def _record(self, module, args, output):
        if self.recording:
            self.features.append(fold_guidance(_as_tensor(output).detach()))

    def result(self) -> list[torch.Tensor]:
        """The captured maps; a clear error if the capture step was never reached."""
        if len(self.features) != len(self.specs):
            raise RuntimeError(
                f"no features captured at UNet call {self.capture_call} ({self._calls} calls seen). "
                "Did generation run inside `with FeatureCapture(...)`, with at least "
                f"{self.capture_call + 1} denoising steps?"
            )
        return self.features


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """[uncond; cond] text embeddings exactly as the pipeline builds them for guidance."""
    cond, uncond = pipe.encode_prompt(
        list(prompts), device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt=[""] * len(prompts),
    )
    return torch.cat([uncond, cond])


@torch.no_grad()
def replay_features(pipe, latents: torch.Tensor, timestep: int | torch.Tensor,
                    prompts: Sequence[str]) -> list[torch.Tensor]:
    """Recompute the captured maps from stored capture-step latents with one UNet call.

    latents: (B, C, h, w) as recorded by FeatureCapture; prompts: the B prompts they were made with.
    """
    if latents.ndim != 4 or latents.shape[1:] != (pipe.unet.config.in_channels, pipe.unet.config.sample_size,
                                                  pipe.unet.config.sample_size):
        raise ValueError(
            f"latents of shape {tuple(latents.shape)} do not fit this UNet, which takes "
            f"(B, {pipe.unet.config.in_channels}, {pipe.unet.config.sample_size}, {pipe.unet.config.sample_size}); "
            "were they stored by another world's pipeline?"
        )
    if latents.shape[0] != len(prompts):
        raise ValueError(f"got {latents.shape[0]} latents but {len(prompts)} prompts")
    latents = latents.to(pipe.device, pipe.unet.dtype)
    hidden = encode_prompts(pipe, prompts)
    # `latents` are the UNet's input as recorded (already through scheduler.scale_model_input).
    with FeatureCapture(pipe.unet, capture_call=0) as cap:
        pipe.unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=hidden)
    return cap.result()


def capture_call_for(steps: int, t: int) -> int:
    """The UNet call index of the paper's capture step t (1 = the final DDIM step)."""
    return check_capture_t(steps, t)
