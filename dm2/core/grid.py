"""Image grids for eyeballing results: one row per prompt, model or loop."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

SEPARATOR = 1  # pixels between images, before upscaling
# Light gray: distinct from every world background (black, white, gray 128).
SEPARATOR_COLOUR = (200, 200, 200)
LABEL_PAD = 6  # pixels around a row label, after upscaling


def image_grid(rows: list[torch.Tensor], labels: list[str] | None = None, scale: int = 4) -> Image.Image:
    """Rows of N x 3 x H x W images in [0, 1], stacked vertically, images side by side,
    upscaled by `scale` with NEAREST so 32px images stay crisp; optional row labels on
    the left, drawn after upscaling so the text is not pixelated."""
    if not rows:
        raise ValueError("image_grid: no rows")
    if scale < 1:
        raise ValueError(f"image_grid: scale must be >= 1, got {scale}")
    shape = tuple(rows[0].shape)
    for i, row in enumerate(rows):
        if row.ndim != 4 or row.shape[1] != 3:
            raise ValueError(f"image_grid: row {i} must be N x 3 x H x W, got {tuple(row.shape)}")
        if tuple(row.shape) != shape:
            raise ValueError(f"image_grid: row {i} has shape {tuple(row.shape)}, row 0 has {shape}")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"image_grid: {len(labels)} labels for {len(rows)} rows")
    cols, _, h, w = shape
    if cols == 0:
        raise ValueError("image_grid: rows hold no images")

    grid = Image.new("RGB", (cols * w + (cols - 1) * SEPARATOR, len(rows) * h + (len(rows) - 1) * SEPARATOR), SEPARATOR_COLOUR)
    for r, row in enumerate(rows):
        pixels = (row.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for c, arr in enumerate(pixels):
            grid.paste(Image.fromarray(arr), (c * (w + SEPARATOR), r * (h + SEPARATOR)))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    if labels is None:
        return grid

    font = ImageFont.load_default()
    label_width = max(int(font.getlength(label)) for label in labels) + 2 * LABEL_PAD
    canvas = Image.new("RGB", (label_width + grid.width, grid.height), (255, 255, 255))
    canvas.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(labels):
        middle = (r * (h + SEPARATOR) + h / 2) * scale
        draw.text((LABEL_PAD, middle), label, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas
