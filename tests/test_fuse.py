"""fastgan.nn.fuse / unfuse on someone else's model, the loss modules, patched_losses(), and a
tutorial GAN trained unpatched and fused to the same losses."""

import copy
import json
import logging
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.nn as fnn
import fastgan.ops
from fastgan.cli import main
from fastgan.perf import bench_fuse
from fastgan.perf.bench_fuse import TutorialGAN
from fastgan.testing import assert_close


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(8, 8), nn.Dropout(0.5), nn.ReLU(),
        nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU()),
        nn.Linear(8, 8), nn.Sigmoid(),
        nn.Linear(8, 3))


def test_fuse_keeps_parameters_keys_and_results(backend):
    model = mlp().to(backend.device)
    reference = copy.deepcopy(model).double()
    params, keys = list(model.parameters()), list(model.state_dict())
    assert fnn.fuse(model) is model
    assert [type(m).__name__ for m in model if type(m) is not nn.Sequential] == [
        "FusedLinear", "FoldedActivation", "FusedLinear", "Dropout", "FoldedActivation",
        "FusedLinear", "FoldedActivation", "Linear"]
    assert [type(m).__name__ for m in model[5]] == [
        "FusedLinear", "FoldedActivation", "FusedLinear", "FoldedActivation"]
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert list(model.state_dict()) == keys
    x = torch.randn(5, 6, device=backend.device)
    for train in (False, True):  # in training, the Dropout moved after its ReLU
        model.train(train), reference.train(train)
        torch.manual_seed(1)
        out = model(x)
        torch.manual_seed(1)
        expected = reference(x.double())
        assert_close(out, expected, torch.float32, f"train={train}")
        out.square().sum().backward()
        expected.square().sum().backward()
        for (name, p), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert_close(p.grad, ref.grad, torch.float32, name)
            p.grad, ref.grad = None, None


def test_an_optimizer_built_before_fuse_trains_the_fused_layers():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fnn.fuse(model)
    before = model[0].weight.detach().clone()
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)


def test_old_checkpoints_load_and_unfuse_restores_plain_modules():
    model = mlp()
    saved = copy.deepcopy(model.state_dict())
    fnn.fuse(model)
    model.load_state_dict(saved)
    weight = model[0].weight
    assert fnn.unfuse(model) is model
    assert [type(m) for m in model] == [type(m) for m in mlp()]
    assert model[0].weight is weight and model[1].negative_slope == 0.2
    assert type(model[5][3]) is nn.GELU
    assert not [m for m in model.modules() if isinstance(m, (fnn.FusedLinear,
                                                             fnn.FoldedActivation))]


def test_inplace_false_fuses_a_copy():
    model = mlp()
    fused = fnn.fuse(model, inplace=False)
    assert fused is not model and type(model[0]) is nn.Linear
    assert type(fused[0]) is fnn.FusedLinear and fused[0].weight is not model[0].weight
    back = fnn.unfuse(fused, inplace=False)
    assert type(back[0]) is nn.Linear and type(fused[0]) is fnn.FusedLinear


class Custom(nn.Module):
    def forward(self, x):
        return x


class Reversed(nn.Sequential):
    def forward(self, x):
        for module in reversed(self):
            x = module(x)
        return x


class SubLinear(nn.Linear):
    pass


def test_what_fuse_leaves_alone_and_why(caplog):
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    model = nn.Sequential(
        nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(),            # 0: BatchNorm between
        nn.Linear(4, 4), nn.LeakyReLU(-0.1),                      # 3: negative slope
        nn.Linear(4, 4), nn.GELU(approximate="tanh"),             # 5
        nn.Linear(4, 4), nn.Dropout(0.1), nn.Tanh(),              # 7: Dropout before Tanh
        hooked, nn.ReLU(),                                        # 10: hooks
        SubLinear(4, 4), nn.ReLU(),                               # 12: a subclass
        nn.Linear(4, 4), nn.Tanh(), nn.ReLU(inplace=True),        # 14: next works in place
        nn.Linear(4, 4), Custom(),                                # 17
        Reversed(nn.Linear(4, 4), nn.ReLU()),                     # 19: own forward
        nn.Linear(4, 4))                                          # 20: nothing follows
    outer = nn.Module()
    outer.seq, outer.extra = model, nn.Linear(4, 4)
    before = [type(m) for m in outer.modules()]
    with caplog.at_level(logging.INFO, logger="fastgan.nn"):
        fnn.fuse(outer)
    assert [type(m) for m in outer.modules()] == before
    report = fnn.fuse_report(outer)
    assert report.fused == {}
    not_in_order = "not in an nn.Sequential that runs its children in order"
    assert report.left == {
        "seq.0": "followed by BatchNorm1d",
        "seq.3": "LeakyReLU with negative_slope -0.1 < 0",
        "seq.5": "GELU(approximate='tanh')",
        "seq.7": "Dropout before Tanh does not commute with it",
        "seq.10": "it has hooks",
        "seq.14": "ReLU(inplace=True) would overwrite the fused output",
        "seq.17": "followed by Custom",
        "seq.20": "no activation follows it",
        "seq.19.0": not_in_order,
        "extra": not_in_order,
    }
    assert "fused 0 Linear layer(s)" in caplog.text and "seq.3: LeakyReLU" in caplog.text


