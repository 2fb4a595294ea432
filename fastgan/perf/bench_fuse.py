"""`fastgan bench fuse`: someone else's GAN, trained as written and then with fastgan's one-line
adoption (fastgan.nn.fuse on G and D, fastgan.nn.BCEWithLogitsLoss for the loss).

The GAN is written as third-party tutorials write one: G and D are nn.Sequential MLPs of
Linear, LeakyReLU(0.2, inplace=True), Dropout, BatchNorm1d in G and Tanh at G's end, the
loss is nn.BCEWithLogitsLoss, Adam 2e-4 with betas (0.5, 0.999). One timed call is one
training iteration: D's step on a real and a fake batch, then G's step. Before timing, the
first iteration's losses of the two variants, from the same seed, are checked against each
other: a broken fusion gets an error in its row, not a number. The two are timed in
alternating rounds (timing.time_interleaved).
"""

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

import fastgan.nn
from fastgan.devices import use_fp32_policy
from fastgan.perf.results import new_report, report_path, write_report
from fastgan.perf.timing import time_interleaved
from fastgan.testing import TOLERANCES

SLOPE = 0.2
DROPOUT = 0.3
LR = 2e-4
BETAS = (0.5, 0.999)

DEFAULT_SIZES = {"data_dim": 784, "noise_dim": 100, "hidden": 256}
DEFAULT_BATCHES = {"cuda": [64, 256, 4096], "cpu": [64, 256]}
DEFAULT_REPEAT_MS = {"cuda": 200.0, "cpu": 3000.0}
QUICK_BATCHES = [64]
QUICK_REPEAT_MS = 50.0


def generator(noise_dim: int, hidden: int, data_dim: int) -> nn.Sequential:
    """noise -> hidden -> 2 hidden (BatchNorm1d) -> data in [-1, 1]."""
    return nn.Sequential(
        nn.Linear(noise_dim, hidden), nn.LeakyReLU(SLOPE, inplace=True),
        nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden),
        nn.LeakyReLU(SLOPE, inplace=True),
        nn.Linear(2 * hidden, data_dim), nn.Tanh())


def discriminator(data_dim: int, hidden: int) -> nn.Sequential:
    """data -> 2 hidden -> hidden -> one logit, Dropout after the first activation and
    before the second."""
    return nn.Sequential(
        nn.Linear(data_dim, 2 * hidden), nn.LeakyReLU(SLOPE, inplace=True), nn.Dropout(DROPOUT),
        nn.Linear(2 * hidden, hidden), nn.Dropout(DROPOUT), nn.LeakyReLU(SLOPE, inplace=True),
        nn.Linear(hidden, 1))


class TutorialGAN:
    """The tutorial's models, optimizers and loop. fused=True applies fastgan's adoption after
    the optimizers are built, as a user adding it to existing code would."""

    def __init__(self, *, data_dim: int, noise_dim: int, hidden: int, batch: int,
                 device: torch.device, fused: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.noise_dim, self.batch, self.device = noise_dim, batch, device
        self.generator = generator(noise_dim, hidden, data_dim).to(device)
        self.discriminator = discriminator(data_dim, hidden).to(device)
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=LR, betas=BETAS)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=LR,
                                            betas=BETAS)
        self.criterion = nn.BCEWithLogitsLoss()
        if fused:
            fastgan.nn.fuse(self.generator)
            fastgan.nn.fuse(self.discriminator)
            self.criterion = fastgan.nn.BCEWithLogitsLoss()
        # The real data: 8 clusters in [-1, 1]^data_dim, drawn from the same seeded stream.
        self.centers = torch.rand(8, data_dim, device=device) * 1.6 - 0.8
        self.ones = torch.ones(batch, 1, device=device)
        self.zeros = torch.zeros(batch, 1, device=device)

    def step(self) -> tuple[Tensor, Tensor]:
        """One iteration: D's step, then G's; the (d_loss, g_loss) tensors."""
        cluster = torch.randint(0, len(self.centers), (self.batch,), device=self.device)
        real = self.centers[cluster] + 0.05 * torch.randn_like(self.centers[cluster])
        fake = self.generator(torch.randn(self.batch, self.noise_dim, device=self.device))

        self.optimizer_d.zero_grad()
        d_loss = (self.criterion(self.discriminator(real), self.ones)
                  + self.criterion(self.discriminator(fake.detach()), self.zeros)) / 2
        d_loss.backward()
        self.optimizer_d.step()

        self.optimizer_g.zero_grad()
        g_loss = self.criterion(self.discriminator(fake), self.ones)
        g_loss.backward()
        self.optimizer_g.step()
        return d_loss.detach(), g_loss.detach()


