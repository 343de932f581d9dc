"""What a world's models must reach before their results mean something (torch-free: the report reads it).

- the oracle detector: mask AP@0.5 on rendered val (`world_detector`);
- the diffusion model draws what it is told (`world_fidelity`): the prompted class found in one-object
  images, both classes in two-object images;
- it binds each class word to its object (`world_binding`, issue 26): distinct class-word states,
  DAAM's maps on the object, the class word's attention higher inside the object in most layers.
"""

DETECTOR_BAR = 0.9  # mask AP@0.5 on rendered val
FIDELITY_BARS = {"one_object_recall": 0.85, "two_object_both_recall": 0.60}
# What a world model replacing the shipped one must reach (issue 26: world v2 ships only above these).
FIDELITY_V2_BARS = {"one_object_recall": 0.95, "two_object_both_recall": 0.85}
BINDING_BARS = {
    "class_word_cosine_mean_at_most": 0.9,
    "daam_miou_at_least": 40.0,  # percent, on one-object images, against the oracle's masks
    "layers_inside_gt_outside": "most",  # more than half of the cross-attention layers
}