def test_fuse_names_layers_by_their_keys():
    model = nn.Sequential(OrderedDict(fc=nn.Linear(3, 3), act=nn.ReLU(), out=nn.Linear(3, 1)))
    report = fnn.fuse_report(fnn.fuse(model))
    assert report.fused == {"fc": "relu"} and report.left == {"out": "no activation follows it"}
    assert type(model.fc) is fnn.FusedLinear and type(model.act) is fnn.FoldedActivation


def test_fuse_report_names_what_runs_fused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.LeakyReLU(0.1), nn.Linear(3, 1))
    assert fnn.fuse_report(model).left["0"] == (
        "fuse() would fuse it with leaky_relu(0.1) (Dropout moved after it)")
    report = fnn.fuse_report(fnn.fuse(model))
    assert report.fused == {"0": "leaky_relu(0.1) (Dropout moved after it)"}
    assert report.left == {"3": "no activation follows it"}
    assert str(report) == ("fused 1 Linear layer(s): 0 leaky_relu(0.1) (Dropout moved after "
                           "it); left 1 as they were (3: no activation follows it)")


def test_fuse_and_unfuse_name_a_bad_argument():
    for fn in (fnn.fuse, fnn.unfuse):
        with pytest.raises(TypeError, match="module: expected an nn.Module, got str"):
            fn("model")


# ---------------------------------------------------------------------------------------
# Loss modules and patched_losses()


@pytest.fixture
def calls(monkeypatch):
    """How often each fused loss op ran."""
    counts = {"bce_with_logits": 0, "mse_loss": 0}
    for name in counts:
        op = getattr(fastgan.ops, name)

        def counted(*args, op=op, name=name, **kwargs):
            counts[name] += 1
            return op(*args, **kwargs)

        monkeypatch.setattr(fastgan.ops, name, counted)
    return counts


@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_loss_modules_match_torch(backend, calls, reduction):
    device = backend.device
    x = torch.randn(6, 5, device=device, requires_grad=True)
    target = torch.rand(6, 5, device=device)
    weight, pos_weight = torch.rand(5, device=device), torch.rand(5, device=device) + 0.5
    cases = [
        (fnn.BCEWithLogitsLoss(weight, reduction=reduction, pos_weight=pos_weight),
         nn.BCEWithLogitsLoss(weight.double(), reduction=reduction,
                              pos_weight=pos_weight.double())),
        (fnn.MSELoss(reduction=reduction), nn.MSELoss(reduction=reduction)),
    ]
    for ours, theirs in cases:
        assert isinstance(ours, type(theirs))
        x64 = x.detach().double().requires_grad_()
        out, expected = ours(x, target), theirs(x64, target.double())
        assert_close(out, expected, torch.float32, type(ours).__name__)
        (grad,), (expected_grad,) = (torch.autograd.grad(out.sum(), x),
                                     torch.autograd.grad(expected.sum(), x64))
        assert_close(grad, expected_grad, torch.float32, f"{type(ours).__name__} grad")
    assert calls == {"bce_with_logits": 1, "mse_loss": 1}


def test_loss_modules_take_torch_legacy_arguments():
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        assert fnn.MSELoss(size_average=False).reduction == "sum"
        assert fnn.BCEWithLogitsLoss(reduce=False).reduction == "none"


def test_calls_the_fused_op_does_not_cover_go_to_torch(calls):
    x, target = torch.randn(4, 3), torch.rand(4, 1)
    with pytest.warns(UserWarning, match="target size"):  # torch's broadcast, and its warning
        out = fnn.MSELoss()(x, target)
    torch.testing.assert_close(out, ((x - target) ** 2).mean())
    # torch's own errors, not fastgan's
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        fnn.BCEWithLogitsLoss(torch.rand(3, requires_grad=True))(x, torch.rand(4, 3))
    with pytest.raises(ValueError, match="Target size"):
        fnn.BCEWithLogitsLoss()(x, target)
    assert calls == {"bce_with_logits": 0, "mse_loss": 0}


