"""A training run's settings: one dataclass, its per-dataset defaults, and TOML files.

Precedence, lowest first: the dataclass defaults, the mode's defaults (MODE_DEFAULTS), the
dataset's defaults (DATASET_DEFAULTS), a --config TOML file, then the command-line flags.
"""

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODES = ("ae", "cgan", "latent-cgan")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
ENGINES = ("native", "torch")


class ConfigError(ValueError):
    """A bad setting: the message names it and what was expected."""


@dataclass
class TrainConfig:
    mode: str = "latent-cgan"
    dataset: str = "mnist"  # mnist | ring | grid | a .npy/.npz/.csv path
    data_dir: str | None = None  # a directory of IDX files; wins over dataset
    unconditional: bool = False
    clusters: int = 0  # without labels: condition on this many k-means clusters (0: off)
    steps: int = 8000  # optimizer steps of the whole run, all phases
    epochs: float | None = None  # when set, steps = ceil(epochs * train size / batch_size)
    ae_steps: int | None = None  # latent-cgan: the first ae_steps steps train the AE
    #                              (default: an eighth of steps)
    batch_size: int = 128
    lr: float = 2e-4  # G and D, unless lr_g / lr_d say otherwise
    lr_g: float | None = None
    lr_d: float | None = None
    lr_ae: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    latent_dim: int = 32
    noise_dim: int = 64
    ae_hidden: tuple[int, ...] = (512, 256)
    g_hidden: tuple[int, ...] = (256, 512)
    d_hidden: tuple[int, ...] = (512, 256)
    pack: int = 1  # D judges this many samples at once (PacGAN); divides batch_size
    label_smoothing: float = 0.0  # one-sided: D's target for real data is 1 - label_smoothing
    ema_decay: float = 0.999
    augment: float = 0.0  # latent-cgan: share of each real batch replaced by AE interpolations
    finetune_decoder: bool = False  # latent-cgan: train the decoder with G in the GAN phase
    device: str = "auto"
    precision: str = "fp32"
    compile: bool | None = None  # torch.compile the losses; None: on CUDA only (fastest)
    cuda_graphs: bool = True  # on CUDA, each iteration is one CUDA graph replay
    tf32: bool = True  # on CUDA, fp32 matmuls as TF32 on tensor cores; False: IEEE fp32
    engine: str | None = None  # native | torch; None: native where it runs (fastgan/native.py)
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 500
    samples_per_class: int = 10  # columns of the sample grid

    @property
    def ae_phase_steps(self) -> int:
        return {"ae": self.steps, "cgan": 0, "latent-cgan": self.ae_steps}[self.mode]


# latent-cgan's recipe, tuned with `fastgan bench quality` on fastgan's held-out metrics
# (every setting tried: profiles/quality-tuning-cpu-amd-epyc-2cores-2026-12-03.md). G makes
# 32 standardized latents, and at 3.5x the usual GAN learning rate it reaches cond_accuracy
# 0.95 in half the GAN steps; the autoencoder, at twice its rate, needs half the steps
# (AE_SHARE). 1e-3 was a little quicker, but its final FD no better than 2e-4's; 7e-4's is
# better. ae mode and cgan keep the dataclass defaults.
MODE_DEFAULTS = {"latent-cgan": {"lr": 7e-4, "lr_ae": 2e-3}}
AE_SHARE = 8  # latent-cgan's autoencoder phase: steps // AE_SHARE, unless --ae-steps

# Lengths that fit the 5-minute budget on a 2-core CPU, and what the toy mixtures need:
# linear outputs, no autoencoder phase to speak of, and D judged on 2-D points.
DATASET_DEFAULTS = {
    "ring": {"mode": "cgan", "steps": 6000, "batch_size": 256,
             "g_hidden": (128, 128), "d_hidden": (128, 128), "noise_dim": 16,
             "eval_every": 2000, "clusters": 50},
    "grid": {"mode": "cgan", "steps": 6000, "batch_size": 256,
             "g_hidden": (128, 128), "d_hidden": (128, 128), "noise_dim": 16,
             "eval_every": 2000, "clusters": 50},
}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Each setting's type as text: "int", "float | None", "tuple[int, ...]"...
TYPES = {name: f.type.__name__ if isinstance(f.type, type) else str(f.type)
         for name, f in FIELDS.items()}


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            values = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config: {path} is not valid TOML: {error}") from error
    values = {key.replace("-", "_"): value for key, value in values.items()}
    return _known(values, f"--config: {path}")


