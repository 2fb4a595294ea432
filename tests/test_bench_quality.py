"""`fastgan bench quality` at tiny sizes: the report's structure, the recipe's architecture
as the issue describes it, and the clock's bookkeeping. The real run is a benchmark."""

import json

import pytest
import torch
from helpers import fastgan
from torch import nn

from fastgan.perf import bench_quality


def _layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_the_recipe_is_the_collections_mlp_cgan():
    g = bench_quality.RecipeGenerator(noise_dim=100, num_classes=10, image_dim=784)
    d = bench_quality.RecipeDiscriminator(num_classes=10, image_dim=784)

    assert g.label_emb.embedding_dim == 10 and d.label_embedding.embedding_dim == 10
    assert [(m.in_features, m.out_features) for m in _layers(g, nn.Linear)] == [
        (110, 128), (128, 256), (256, 512), (512, 1024), (1024, 784)]
    # BatchNorm after every hidden layer but the first, eps 0.8 (not the momentum)
    assert [(m.num_features, m.eps, m.momentum) for m in _layers(g, nn.BatchNorm1d)] == [
        (256, 0.8, 0.1), (512, 0.8, 0.1), (1024, 0.8, 0.1)]
    assert [m.negative_slope for m in _layers(g, nn.LeakyReLU)] == [0.2] * 4
    assert isinstance(g.model[-1], nn.Tanh)
    assert [(m.in_features, m.out_features) for m in _layers(d, nn.Linear)] == [
        (794, 512), (512, 512), (512, 512), (512, 1)]
    assert [m.p for m in _layers(d, nn.Dropout)] == [0.4, 0.4]
    assert [m.negative_slope for m in _layers(d, nn.LeakyReLU)] == [0.2] * 3
    assert not _layers(d, nn.BatchNorm1d) and not _layers(d, nn.Sigmoid)


def test_the_recipe_trains_as_written():
    data = bench_quality.quality_data("mnist", None, torch.device("cpu"))
    recipe = bench_quality.Recipe(data, seed=0)
    before = [p.detach().clone() for p in recipe.generator.parameters()]

    for _ in range(2):
        recipe.train_step()

    assert isinstance(recipe.adversarial_loss, nn.MSELoss)
    for optimizer in (recipe.optimizer_g, recipe.optimizer_d):
        group = optimizer.param_groups[0]
        assert (group["lr"], group["betas"]) == (2e-4, (0.5, 0.999))
    assert recipe.images.min() == -1 and recipe.images.max() == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, recipe.generator.parameters(),
                                                 strict=True))
    # the evaluator sees images in fastgan's model units, [0, 1]
    samples = recipe.judged().sample_model_units(torch.arange(20) % 10, 20)
    assert samples.shape == (20, 784) and 0 <= samples.min() and samples.max() <= 1


def test_a_tiny_race_writes_the_report_table_and_plot(tmp_path, capsys):
    tiny = {"steps": 8, "ae_steps": 4, "batch_size": 32, "ae_hidden": [32], "g_hidden": [32],
            "d_hidden": [32]}
    path = bench_quality.run(
        torch.device("cpu"), tmp_path, "fastgan bench quality (test)", 0.25,
        fastgan_settings={"fastgan": tiny}, target=0.95, max_seconds=60, eval_every=4,
        max_steps=8)

    report = json.loads(path.read_text())
    assert path.name.startswith("quality-cpu-") and path.with_suffix(".png").is_file()
    assert report["command"] == "fastgan bench quality (test)"
    assert report["cpu_threads"] == torch.get_num_threads() and report["host_cpu"]
    assert report["levels"] == [0.9, 0.95] and report["backend_setup_seconds"] == 0.25
    recipe, ours = report["runs"]
    assert (recipe["name"], recipe["batch_size"], ours["name"]) == ("recipe", 64, "fastgan")
    assert recipe["settings"]["batchnorm_eps"] == 0.8 and ours["settings"]["ae_steps"] == 4
    assert [p["step"] for p in recipe["points"]] == [4, 8]
    # fastgan is judged once its GAN has trained: not at the end of its autoencoder phase
    assert [p["step"] for p in ours["points"]] == [8]
    assert ours["stopped"] == "last_step" and recipe["stopped"] == "max_steps"
    # the kernel setup and both phases count; evaluation does not
    assert set(ours["phase_seconds"]) == {"ae", "gan"}
    assert sum(ours["phase_seconds"].values()) == pytest.approx(ours["train_seconds"], abs=2e-3)
    assert ours["phase_seconds"]["ae"] > 0.25
    for run in (recipe, ours):
        assert run["eval_seconds"] > 0
        seconds = [p["seconds"] for p in run["points"]]
        assert seconds == sorted(seconds) and seconds[-1] == run["train_seconds"]
        for point in run["points"]:
            assert set(point) == {"step", "seconds", "cond_accuracy", "fd"}
            assert 0 <= point["cond_accuracy"] <= 1 and point["fd"] >= 0
        assert run["best"] in run["points"] and set(run["reached"]) == {"0.9", "0.95"}
        # 8 steps are far from 0.9: not reached, which the table says
        assert run["reached"]["0.9"] is None
    out = capsys.readouterr().out
    assert out.count("not reached") == 4 and "best cond_accuracy" in out


@pytest.mark.parametrize("args, message", [
    (["--target", "1.5"], "fastgan: error: --target: expected a number in [0, 1), got '1.5'"),
    (["--dataset", "ring"], "fastgan: error: --dataset: bench quality needs labeled images"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, args, message):
    result = fastgan("bench", "quality", "--device", "cpu", "--out", str(tmp_path), *args)

    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
