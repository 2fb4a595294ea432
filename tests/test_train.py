"""The trainer end to end at small sizes: every mode, every kind of dataset, the files a run
writes, resume, the Python API and the train / sample / eval commands."""

import json

import numpy as np
import pytest
import torch
from helpers import fastgan

import fastgan as fg
from fastgan import checkpoint, devices
from fastgan.cli import main
from fastgan.config import TrainConfig
from fastgan.data import load_dataset
from fastgan.devices import SetupError, check_fits
from fastgan.step import GanData, Training
from fastgan.train import seconds_to

TINY = ["--steps", "24", "--batch-size", "16", "--log-every", "4", "--eval-every", "12",
        "--checkpoint-every", "8"]


def train(out, *args, expect=0):
    assert main(["train", "--out", str(out), *TINY, *args]) == expect
    return json.loads((out / "summary.json").read_text()) if expect == 0 else None


def write_arrays(tmp_path):
    rng = np.random.default_rng(0)
    paths = {"npy-images": tmp_path / "images.npy", "npz-vectors": tmp_path / "vectors.npz",
             "csv": tmp_path / "table.csv"}
    np.save(paths["npy-images"], rng.integers(0, 256, (64, 12, 12), dtype=np.uint8))
    np.savez(paths["npz-vectors"], x=rng.normal(size=(64, 5)), y=rng.integers(0, 3, 64))
    rows = [f"{a:.4f},{b:.4f},{c:.4f},{int(label)}"
            for (a, b, c), label in zip(rng.normal(size=(64, 3)), rng.integers(0, 2, 64),
                                        strict=True)]
    paths["csv"].write_text("a,b,c,label\n" + "\n".join(rows) + "\n")
    return paths


def write_idx_dir(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 4
    d = tmp_path / "idx"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(
        np.array([0x803, 40, 8, 8], ">i4").tobytes() + images.tobytes())
    (d / "train-labels-idx1-ubyte").write_bytes(
        np.array([0x801, 40], ">i4").tobytes() + labels.tobytes())
    return d


@pytest.mark.parametrize("mode", ["ae", "cgan", "latent-cgan"])
def test_each_mode_on_mnist_writes_a_complete_run(tmp_path, mode):
    out = tmp_path / "run"
    summary = train(out, "--mode", mode, "--ae-steps", "12")

    pictures = {"ae": {"reconstructions.png", "interpolations.png"},
                "cgan": {"interpolations.png"}}.get(mode, {"reconstructions.png",
                                                          "interpolations.png"})
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "summary.json",
                                              "checkpoints", "samples", "curves.png",
                                              *pictures}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-000012.png", "step-000024.png"]
    assert json.loads((out / "config.json").read_text())["mode"] == mode
    assert summary["world_size"] == 1 and summary["steps"] == 24
    assert summary["samples_per_s"] > 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [line["step"] for line in lines if "eval" not in line]
    assert logged == [4, 8, 12, 16, 20, 24]
    metrics = summary["metrics"]
    if mode != "cgan":
        assert 0 < metrics["recon_mse"] < 1 and 0 < metrics["pca_mse"] < 1
    if mode != "ae":
        assert 0 <= metrics["cond_accuracy"] <= 1 and metrics["fd"] > 0
        assert metrics["classifier_accuracy"] > 0.9  # the cached MNIST classifier
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert state["step"] == 24


