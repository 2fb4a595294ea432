"""`fastgan bench quality`: training seconds until the generator is good, for

    recipe    the MLP conditional GAN of the popular PyTorch GAN collections, written as its
              users write it: plain nn modules, nn.MSELoss (least squares), Adam 2e-4 with
              betas (0.5, 0.999), batch 64, pixels in [-1, 1], shuffled epochs
    fastgan   fastgan's default latent-cgan, through fastgan's own Training.train_step: the
              autoencoder phase, then the GAN phase (and each --config FILE.toml: fastgan
              with those settings over its defaults)

one after the other, on the same device and the same data, in one process (the same
threads). Both draw their batches, noise and labels on the device; neither syncs with the
host between evaluations.

Every --eval-every steps (and at each phase's end) the clock stops, the device is synced,
and the generator is judged by fastgan's held-out classifier metrics (evaluate.Evaluator:
cond_accuracy and FD of 1000 samples); evaluation time is left out of the clock. The report
gives, for --target and 0.9, the first evaluation reaching that cond_accuracy: training
seconds, steps and FD. A run stops there (or with --keep-going at its last step), at
--max-seconds, or at --max-steps.

fastgan's seconds include its autoencoder phase and the setup of its kernels in this process
(the C++ build on a CPU whose cache lacks it, else loading the cached build), each also
reported apart. The recipe's G is judged in training mode (batch statistics), as the
collection's sample_image does; fastgan judges its EMA generator, as `fastgan train` does.
"""

import importlib
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from fastgan import config as cfg
from fastgan.api import Run
from fastgan.data import DataError, Dataset, load_dataset
from fastgan.devices import check_fits, use_fp32_policy
from fastgan.evaluate import Evaluator
from fastgan.perf.results import device_name, new_report, report_path, write_report
from fastgan.step import Training

DEFAULT_TARGET = 0.95
ALSO_REPORTED = 0.9  # a second level, reported with --target
DEFAULT_MAX_SECONDS = 600.0
DEFAULT_EVAL_EVERY = 250
EVAL_SEED = 0  # the same noise and labels at every evaluation of every run

# The recipe's settings, as the collections have them.
RECIPE_NOISE_DIM = 100
RECIPE_BATCH = 64
RECIPE_LR = 2e-4
RECIPE_BETAS = (0.5, 0.999)
RECIPE_G_HIDDEN = (128, 256, 512, 1024)
RECIPE_D_HIDDEN = (512, 512, 512)
RECIPE_BATCHNORM_EPS = 0.8  # the collection passes 0.8 as BatchNorm1d's second argument, eps
RECIPE_SLOPE = 0.2
RECIPE_DROPOUT = 0.4


# ---------------------------------------------------------------------------------------
# The recipe people copy.


class RecipeGenerator(nn.Module):
    """[label embedding, noise] -> 128 -> 256 -> 512 -> 1024 -> image in [-1, 1]; every hidden
    layer but the first has BatchNorm1d(eps 0.8), all have LeakyReLU(0.2)."""

    def __init__(self, noise_dim: int, num_classes: int, image_dim: int):
        super().__init__()
        self.label_emb = nn.Embedding(num_classes, num_classes)

        def block(in_feat, out_feat, normalize=True):
            layers = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, RECIPE_BATCHNORM_EPS))
            layers.append(nn.LeakyReLU(RECIPE_SLOPE, inplace=True))
            return layers

        widths = (noise_dim + num_classes, *RECIPE_G_HIDDEN)
        self.model = nn.Sequential(
            *[layer for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
              for layer in block(n_in, n_out, normalize=i > 0)],
            nn.Linear(widths[-1], image_dim),
            nn.Tanh())

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        return self.model(torch.cat((self.label_emb(labels), noise), -1))


class RecipeDiscriminator(nn.Module):
    """[image, label embedding] -> 512 -> 512 -> 512 -> 1, LeakyReLU(0.2) after each hidden
    layer and Dropout(0.4) before the second's and third's, as in the collection."""

    def __init__(self, num_classes: int, image_dim: int):
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, num_classes)
        first, *rest = RECIPE_D_HIDDEN
        layers = [nn.Linear(num_classes + image_dim, first),
                  nn.LeakyReLU(RECIPE_SLOPE, inplace=True)]
        for n_in, n_out in zip(RECIPE_D_HIDDEN[:-1], rest, strict=True):
            layers += [nn.Linear(n_in, n_out), nn.Dropout(RECIPE_DROPOUT),
                       nn.LeakyReLU(RECIPE_SLOPE, inplace=True)]
        self.model = nn.Sequential(*layers, nn.Linear(RECIPE_D_HIDDEN[-1], 1))

    def forward(self, img: Tensor, labels: Tensor) -> Tensor:
        return self.model(torch.cat((img.view(img.size(0), -1), self.label_embedding(labels)), -1))


