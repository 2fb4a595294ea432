"""Sample pictures with no imaging dependency: a hand-written PNG encoder, image grids and 2-D
scatter plots rasterized with numpy."""

import struct
import zlib
from pathlib import Path

import numpy as np
from torch import Tensor

from fastgan.files import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFERENCE_RGB = (200, 200, 200)  # light grey: the real data, drawn first, underneath
POINTS_RGB = (160, 0, 0)  # dark red: the generated samples
MODES_RGB = (0, 0, 255)  # blue: the mixture's modes, drawn last, on top
DOT = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]  # (row, col) offsets
CROSS = [(d, 0) for d in range(-4, 5)] + [(0, d) for d in range(-4, 5)]


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write (H, W) grayscale or (H, W, 3) RGB uint8 pixels as an 8-bit PNG. The file appears
    whole or not at all (files.atomic_write), so a reader never sees half a picture."""
    if pixels.dtype != np.uint8 or not (
            pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8 pixels, got {pixels.dtype} "
                         f"{pixels.shape}")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2  # 0: grayscale, 2: RGB
    # Each row starts with its filter type byte, 0 (none).
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    data = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6))
    data += _chunk(b"IEND", b"")

    with atomic_write(path) as file:
        file.write(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, type, body, and the CRC32 of type + body."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def image_grid(images: Tensor, rows: int, pad: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] (C = 1 or 3) into `rows` rows of N // rows, with `pad`
    black pixels between tiles. Returns uint8 (H', W') for C = 1, (H', W', 3) for C = 3."""
    n, c, h, w = images.shape
    if c not in (1, 3) or rows < 1 or n % rows:
        raise ValueError(f"expected N = rows * cols images with 1 or 3 channels, got "
                         f"{tuple(images.shape)} for rows={rows}")
    cols = n // rows
    tiles = (images.detach().float().clamp(0, 1) * 255).round().to("cpu").numpy()
    tiles = tiles.astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, C)
    grid = np.zeros((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), np.uint8)
    for i, tile in enumerate(tiles):
        top, left = (i // cols) * (h + pad), (i % cols) * (w + pad)
        grid[top:top + h, left:left + w] = tile
    return grid[:, :, 0] if c == 1 else grid


def scatter_plot(points: Tensor, reference: Tensor | None = None, size: int = 512,
                 modes: Tensor | None = None) -> np.ndarray:
    """Rasterize 2-D points into a (size, size, 3) uint8 image on white: `reference` (the real
    data) light grey, `points` (generated) dark red as 3x3 dots, `modes` as blue crosses. The
    view is the bounding box of everything plus a 10% margin, with equal scale on both axes."""
    layers = [(t.detach().to("cpu").double().numpy().reshape(-1, 2), rgb, marker)
              for t, rgb, marker in ((reference, REFERENCE_RGB, DOT), (points, POINTS_RGB, DOT),
                                     (modes, MODES_RGB, CROSS)) if t is not None]
    everything = np.concatenate([xy for xy, _, _ in layers])
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    span = max(float((hi - lo).max()), 1e-12) * 1.2  # the wider axis, 10% margin each side
    corner = (lo + hi) / 2 - span / 2
    image = np.full((size, size, 3), 255, np.uint8)
    for xy, rgb, marker in layers:
        pixel = np.rint((xy - corner) / span * (size - 1)).astype(np.int64)
        row, col = size - 1 - pixel[:, 1], pixel[:, 0]  # y grows upwards
        for dr, dc in marker:
            image[np.clip(row + dr, 0, size - 1), np.clip(col + dc, 0, size - 1)] = rgb
    return image