def _measure(build: Callable[..., TutorialGAN], device: torch.device,
             repeat_ms: float) -> dict:
    row, first, gans = {}, {}, {}
    for variant, fused in (("unpatched", False), ("fused", True)):
        try:
            gan = build(fused=fused)
            first[variant] = torch.stack(gan.step())
            if fused:
                rtol, atol = TOLERANCES[torch.float32]
                torch.testing.assert_close(first["fused"], first["unpatched"], rtol=rtol,
                                           atol=atol, msg=lambda m: f"first losses: {m}")
                row["fused_layers"] = str(fastgan.nn.fuse_report(gan.generator)) + " | " + str(
                    fastgan.nn.fuse_report(gan.discriminator))
            gans[variant] = gan
        except Exception as error:  # record it and go on, as bench ops does
            row.setdefault("errors", {})[variant] = f"{type(error).__name__}: {error}"
    measured = time_interleaved({name: gan.step for name, gan in gans.items()}, device,
                                repeat_ms) if gans else {}
    for variant in ("unpatched", "fused"):
        row[f"{variant}_ms"] = measured.get(variant)
    unpatched, fused = row["unpatched_ms"], row["fused_ms"]
    row["fused_vs_unpatched"] = None if None in (unpatched, fused) else unpatched / fused
    return row


def run(device: torch.device, batches: list[int] | None, repeat_ms: float | None,
        quick: bool, out_dir, command: str, sizes: dict | None = None) -> dict:
    """Times both variants at each batch, prints a line per batch, writes the JSON report;
    returns the report. sizes overrides DEFAULT_SIZES (the tests' tiny model)."""
    batches = batches or (QUICK_BATCHES if quick else DEFAULT_BATCHES[device.type])
    repeat_ms = repeat_ms or (QUICK_REPEAT_MS if quick else DEFAULT_REPEAT_MS[device.type])
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    use_fp32_policy(device)  # every variant under the trainer's fp32 policy; recorded
    report = new_report("fuse", device, torch.float32, command)
    report.update(sizes=sizes, batches=batches, repeat_ms=repeat_ms, rows=[])
    path = report_path(out_dir, report)
    print(f"{report['device']}, fastgan backend {report['fastgan_backend']}; tutorial GAN "
          f"{sizes}, one training iteration")
    print(f"{'batch':>6}  {'unpatched ms':>12}  {'fused ms':>10}  {'fused/unpatched':>15}")
    for batch in batches:
        build = functools.partial(TutorialGAN, **sizes, batch=batch, device=device)
        row = {"batch": batch, **_measure(build, device, repeat_ms)}
        report["rows"].append(row)
        write_report(path, report)
        cells = ["error" if row[k] is None else f"{row[k]:.3f}"
                 for k in ("unpatched_ms", "fused_ms")]
        speedup = "-" if row["fused_vs_unpatched"] is None else f"{row['fused_vs_unpatched']:.2f}x"
        print(f"{batch:>6}  {cells[0]:>12}  {cells[1]:>10}  {speedup:>15}", flush=True)
        for variant, error in row.get("errors", {}).items():
            print(f"{variant} failed at batch {batch}: {' '.join(error.split())[:300]}")
    print(f"wrote {path}")
    return report