class ZeroToOne(nn.Module):
    """The recipe's G with outputs in fastgan's model units, [0, 1], for the evaluator."""

    def __init__(self, generator: RecipeGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        return (self.generator(noise, labels) + 1) / 2


class Recipe:
    """The collection's training loop, one batch per train_step: G's step, then D's on the
    same fakes, detached."""

    name = "recipe"
    phase = "gan"
    batch_size = RECIPE_BATCH

    def __init__(self, data: Dataset, seed: int):
        device = data.x.device
        torch.manual_seed(seed)
        self.num_classes = data.num_classes
        self.generator = RecipeGenerator(RECIPE_NOISE_DIM, data.num_classes, data.dim).to(device)
        self.discriminator = RecipeDiscriminator(data.num_classes, data.dim).to(device)
        self.adversarial_loss = nn.MSELoss()
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=RECIPE_LR,
                                            betas=RECIPE_BETAS)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=RECIPE_LR,
                                            betas=RECIPE_BETAS)
        self.images, self.labels = data.x * 2 - 1, data.y  # Normalize([0.5], [0.5])
        self.epoch = iter(())
        self.step = 0
        settings = cfg.TrainConfig(mode="cgan", noise_dim=RECIPE_NOISE_DIM,
                                   batch_size=RECIPE_BATCH, lr=RECIPE_LR, betas=RECIPE_BETAS)
        self.run = Run(settings, data.info(), {"ema_generator": ZeroToOne(self.generator)})

    def finished(self) -> bool:
        return False  # the collection trains for 200 epochs: longer than any --max-seconds

    def judged(self) -> Run:
        return self.run

    def _batch(self) -> Tensor:
        """The next batch's rows: a DataLoader's shuffled epochs, drawn on the device."""
        rows = next(self.epoch, None)
        if rows is None:
            order = torch.randperm(len(self.images), device=self.images.device)
            self.epoch = iter(order.split(RECIPE_BATCH))
            rows = next(self.epoch)
        return rows

    def train_step(self) -> None:
        rows = self._batch()
        real_imgs, labels = self.images[rows], self.labels[rows]
        batch_size, device = len(rows), real_imgs.device
        valid = torch.ones(batch_size, 1, device=device)
        fake = torch.zeros(batch_size, 1, device=device)

        self.optimizer_g.zero_grad()
        z = torch.randn(batch_size, RECIPE_NOISE_DIM, device=device)
        gen_labels = torch.randint(0, self.num_classes, (batch_size,), device=device)
        gen_imgs = self.generator(z, gen_labels)
        g_loss = self.adversarial_loss(self.discriminator(gen_imgs, gen_labels), valid)
        g_loss.backward()
        self.optimizer_g.step()

        self.optimizer_d.zero_grad()
        d_real_loss = self.adversarial_loss(self.discriminator(real_imgs, labels), valid)
        d_fake_loss = self.adversarial_loss(self.discriminator(gen_imgs.detach(), gen_labels),
                                            fake)
        d_loss = (d_real_loss + d_fake_loss) / 2
        d_loss.backward()
        self.optimizer_d.step()
        self.step += 1


# ---------------------------------------------------------------------------------------
# fastgan.


class Fastgan:
    """fastgan's training steps for one config, as `fastgan train` takes them."""

    def __init__(self, name: str, config: cfg.TrainConfig, data: Dataset):
        self.name, self.config = name, config
        self.batch_size = config.batch_size
        self.training = Training(config, data, data.x.device)
        self.run = Run(config, data.info(), self.training.models)

    @property
    def step(self) -> int:
        return self.training.step

    @property
    def phase(self) -> str:
        return self.training.phase

    def finished(self) -> bool:
        return self.training.step >= self.config.steps

    def judged(self) -> Run | None:
        """The run to judge, once its GAN has taken a step (before, G is untrained and the
        latent statistics unset)."""
        return self.run if self.training.step > self.config.ae_phase_steps else None

    def train_step(self) -> None:
        self.training.train_step()


# ---------------------------------------------------------------------------------------
# The race.


def levels(target: float) -> list[float]:
    return sorted({ALSO_REPORTED, target})