def test_unconditional_and_the_toy_mixtures(tmp_path):
    summary = train(tmp_path / "grid", "--dataset", "grid", "--unconditional")
    assert summary["metrics"]["modes_total"] == 25
    assert 0 <= summary["metrics"]["modes_captured"] <= 25
    run = fg.load(tmp_path / "grid")  # self-conditioned on 50 k-means clusters by default
    assert run.clustered and run.num_classes == 50 and run.sample(7).shape == (7, 2)
    prior = run.generator.label_prior
    assert prior.shape == (50,) and abs(prior.sum().item() - 1) < 1e-6 and prior.min() > 0

    train(tmp_path / "plain", "--dataset", "grid", "--unconditional", "--clusters", "0")
    run = fg.load(tmp_path / "plain")
    assert run.generator.embed is None and run.sample(7).shape == (7, 2)

    summary = train(tmp_path / "ring", "--dataset", "ring")
    assert summary["metrics"]["modes_total"] == 8
    # 2-D data: the generator's label walks as a scatter plot; no autoencoder to picture
    assert (tmp_path / "ring" / "interpolations.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "ring" / "reconstructions.png").exists()
    assert fg.load(tmp_path / "ring").sample(5, labels=3).shape == (5, 2)


@pytest.mark.parametrize("kind", ["npy-images", "npz-vectors", "csv", "idx"])
def test_each_kind_of_dataset_trains(tmp_path, kind):
    source = write_idx_dir(tmp_path) if kind == "idx" else write_arrays(tmp_path)[kind]
    flag = "--data-dir" if kind == "idx" else "--dataset"
    summary = train(tmp_path / "run", flag, str(source), "--ae-steps", "12",
                    "--latent-dim", "4")
    run = fg.load(tmp_path / "run")
    shape = {"npy-images": (3, 1, 12, 12), "npz-vectors": (3, 5), "csv": (3, 3),
             "idx": (3, 1, 8, 8)}[kind]
    assert run.sample(3).shape == shape
    assert run.reconstruct(run.sample(3)).shape == shape
    picture = tmp_path / "samples.png"
    status = main(["sample", "--run", str(tmp_path / "run"), "--out", str(picture)])
    assert status == (2 if kind in ("npz-vectors", "csv") else 0)  # 5-D, 3-D: no picture
    assert "recon_mse" in summary["metrics"] and "score" in summary["metrics"]


def test_resume_continues_bit_exactly(tmp_path):
    args = ["--ae-steps", "10", "--augment", "0.25", "--checkpoint-every", "5"]
    train(tmp_path / "whole", *args)
    train(tmp_path / "split", *args, "--steps", "15")
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--steps", "24"]) == 0

    whole = checkpoint.load(tmp_path / "whole" / "checkpoints" / "last.pt")
    split = checkpoint.load(tmp_path / "split" / "checkpoints" / "last.pt")
    assert whole["step"] == split["step"] == 24
    for name, state in whole["models"].items():
        for key, value in state.items():
            assert torch.equal(value, split["models"][name][key]), (name, key)
    assert torch.equal(whole["rng"], split["rng"])
    def losses(run):
        lines = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text()
                 .splitlines()]
        return {line["step"]: (line["loss_d"], line["loss_g"]) if "loss_d" in line
                else line["loss_ae"] for line in lines if "eval" not in line}

    whole_losses, split_losses = losses("whole"), losses("split")
    assert set(whole_losses) <= set(split_losses)  # the split run also logged its step 15
    assert whole_losses == {step: split_losses[step] for step in whole_losses}


def log_lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_log_line_has_the_time_and_resume_continues_it(tmp_path):
    out = tmp_path / "run"
    train(out, "--mode", "ae", "--steps", "16")
    first = log_lines(out)
    times = [line["time"] for line in first]
    assert all(t > 0 for t in times) and times == sorted(times)
    saved = checkpoint.load(out / "checkpoints" / "last.pt")["time"]
    assert saved >= times[-1]

    assert main(["train", "--out", str(out), "--resume", "--steps", "24"]) == 0
    resumed = [line for line in log_lines(out) if line["step"] > 16]
    assert resumed and min(line["time"] for line in resumed) > saved
    assert checkpoint.load(out / "checkpoints" / "last.pt")["time"] > saved


def test_seconds_to_is_the_first_evaluation_reaching_each_accuracy():
    def evaluation(step, accuracy):
        return {"step": step, "phase": "gan", "eval": {"cond_accuracy": accuracy},
                "time": step / 10}

    records = [{"step": 1, "phase": "gan", "loss_d": 1.0, "time": 0.1},
               evaluation(10, 0.5), evaluation(20, 0.93), evaluation(30, 0.96),
               evaluation(40, 0.92), evaluation(50, 0.97)]
    assert seconds_to(records) == {"0.9": {"seconds": 2.0, "step": 20},
                                   "0.95": {"seconds": 3.0, "step": 30}, "0.98": None}
    assert seconds_to([{"step": 10, "phase": "ae", "eval": {"recon_mse": 0.1}}]) is None


def test_summary_has_seconds_to_on_labeled_images_only(tmp_path):
    summary = train(tmp_path / "mnist", "--ae-steps", "12")
    assert set(summary["seconds_to"]) == {"0.9", "0.95", "0.98"}
    for reached in summary["seconds_to"].values():  # 12 GAN steps reach none, or in time
        assert reached is None or (reached["seconds"] > 0 and reached["step"] > 12)
    assert "seconds_to" not in train(tmp_path / "ring", "--dataset", "ring")


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    train(tmp_path / "fresh", "--mode", "ae")
    (tmp_path / "empty").mkdir()
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume", *TINY,
                 "--mode", "ae"]) == 0
    a = checkpoint.load(tmp_path / "fresh" / "checkpoints" / "last.pt")["models"]
    b = checkpoint.load(tmp_path / "empty" / "checkpoints" / "last.pt")["models"]
    assert all(torch.equal(v, b["autoencoder"][k]) for k, v in a["autoencoder"].items())