def test_patched_losses_routes_the_functionals_and_restores_them(calls):
    torch_bce, torch_mse = F.binary_cross_entropy_with_logits, F.mse_loss
    x, target = torch.randn(4, 3), torch.rand(4, 3)
    with fnn.patched_losses():
        assert F.binary_cross_entropy_with_logits is not torch_bce
        bce = F.binary_cross_entropy_with_logits(x, target)
        mse = nn.MSELoss()(x, target)  # torch's module calls F.mse_loss
    assert calls == {"bce_with_logits": 1, "mse_loss": 1}
    assert (F.binary_cross_entropy_with_logits, F.mse_loss) == (torch_bce, torch_mse)
    assert_close(bce, torch_bce(x.double(), target.double()), torch.float32, "bce")
    assert_close(mse, torch_mse(x.double(), target.double()), torch.float32, "mse")
    with pytest.raises(KeyError), fnn.patched_losses():
        raise KeyError("user code failed")
    assert (F.binary_cross_entropy_with_logits, F.mse_loss) == (torch_bce, torch_mse)


# ---------------------------------------------------------------------------------------
# Convergence: the tutorial GAN, unpatched and fused, from the same seed.

# The Triton interpreter runs an iteration in about 0.5 s at these sizes: 20 iterations
# there, 200 on the C++ kernels (about 1 s).
STEPS = {"cpp": 200, "triton": 20}


@pytest.mark.parametrize("backend_name", ("cpp", "triton"))
def test_a_tutorial_gan_trains_to_the_same_losses_fused(monkeypatch, backend_name):
    monkeypatch.setenv("FASTGAN_BACKEND", backend_name)
    device = torch.device("cuda" if torch.cuda.is_available() and backend_name != "cpp"
                          else "cpu")

    def losses(fused: bool) -> torch.Tensor:
        gan = TutorialGAN(data_dim=16, noise_dim=8, hidden=32, batch=32, device=device,
                          fused=fused)
        if fused:  # the first and last layer of G, the two hidden layers of D
            assert len(fnn.fuse_report(gan.generator).fused) == 2
            assert len(fnn.fuse_report(gan.discriminator).fused) == 2
        return torch.stack([torch.stack(gan.step()) for _ in range(STEPS[backend_name])])

    fused = losses(True)
    assert_close(fused, losses(False).double(), torch.float32, "d and g losses per step")


# ---------------------------------------------------------------------------------------
# `fastgan bench fuse`, at tiny sizes (the real run is a benchmark)


def test_bench_fuse_times_both_variants_and_writes_the_report(tmp_path, capsys):
    assert main(["bench", "fuse", "--device", "cpu", "--batches", "8,16", "--repeat-ms", "1",
                 "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("fuse-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["command"].startswith("fastgan bench fuse --device cpu")
    assert report["sizes"] == bench_fuse.DEFAULT_SIZES
    assert [row["batch"] for row in report["rows"]] == [8, 16]
    for row in report["rows"]:
        assert row["unpatched_ms"] > 0 and row["fused_ms"] > 0 and "errors" not in row, row
        assert row["fused_vs_unpatched"] == row["unpatched_ms"] / row["fused_ms"]
        assert row["fused_layers"].startswith("fused 2 Linear layer(s): 0 leaky_relu(0.2)")
    assert "fused/unpatched" in capsys.readouterr().out


def test_bench_fuse_records_a_wrong_result_instead_of_timing_it(tmp_path, monkeypatch):
    class Doubled(fnn.BCEWithLogitsLoss):
        def forward(self, input, target):
            return 2 * super().forward(input, target)

    monkeypatch.setattr(fnn, "BCEWithLogitsLoss", Doubled)
    report = bench_fuse.run(torch.device("cpu"), [8], 1.0, False, tmp_path, "test",
                            sizes={"data_dim": 4, "noise_dim": 2, "hidden": 4})
    [row] = report["rows"]
    assert row["unpatched_ms"] > 0 and row["fused_ms"] is None
    assert "first losses" in row["errors"]["fused"] and row["fused_vs_unpatched"] is None


def test_bench_fuse_bad_input_is_one_line(capsys):
    assert main(["bench", "fuse", "--batches", "8,0"]) == 2
    assert capsys.readouterr().err.startswith("fastgan: error: --batches: ")
