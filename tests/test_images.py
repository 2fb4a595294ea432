"""The PNG encoder (checked by decoding with zlib), image grids and scatter plots."""

import struct
import zlib

import numpy as np
import pytest
import torch

from fastgan.images import (
    MODES_RGB,
    POINTS_RGB,
    REFERENCE_RGB,
    image_grid,
    scatter_plot,
    write_png,
)


def read_png(path) -> np.ndarray:
    """A minimal decoder for the 8-bit, non-interlaced, filter-0 PNGs that write_png makes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1])
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[color_type]
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()  # filter type "none" on every row
    pixels = rows[:, 1:].reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3), (1, 1)])
def test_png_round_trip(tmp_path, shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "out.png"
    write_png(path, pixels)
    decoded = read_png(path)
    assert decoded.shape == pixels.shape
    assert np.array_equal(decoded, pixels)


def test_png_overwrites_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.png"
    write_png(path, np.zeros((3, 3), np.uint8))
    write_png(path, np.full((2, 4, 3), 9, np.uint8))
    assert np.array_equal(read_png(path), np.full((2, 4, 3), 9, np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("pixels", [np.zeros((3, 3), np.float32), np.zeros((3, 3, 4), np.uint8)])
def test_png_rejects_bad_pixels(tmp_path, pixels):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "out.png", pixels)


def test_image_grid_layout_gray():
    rows, cols, h, w, pad = 2, 3, 4, 5, 2
    levels = torch.arange(1, rows * cols + 1) * 40
    images = (levels / 255).view(-1, 1, 1, 1).expand(-1, 1, h, w)
    grid = image_grid(images, rows, pad)
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad)
    tiles = np.zeros(grid.shape, bool)
    for i, level in enumerate(levels.tolist()):
        top, left = (i // cols) * (h + pad), (i % cols) * (w + pad)
        assert (grid[top:top + h, left:left + w] == level).all(), i
        tiles[top:top + h, left:left + w] = True
    assert (grid[~tiles] == 0).all()  # the padding is black


def test_image_grid_rgb_channels_and_clamping():
    images = torch.zeros(2, 3, 2, 2)
    images[0, 0] = 1.5  # red, clamped to 1
    images[1, 2] = 0.5  # half blue
    images[1, 1] = -1.0  # clamped to 0
    grid = image_grid(images, rows=1, pad=1)
    assert grid.shape == (2, 5, 3)
    assert (grid[:, :2] == [255, 0, 0]).all()
    assert (grid[:, 2] == 0).all()
    assert (grid[:, 3:] == [0, 0, 128]).all()


def test_image_grid_rejects_ragged_rows():
    with pytest.raises(ValueError):
        image_grid(torch.zeros(5, 1, 2, 2), rows=2)


def test_scatter_plot_places_points():
    size = 101
    points = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    reference = torch.tensor([[2.0, 0.0]])
    modes = torch.tensor([[0.0, 1.0]])
    image = scatter_plot(points, reference, size=size, modes=modes)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    # x spans [0, 2], the wider axis: with the 10% margin the view is 2.4 wide, centered on (1, 0.5)
    # on both axes (equal scale), so pixel = (v - center + 1.2) / 2.4 * (size - 1), y upwards.
    def pixel(x, y):
        to = lambda v, c: round((v - c + 1.2) / 2.4 * (size - 1))
        return size - 1 - to(y, 0.5), to(x, 1.0)

    for (x, y), rgb in [((0, 0), POINTS_RGB), ((2, 1), POINTS_RGB), ((2, 0), REFERENCE_RGB)]:
        row, col = pixel(x, y)
        assert (image[row - 1:row + 2, col - 1:col + 2] == rgb).all(), (x, y)  # a 3x3 dot
    row, col = pixel(0, 1)
    assert (image[row, col - 4:col + 5] == MODES_RGB).all()  # a cross
    assert (image[row - 4:row + 5, col] == MODES_RGB).all()
    assert (image[row + 1, col + 1] == 255).all()
    assert (image[0] == 255).all() and (image[:, -1] == 255).all()  # white background


def test_scatter_plot_draws_samples_over_reference():
    image = scatter_plot(torch.zeros(1, 2), reference=torch.zeros(3, 2), size=9)
    assert (image[3:6, 3:6] == POINTS_RGB).all()
    assert (image == 255).all(axis=2).sum() == 81 - 9