def test_an_out_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    train(out, "--mode", "ae")
    before = (out / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()

    train(out, "--mode", "ae", expect=2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another run" in err and "--overwrite" in err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before

    train(out, "--mode", "ae", "--overwrite", "--seed", "1")
    assert (out / "checkpoints" / "last.pt").read_bytes() != before


def test_resume_refuses_changed_settings(tmp_path, capsys):
    train(tmp_path / "run", "--mode", "ae")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--latent-dim", "8"]) == 2
    assert "latent_dim: 32 -> 8" in capsys.readouterr().err


def test_config_file_is_overridden_by_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('mode = "ae"\nbatch-size = 8\nlatent_dim = 6\nae_hidden = [20]\n')
    train(tmp_path / "run", "--config", str(toml), "--latent-dim", "5")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["mode"], saved["latent_dim"], saved["ae_hidden"]) == ("ae", 5, [20])
    assert saved["batch_size"] == 16  # TINY's flag wins over the file's 8


def test_the_autoencoder_phase_defaults_to_an_eighth_of_the_steps(tmp_path):
    train(tmp_path / "run", "--steps", "64")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["steps"], saved["ae_steps"]) == (64, 8)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
    phases = {line["step"]: line["phase"] for line in lines if "eval" not in line}
    assert (phases[4], phases[8], phases[12]) == ("ae", "ae", "gan")  # 8 ends the AE phase


def test_latent_cgan_has_its_tuned_rates_and_the_other_modes_keep_theirs(tmp_path):
    # MODE_DEFAULTS: the rates tuned for latent-cgan; a flag or a dataset's mode still wins
    rates = {}
    for name, args in {"latent": (), "cgan": ("--mode", "cgan"), "ring": ("--dataset", "ring"),
                       "flag": ("--lr", "3e-4")}.items():
        train(tmp_path / name, *args, "--steps", "8")
        saved = json.loads((tmp_path / name / "config.json").read_text())
        rates[name] = (saved["lr"], saved["lr_ae"])
    assert rates == {"latent": (7e-4, 2e-3), "cgan": (2e-4, 1e-3), "ring": (2e-4, 1e-3),
                     "flag": (3e-4, 2e-3)}


def test_epochs_set_the_steps(tmp_path):
    summary = train(tmp_path / "run", "--mode", "ae", "--epochs", "0.1", "--batch-size", "100")
    assert summary["steps"] == 9  # ceil(0.1 * 9,000 training images / 100)


def test_bf16_precision_trains(tmp_path, monkeypatch):
    # As on a CPU with AMX: the run trains whatever this host has.
    monkeypatch.setattr(devices, "cpu_extensions",
                        lambda: dict.fromkeys(devices.CPU_EXTENSIONS, True))
    summary = train(tmp_path / "run", "--precision", "bf16", "--ae-steps", "12")
    assert np.isfinite(summary["metrics"]["fd"])
    assert fg.load(tmp_path / "run").generator.net[0].weight.dtype == torch.float32


def test_python_api_in_data_units(tmp_path):
    train(tmp_path / "run", "--ae-steps", "12")
    run = fg.load(tmp_path / "run")
    assert run.autoencoder is not None and run.discriminator is not None
    assert run.config.mode == "latent-cgan"
    images = run.sample(20, generator=torch.Generator().manual_seed(0))
    assert images.shape == (20, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, run.sample(20, generator=torch.Generator().manual_seed(0)))
    threes = run.sample(4, labels=3)
    assert threes.shape == (4, 1, 28, 28)
    z = run.encode(images)
    assert z.shape == (20, 32) and run.decode(z).shape == images.shape
    assert torch.equal(run.reconstruct(images), run.decode(z))
    with pytest.raises(ValueError, match="labels: expected class indices in"):
        run.sample(2, labels=10)


def test_augmentation_pairs_latents_of_the_same_label():
    data = load_dataset("mnist")
    config = TrainConfig(steps=4, ae_steps=2, batch_size=8, augment=0.5)
    training = Training(config, data, torch.device("cpu"))
    gan_data = GanData(training)
    first = torch.randint(len(data.x), (500,))
    assert torch.equal(data.y[gan_data.partners(first)], data.y[first])
    x, y = gan_data.real_batch()
    assert x.shape == (8, 784) and y.shape == (8,)


