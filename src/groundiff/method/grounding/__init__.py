"""The grounding module: UNet features + class embeddings -> per-class mask logits."""

from groundiff.method.grounding.model import GroundingConfig, GroundingModule, MixConv

__all__ = ["GroundingConfig", "GroundingModule", "MixConv"]
