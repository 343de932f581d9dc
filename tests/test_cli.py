"""`groundiff generate`: image, one mask per class and an overlay; clear errors for bad classes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groundiff.cli import main


@pytest.fixture
def world(grounded_world):
    return grounded_world


def test_generate_writes_image_masks_and_overlay(world, capsys):
    main(["generate", "a photograph of a star and a ring", "--classes", "star", "ring",
          "--seed", "0", "--out", "out", "--steps", "3", "--scale", "2"])
    out = world / "out"
    for name in ("image.png", "mask_star.png", "mask_ring.png", "overlay.png"):
        with Image.open(out / name) as img:
            assert img.size == (64, 64)
    mask = np.array(Image.open(out / "mask_star.png"))
    assert set(np.unique(mask)) <= {0, 255}
    printed = capsys.readouterr().out
    assert "ring (unseen in grounding training)" in printed and "star (seen" in printed
    first = (out / "image.png").read_bytes()
    main(["generate", "a photograph of a star and a ring", "--classes", "star", "ring",
          "--seed", "0", "--out", "out", "--steps", "3", "--scale", "2"])
    assert (out / "image.png").read_bytes() == first  # seeded


def test_unknown_class_is_one_clear_error(world):
    script = Path(sys.executable).parent / "groundiff"  # the installed console script
    proc = subprocess.run([str(script), "generate", "a photograph of a dragon", "--classes", "dragon"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown class 'dragon' (--classes); the shapes world knows: circle" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_grounding_module_says_how_to_make_it(project, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a photograph of a star", "--classes", "star"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no trained grounding module in models/grounding" in err
    assert err.rstrip().endswith("run `dvc repro train_grounding`")