def race(build, evaluator: Evaluator, device: torch.device, target: float,
         max_seconds: float, eval_every: int, max_steps: int | None, keep_going: bool,
         setup_seconds: float = 0.0) -> dict:
    """Train what build() makes, judging it every eval_every steps with the clock stopped.
    setup_seconds: time it already spent (fastgan's kernel setup), counted in its clock."""
    goal = max(levels(target))
    trained, judging = setup_seconds, 0.0
    phase_seconds: dict[str, float] = {}
    points = []
    started = time.perf_counter()
    contender = build()
    phase = contender.phase
    while True:
        contender.train_step()
        step = contender.step
        out_of_time = trained + time.perf_counter() - started >= max_seconds
        stopped = ("max_seconds" if out_of_time else "last_step" if contender.finished()
                   else "max_steps" if max_steps is not None and step >= max_steps else None)
        phase_ends = contender.phase != phase
        if step % eval_every and not (stopped or phase_ends):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trained += time.perf_counter() - started
        if phase_ends:
            phase_seconds[phase] = round(trained - sum(phase_seconds.values()), 3)
            phase = contender.phase
        judging_started = time.perf_counter()
        run = contender.judged()
        if run is not None:
            evaluated = evaluator(run, seed=EVAL_SEED)
            points.append({"step": step, "seconds": round(trained, 3),
                           "cond_accuracy": evaluated["cond_accuracy"], "fd": evaluated["fd"]})
            _progress(f"{contender.name}: step {step}, {trained:.1f} s, cond_accuracy "
                      f"{evaluated['cond_accuracy']:.3f}, fd {evaluated['fd']:.3g}")
            if evaluated["cond_accuracy"] >= goal and not keep_going:
                stopped = "target"
        judging += time.perf_counter() - judging_started
        if stopped:
            break
        started = time.perf_counter()
    phase_seconds[phase] = round(trained - sum(phase_seconds.values()), 3)
    return {"name": contender.name, "batch_size": contender.batch_size, "steps": step,
            "train_seconds": round(trained, 3), "eval_seconds": round(judging, 3),
            "phase_seconds": phase_seconds, "stopped": stopped, "points": points,
            "reached": {f"{level:g}": next((p for p in points if p["cond_accuracy"] >= level),
                                           None) for level in levels(target)},
            "best": max(points, key=lambda p: p["cond_accuracy"], default=None)}


