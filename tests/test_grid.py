"""Grid layout: size from rows, columns and scale; a known image lands where expected."""

from __future__ import annotations

import pytest
import torch

from dm2.core.grid import SEPARATOR, SEPARATOR_COLOUR, image_grid

H, W = 6, 5


def rows(n_rows: int, n_cols: int) -> list[torch.Tensor]:
    return [torch.zeros(n_cols, 3, H, W) for _ in range(n_rows)]


def grid_size(n_rows: int, n_cols: int, scale: int) -> tuple[int, int]:
    return ((n_cols * W + (n_cols - 1) * SEPARATOR) * scale, (n_rows * H + (n_rows - 1) * SEPARATOR) * scale)


@pytest.mark.parametrize("n_rows, n_cols, scale", [(1, 1, 1), (2, 3, 4), (3, 2, 2)])
def test_size(n_rows, n_cols, scale):
    assert image_grid(rows(n_rows, n_cols), scale=scale).size == grid_size(n_rows, n_cols, scale)


def test_known_pixel_and_separator_positions():
    scale = 3
    grid_rows = rows(2, 3)
    grid_rows[1][2, :, 4, 1] = torch.tensor([1.0, 0.5, 0.0])  # row 1, column 2, pixel (y=4, x=1)
    img = image_grid(grid_rows, scale=scale)
    x0, y0 = (2 * (W + SEPARATOR) + 1) * scale, (1 * (H + SEPARATOR) + 4) * scale
    for dx in range(scale):  # NEAREST: the pixel becomes a scale x scale block
        for dy in range(scale):
            assert img.getpixel((x0 + dx, y0 + dy)) == (255, 128, 0)
    assert img.getpixel((x0 - scale, y0)) == (0, 0, 0)
    assert img.getpixel((W * scale, 0)) == SEPARATOR_COLOUR  # between columns 0 and 1
    assert img.getpixel((0, H * scale)) == SEPARATOR_COLOUR  # between rows 0 and 1


def test_labels_add_a_left_margin_and_keep_images_in_place():
    grid_rows = rows(2, 2)
    grid_rows[0][0] = 1.0
    plain = image_grid(grid_rows, scale=2)
    labelled = image_grid(grid_rows, labels=["original", "erased model"], scale=2)
    margin = labelled.width - plain.width
    assert margin > 0 and labelled.height == plain.height
    assert labelled.crop((margin, 0, labelled.width, labelled.height)).tobytes() == plain.tobytes()
    margin_pixels = labelled.crop((0, 0, margin, labelled.height)).getcolors()
    assert any(colour != (255, 255, 255) for _, colour in margin_pixels)  # text was drawn


def test_rejects_bad_rows():
    with pytest.raises(ValueError, match="row 1 has shape"):
        image_grid([torch.zeros(3, 3, H, W), torch.zeros(2, 3, H, W)])
    with pytest.raises(ValueError, match="2 labels for 1 rows"):
        image_grid(rows(1, 2), labels=["a", "b"])
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        image_grid([torch.zeros(2, 1, H, W)])
    with pytest.raises(ValueError, match="no rows"):
        image_grid([])
