"""qgfd_hf.tasks._grids: the labelled image grid is the class strip with one-frame clips."""

import numpy as np
import pytest
from PIL import Image

from qgfd_hf.tasks._grids import save_class_strip, save_labelled_grid


def test_labelled_grid_has_a_row_per_class_and_draws_each_image(tmp_path):
    images = np.zeros((6, 1, 4, 4), dtype=np.float32)
    images[3] = 1.0  # the only white image: class 7's first
    labels = [2, 2, 7, 7, 9, 2]
    path = save_labelled_grid(images, labels, str(tmp_path / "g.png"), per_class=3, cell=8, pad=1)
    clips = save_class_strip(images[:, None], labels, str(tmp_path / "c.png"), per_class=3, cell=8, pad=1)
    with Image.open(path) as im, Image.open(clips) as ref:
        assert im.size == ref.size and im.size[1] == 3 * (8 + 1) + 1  # classes 2, 7, 9
        assert np.array_equal(np.asarray(im), np.asarray(ref))
        pixels = np.asarray(im.convert("L"))
    row_7 = pixels[1 + 9 : 1 + 9 + 8]
    assert (row_7 == 255).sum() >= 64  # the white 8x8 tile of class 7
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        save_labelled_grid(np.zeros((2, 4, 4)), [0, 1], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"one label each, got \[3, 1, 4, 4\] and \[2\]"):  # an image's error, not a clip's
        save_labelled_grid(np.zeros((3, 1, 4, 4)), [0, 1], str(tmp_path / "y.png"))
