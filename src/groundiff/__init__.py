"""groundiff: a reproducible implementation of Grounded Diffusion (Li et al., ICCV 2023).

"Open-vocabulary Object Segmentation with Diffusion Models": a small grounding module reads a
frozen text-to-image diffusion model's UNet features plus a class-name embedding and predicts
that object's mask, for classes never seen in its training too.
"""

__version__ = "0.1.0"
