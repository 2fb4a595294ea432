"""What a run shows a person: curves.png, reconstructions.png and interpolations.png, the
`fastgan sample --reconstruct / --interpolate` and `fastgan report` commands, and the
--tensorboard event files."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import fastgan as fg
from fastgan import curves, pictures
from fastgan.cli import main
from fastgan.data import load_dataset
from fastgan.images import image_grid

TINY = ["--steps", "24", "--batch-size", "16", "--log-every", "4", "--eval-every", "12",
        "--checkpoint-every", "8"]
TILE, PAD = 28, 2  # MNIST's image side, and image_grid's padding


def png(path):
    """A PNG file's pixels, decoded by matplotlib (floats in [0, 1])."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def grid_size(rows, cols):
    return rows * TILE + (rows - 1) * PAD, cols * TILE + (cols - 1) * PAD


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """One tiny latent-cgan run on MNIST, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("pictures") / "run"
    assert main(["train", "--out", str(out), *TINY, "--ae-steps", "12"]) == 0
    return out


def test_a_tiny_run_draws_its_curves_and_pictures(mnist_run):
    pixels = png(mnist_run / "curves.png")
    width, height = (round(inches * curves.DPI) for inches in curves.SIZE_INCHES)
    assert pixels.shape[:2] == (height, width)
    colours = np.unique((pixels[..., :3] * 255).round().reshape(-1, 3), axis=0)
    assert len(colours) > 20 and pixels[..., :3].std() > 0.05  # lines and text, not blank

    assert png(mnist_run / "reconstructions.png").shape == grid_size(2, 10)
    autoencoder_block, generator_block = grid_size(10, pictures.RUN_STEPS), grid_size(10, 10)
    assert png(mnist_run / "interpolations.png").shape == (
        autoencoder_block[0] + pictures.GAP + generator_block[0], autoencoder_block[1])


def test_interpolations_start_and_end_at_the_decoded_endpoints(mnist_run):
    run = fg.load(mnist_run)
    data = load_dataset("mnist")
    pairs, steps = [(3, 8), (3, 8), (1, 7)], 6
    start, end = pictures.held_out_endpoints(data, pairs, len(pairs))
    walks = pictures.latent_walk(run, start, end, steps).reshape(len(pairs), steps, -1)
    autoencoder = run.autoencoder
    with torch.no_grad():
        ends = [autoencoder.decoder(autoencoder.encoder(x)) for x in (start, end)]
    torch.testing.assert_close(walks[:, 0], ends[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(walks[:, -1], ends[1], atol=1e-5, rtol=0)
    assert not torch.equal(walks[0, 0], walks[1, 0])  # each repeat its own held-out pair

    # In the picture: the first and last columns are the decoded endpoints' tiles.
    grid = image_grid(data.to_data_units(walks.flatten(0, 1)), rows=len(pairs)).astype(int)
    column = lambda i: grid[:, i * (TILE + PAD):i * (TILE + PAD) + TILE]
    for i, decoded in ((0, ends[0]), (steps - 1, ends[1])):
        alone = image_grid(data.to_data_units(decoded), rows=len(pairs)).astype(int)
        assert np.abs(column(i) - alone).max() <= 1  # at most a rounding step

    # The generator's block: its ends are G's samples of classes A and B from the same noise.
    generator = run.generator
    walked = pictures.label_walk(run, pairs, steps, torch.Generator().manual_seed(0))
    walked = walked.reshape(len(pairs), steps, -1)
    noise = torch.randn(len(pairs), run.config.noise_dim,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, side in ((0, 0), (-1, 1)):
            labels = torch.tensor([pair[side] for pair in pairs])
            expected = autoencoder.decode_standardized(generator(noise, labels))
            torch.testing.assert_close(walked[:, i], expected, atol=1e-5, rtol=0)


def test_sample_draws_reconstructions_and_interpolations(mnist_run, tmp_path, capsys):
    run = str(mnist_run)
    out = tmp_path / "r.png"
    assert main(["sample", "--run", run, "--reconstruct", "12", "--out", str(out)]) == 0
    assert png(out).shape == grid_size(2, 12)
    out = tmp_path / "i.png"
    assert main(["sample", "--run", run, "--interpolate", "3", "8", "--steps", "5",
                 "--rows", "3", "--out", str(out)]) == 0
    block = grid_size(3, 5)
    assert png(out).shape == (2 * block[0] + pictures.GAP, block[1])
    capsys.readouterr()
    for args, message in ((["--interpolate", "3", "10"], "expected classes in [0, 10)"),
                          (["--reconstruct", "3", "--interpolate", "1", "2"], "not allowed"),
                          (["--reconstruct", "3", "--out", str(tmp_path / "r.npy")],
                           "expected a file name ending in .png"),
                          (["--interpolate", "1", "2", "--steps", "1"], "an integer >= 2")):
        args = ["sample", "--run", run, *args]
        assert main(args if "--out" in args else [*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastgan: error: ") and err.count("\n") == 1, err
        assert message in err, err


def test_report_draws_again_and_summarizes(mnist_run, capsys):
    for name in ("curves.png", "reconstructions.png", "interpolations.png"):
        (mnist_run / name).unlink()
    assert main(["report", "--run", str(mnist_run)]) == 0
    out = capsys.readouterr().out
    assert "latent-cgan on mnist, step 24 of 24" in out
    assert "cond_accuracy" in out and "wrote: curves.png, reconstructions.png, " \
                                      "interpolations.png" in out
    for name in ("curves.png", "reconstructions.png", "interpolations.png"):
        assert png(mnist_run / name).size > 0


def test_report_without_a_log_is_bad_input(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_without_matplotlib_a_run_trains_and_says_once_it_skipped_the_plot(
        tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, "--mode", "ae"]) == 0
    assert capsys.readouterr().err.count("skipped curves.png") == 1
    assert not (tmp_path / "run" / "curves.png").exists()
    assert (tmp_path / "run" / "reconstructions.png").exists()  # needs no matplotlib


def test_curves_subsample_long_logs():
    records = [{"step": i, "loss_ae": 1 / i} for i in range(1, 100_001)]
    kept = curves.subsample(records)
    assert len(kept) <= curves.MAX_POINTS and kept[0] == records[0] and kept[-1] == records[-1]


def test_a_missing_tensorboard_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tensorboard: needs the tensorboard package" in err
    assert not (tmp_path / "run").exists()


def test_tensorboard_events_read_back_and_resume_appends(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "--ae-steps", "12", "--tensorboard"]
    assert main([*args, "--steps", "16"]) == 0
    assert main([*args, "--resume"]) == 0
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_ae", "train/loss_d", "train/loss_g", "train/samples_per_s",
            "train/time", "eval/fd", "eval/cond_accuracy", "eval/recon_mse"} <= set(
                tags["scalars"])
    assert {"samples", "curves"} <= set(tags["images"])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss_d"] for r in logged if "loss_d" in r}
    scalars = {e.step: e.value for e in events.Scalars("train/loss_d")}
    assert scalars.keys() == losses.keys()  # both runs' steps, the repeated ones once
    assert all(abs(scalars[s] - v) < 1e-6 * max(1, abs(v)) for s, v in losses.items())