def test_sample_and_eval_commands(tmp_path, capsys):
    train(tmp_path / "run", "--ae-steps", "12")
    run = str(tmp_path / "run")
    assert main(["sample", "--run", run, "--n", "12", "--label", "7",
                 "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (12, 1, 28, 28)
    assert main(["sample", "--run", run, "--n", "12", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["eval", "--run", run]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert {"recon_mse", "pca_mse", "fd", "cond_accuracy"} <= set(evaluated)


@pytest.mark.parametrize("args, message", [
    (["train", "--mode", "gan"], "--mode: invalid choice"),
    (["train", "--steps", "-3"], "--steps: expected a positive integer, got '-3'"),
    (["train", "--batch-size", "abc"], "--batch-size: expected a positive integer"),
    (["train", "--dataset", "nope"], "nope: unknown dataset"),
    (["train", "--dataset", "missing.npy"], "no such file"),
    (["train", "--mode", "cgan", "--augment", "0.5"], "--augment: AE augmentation needs"),
    (["train", "--steps", "100", "--ae-steps", "100"], "--ae-steps: expected 0 < ae-steps"),
    (["train", "--resume"], "--resume: pass --out DIR"),
    (["train", "--pack", "3"], "--pack: expected a divisor of --batch-size (128)"),
    (["train", "--dataset", "grid", "--unconditional", "--clusters", "99999"],
     "--clusters: expected 1 to 50000"),
    (["sample", "--run", "nowhere", "--out", "x.png"], "no such checkpoint"),
    (["sample", "--run", "nowhere", "--out", "x.jpg"], "--out: expected a file name ending"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgan: error: ") and err.count("\n") == 1 and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_bad_input(capsys):
    assert main(["train", "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA GPU is available" in capsys.readouterr().err


def test_a_dataset_too_big_for_the_gpu_is_refused_before_training(monkeypatch):
    data = load_dataset("mnist")  # 10,000 x 784 float32 and the labels: 30 MiB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 * 2**20, 80 * 2**30))
    with pytest.raises(SetupError, match="the dataset takes 30 MiB .* 40 MiB free"):
        check_fits(data, torch.device("cuda"))
    check_fits(data, torch.device("cpu"))  # host memory already holds it


def test_config_file_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    for text, message in (("stepz = 3\n", "unknown setting(s) stepz"),
                          ("steps = \n", "is not valid TOML"),
                          ('steps = "many"\n', "--steps: expected int, got 'many'")):
        bad.write_text(text)
        assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_cli_subprocess_has_no_traceback(tmp_path):
    result = fastgan("train", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert result.stderr.startswith("fastgan: error: --config: cannot read")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_default_train_makes_recognizable_digits(tmp_path, monkeypatch):
    """The README's main job as shipped: conditional accuracy >= 0.9 and an autoencoder
    better than PCA."""
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    [run] = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["cond_accuracy"] >= 0.9
    assert metrics["recon_mse"] < metrics["pca_mse"]


@pytest.mark.slow
def test_unconditional_grid_captures_the_modes(tmp_path):
    """The 25-Gaussian grid without labels, self-conditioned by default: >= 24 modes
    captured with >= 90% high-quality samples."""
    summary = train(tmp_path / "grid", "--dataset", "grid", "--unconditional",
                    "--steps", "6000", "--batch-size", "256", "--eval-every", "6000",
                    "--log-every", "100", "--checkpoint-every", "6000")
    assert summary["metrics"]["modes_captured"] >= 24
    assert summary["metrics"]["high_quality"] >= 0.9


def test_self_conditioned_images_report_no_conditional_accuracy(tmp_path):
    summary = train(tmp_path / "run", "--mode", "cgan", "--unconditional", "--clusters", "10")
    assert "fd" in summary["metrics"] and "cond_accuracy" not in summary["metrics"]
    assert fg.load(tmp_path / "run").sample(4).shape == (4, 1, 28, 28)


def test_finetune_decoder_trains_only_the_decoder_in_the_gan_phase(tmp_path):
    # the torch engine for both: --finetune-decoder runs it, and the encoders compared bit
    # for bit come out of the same autoencoder steps
    train(tmp_path / "frozen", "--ae-steps", "12", "--engine", "torch")
    train(tmp_path / "tuned", "--ae-steps", "12", "--finetune-decoder")
    frozen, tuned = (checkpoint.load(tmp_path / run / "checkpoints" / "last.pt")["models"]
                     ["autoencoder"] for run in ("frozen", "tuned"))
    assert all(torch.equal(frozen[k], tuned[k]) for k in frozen if k.startswith("encoder"))
    assert not torch.equal(frozen["decoder.0.weight"], tuned["decoder.0.weight"])


def test_packed_discriminator_trains(tmp_path):
    summary = train(tmp_path / "run", "--mode", "cgan", "--pack", "4")
    assert np.isfinite(summary["metrics"]["fd"])
    assert fg.load(tmp_path / "run").discriminator.pack == 4