def read_json(path: Path) -> dict:
    """A run's config.json, as --resume reads it back."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, UnicodeError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read the run's settings: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected the run's settings as a JSON object")
    return _known(values, str(path))


def _known(values: dict, where: str) -> dict:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(FIELDS)}")
    return values


def build(file_values: dict, flag_values: dict) -> TrainConfig:
    """The run's config from a TOML file's values and the flags given on the command line."""
    given = {**file_values, **flag_values}
    dataset = given.get("dataset", TrainConfig.dataset)
    values = {**DATASET_DEFAULTS.get(dataset, {}), **given}
    values = {**MODE_DEFAULTS.get(values.get("mode", TrainConfig.mode), {}), **values}
    config = TrainConfig(**{key: _coerce(key, value) for key, value in values.items()})
    validate(config)
    return config


def _coerce(key: str, value):
    kind = TYPES[key]
    if kind.startswith("tuple") and isinstance(value, list):
        return tuple(value)
    if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def validate(config: TrainConfig) -> None:
    """Types and ranges of every setting, with the setting's flag name in the message."""
    for name, expected in TYPES.items():
        value = getattr(config, name)
        flag = "--" + name.replace("_", "-")
        if value is None and "None" in expected:
            continue
        if expected.startswith("tuple"):
            ok = isinstance(value, tuple) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value)
        elif expected.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected.startswith("float"):
            ok = isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value)
        elif expected.startswith("bool"):
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"{flag}: expected {expected}, got {value!r}")
    if config.clusters < 0:
        raise ConfigError(f"--clusters: expected an integer >= 0, got {config.clusters}")
    for name in ("steps", "batch_size", "latent_dim", "noise_dim", "pack", "log_every",
                 "eval_every", "checkpoint_every", "samples_per_class"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a positive integer, "
                              f"got {getattr(config, name)}")
    for name in ("lr", "lr_g", "lr_d", "lr_ae", "epochs"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a positive number, "
                              f"got {value}")
    choices = {"mode": MODES, "device": DEVICES, "precision": PRECISIONS, "engine": ENGINES}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed and getattr(config, name) is not None:
            raise ConfigError(f"--{name}: expected one of {', '.join(allowed)}, "
                              f"got {getattr(config, name)!r}")
    if len(config.betas) != 2 or not all(0 <= b < 1 for b in config.betas):
        raise ConfigError(f"--betas: expected two numbers in [0, 1), got {config.betas}")
    for name in ("label_smoothing", "augment", "ema_decay"):
        if not 0 <= getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a number in [0, 1), "
                              f"got {getattr(config, name)}")
    if config.mode == "latent-cgan" and config.ae_steps is not None \
            and not 0 < config.ae_steps < config.steps:
        raise ConfigError(f"--ae-steps: expected 0 < ae-steps < steps ({config.steps}) in "
                          f"latent-cgan mode, got {config.ae_steps}")
    if config.batch_size % config.pack:
        raise ConfigError(f"--pack: expected a divisor of --batch-size ({config.batch_size}), "
                          f"got {config.pack}")
    if config.augment and config.mode != "latent-cgan":
        raise ConfigError("--augment: AE augmentation needs the autoencoder of "
                          f"--mode latent-cgan, got --mode {config.mode}")


def conditioning(config: TrainConfig, data_classes: int) -> tuple[int, bool]:
    """(classes G and D are conditioned on, whether they are k-means clusters): the data's
    labels unless --unconditional or there are none; then --clusters, if set."""
    if data_classes and not config.unconditional:
        return data_classes, False
    return config.clusters, config.clusters > 0


def resolve_lengths(config: TrainConfig, train_size: int) -> TrainConfig:
    """The run's lengths as numbers, once the training set's size is known: --epochs
    becomes steps, and latent-cgan's ae_steps defaults to an eighth of them (AE_SHARE).
    config.json keeps these, so a resumed run that raises --steps keeps its phases."""
    steps, ae_steps = config.steps, config.ae_steps
    if config.epochs is not None:
        steps = math.ceil(config.epochs * train_size / config.batch_size)
    if config.mode == "latent-cgan":
        ae_steps = ae_steps or max(1, steps // AE_SHARE)
        steps = max(steps, ae_steps + 1)  # the GAN phase gets at least one step
    resolved = dataclasses.replace(config, steps=steps, ae_steps=ae_steps)
    validate(resolved)
    return resolved


def to_dict(config: TrainConfig) -> dict:
    return {name: (list(v) if isinstance(v := getattr(config, name), tuple) else v)
            for name in FIELDS}


def from_dict(values: dict) -> TrainConfig:
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    config = TrainConfig(**{key: _coerce(key, value) for key, value in values.items()})
    validate(config)
    return config