def _progress(line: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{line}")
        sys.stderr.flush()


def quality_data(dataset: str, data_dir: Path | None, device: torch.device) -> Dataset:
    """Labeled images on the device: what cond_accuracy and the recipe's tanh output need."""
    data = load_dataset(dataset, data_dir)
    if not data.is_image or data.y is None or data.modes is not None:
        raise DataError(f"--dataset: bench quality needs labeled images (the classifier's "
                        f"cond_accuracy, the recipe's image output); {data.name} is not")
    check_fits(data, device)
    return data.to(device)


def run(device: torch.device, out_dir: Path, command: str, backend_setup_seconds: float,
        dataset: str = "mnist", data_dir: Path | None = None,
        fastgan_settings: dict[str, dict] | None = None, recipe: bool = True,
        target: float = DEFAULT_TARGET, max_seconds: float = DEFAULT_MAX_SECONDS,
        eval_every: int = DEFAULT_EVAL_EVERY, max_steps: int | None = None,
        keep_going: bool = False) -> Path:
    """Races the recipe and each fastgan config (name -> settings over fastgan's defaults,
    default {"fastgan": {}}); prints the table and writes the JSON report (and a plot)."""
    fastgan_settings = {"fastgan": {}} if fastgan_settings is None else fastgan_settings
    # torch.optim's first optimizer imports torch._dynamo (seconds): a cost of the process,
    # paid here so that the first run raced does not pay it for the others.
    importlib.import_module("torch._dynamo")
    data = quality_data(dataset, data_dir, device)
    base = {"device": device.type, "dataset": dataset,
            "data_dir": None if data_dir is None else str(data_dir)}
    configs = {name: cfg.resolve_lengths(cfg.build(values, base), len(data.x))
               for name, values in fastgan_settings.items()}
    for name, c in configs.items():
        if c.mode == "ae" or c.unconditional:
            raise cfg.ConfigError(f"--config: {name} trains no conditional generator (mode "
                                  f"{c.mode}{', unconditional' if c.unconditional else ''})")
    evaluator = Evaluator(data, cfg.build({"mode": "cgan"}, base))  # the classifier alone
    use_fp32_policy(device)  # every variant under the trainer's fp32 policy; recorded
    report = new_report("quality", device, torch.float32, command)
    report.update(host_cpu=device_name(torch.device("cpu")), dataset=data.name,
                  train_size=len(data.x), held_out_size=len(data.test_x),
                  classifier_accuracy=evaluator.reference["classifier_accuracy"],
                  target=target, levels=levels(target), eval_every=eval_every,
                  max_seconds=max_seconds, max_steps=max_steps, keep_going=keep_going,
                  backend_setup_seconds=round(backend_setup_seconds, 3), runs=[])
    path = report_path(out_dir, report)
    print(f"{report['device']}, fastgan backend {report['fastgan_backend']}, "
          f"{torch.get_num_threads()} CPU threads, {data.name}: {len(data.x):,} training "
          f"images", flush=True)
    races = {"recipe": lambda: Recipe(data, seed=0)} if recipe else {}
    races.update({name: (lambda name=name, c=c: Fastgan(name, c, data))
                  for name, c in configs.items()})
    for name, build in races.items():
        result = race(build, evaluator, device, target, max_seconds, eval_every, max_steps,
                      keep_going, setup_seconds=0.0 if name == "recipe" else
                      backend_setup_seconds)
        result["settings"] = (_recipe_settings() if name == "recipe"
                              else cfg.to_dict(configs[name]))
        report["runs"].append(result)
        write_report(path, report)  # after every run: a benchmark cut short keeps its runs
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    print(table(report))
    plotted = plot(report, path.with_suffix(".png"))
    print(f"wrote {path}" + (f" and {plotted}" if plotted else ""))
    return path


def _recipe_settings() -> dict:
    return {"noise_dim": RECIPE_NOISE_DIM, "batch_size": RECIPE_BATCH, "lr": RECIPE_LR,
            "betas": list(RECIPE_BETAS), "g_hidden": list(RECIPE_G_HIDDEN),
            "d_hidden": list(RECIPE_D_HIDDEN), "batchnorm_eps": RECIPE_BATCHNORM_EPS,
            "leaky_slope": RECIPE_SLOPE, "dropout": RECIPE_DROPOUT, "loss": "nn.MSELoss",
            "pixels": [-1, 1]}


def table(report: dict) -> str:
    """One line per run and level: training seconds, steps and FD at the first evaluation
    reaching it, or 'not reached' with the best seen; then each run's time budget."""
    lines = [["run", "batch", "cond_accuracy", "seconds", "steps", "fd"]]
    notes = []
    for result in report["runs"]:
        best = result["best"]
        for level, point in result["reached"].items():
            cells = [f"{point['seconds']:.1f}", str(point["step"]), f"{point['fd']:.3g}"] \
                if point else ["not reached", "-", "-"]
            lines.append([result["name"], str(result["batch_size"]), f">= {level}", *cells])
        best_text = "no evaluation" if best is None else (
            f"best cond_accuracy {best['cond_accuracy']:.3f} (fd {best['fd']:.3g}) at "
            f"{best['seconds']:.1f} s, step {best['step']}")
        phases = ", ".join(f"{phase} phase {s:.1f} s" for phase, s in
                           result["phase_seconds"].items()) if result["name"] != "recipe" \
            else None
        setup = f", kernel setup {report['backend_setup_seconds']:.1f} s" \
            if result["name"] != "recipe" else ""
        notes.append(f"{result['name']}: {result['train_seconds']:.1f} s training in "
                     f"{result['steps']} steps (stopped: {result['stopped']}"
                     + (f"; {phases}{setup}" if phases else "") + f"), {best_text}; "
                     f"evaluation {result['eval_seconds']:.1f} s, not counted")
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rows = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
                     for line in lines)
    return rows + "\n" + "\n".join(notes)


def plot(report: dict, path: Path) -> Path | None:
    """cond_accuracy against training seconds for each run, as a PNG; None without
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for result in report["runs"]:
        points = result["points"]
        axes.plot([p["seconds"] for p in points], [p["cond_accuracy"] for p in points],
                  marker=".", label=f"{result['name']} (batch {result['batch_size']})")
    for level in report["levels"]:
        axes.axhline(level, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("training seconds (evaluation not counted)")
    axes.set_ylabel("cond_accuracy (held-out classifier)")
    axes.set_title(f"{report['dataset']}, {report['device']}", fontsize=10)
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
