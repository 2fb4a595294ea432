"""The native engine: each phase's whole iteration as one C++ call (fastgan/csrc/native_step.cpp).

    autoencoder step   encoder, decoder, MSE, backward, Adam: engine.ae_step(x)
    GAN iteration      D's step on [real; G(noise)], G's step through the frozen D, Adam for
                       each, the EMA of G: engine.gan_step(real, labels, noise, ...)

Inside the call there is no autograd and no Python between ops. It works on the run's own
tensors: the modules' parameters, their .grad buffers and torch.optim.Adam's state (made here
the way Adam makes it), so checkpoints, --resume and the torch engine see the same state.
Training (fastgan/step.py) draws the batches, noise and labels from the run's generator in the
same order as the torch engine, before the call.

It runs the built-in models in fp32 on the CPU, one process. choose_engine says when it
cannot, and the run then uses the torch engine.

Its GEMMs run in ATen's at::mm (MKL) or ATen's oneDNN matmul, whichever is faster for the
shape on this CPU: each shape is timed with both at its first use, and the choices are cached
in fastgan.files.cache_dir() / "gemms", one file per CPU model, thread count, torch version
and instruction set caps, so later runs make the same choices (and a resumed run the same
arithmetic). FASTGAN_NATIVE_GEMM = aten | onednn fixes the library instead; deleting the file
times again.
"""

import json
import os
import sys

import torch
from torch import Tensor, nn

from fastgan.backends import cpp
from fastgan.backends.codes import ACTIVATION_CODES, GEMM_LIBRARIES, GEMM_LIBRARY_CODES
from fastgan.config import TrainConfig
from fastgan.devices import cpu_model, device_slug
from fastgan.files import atomic_write, cache_dir
from fastgan.models import Discriminator, Generator

NATIVE_ACTIVATIONS = ("none", "relu", "leaky_relu", "tanh", "sigmoid")


def choose_engine(config: TrainConfig, device: torch.device, launched: bool,
                  models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                  announce: bool) -> str:
    """The engine the run uses: config.engine, or native where it can run (the default on the
    CPU). A run that asked for native, or a CPU run that defaulted to it, and cannot have it
    gets one line on stderr saying why."""
    if config.engine == "torch":
        return "torch"
    reason = why_not_native(config, device, launched, models, optimizers)
    if reason is None:
        gemm_library()  # an unusable FASTGAN_NATIVE_GEMM is bad input, said before training
        return "native"
    if announce and (config.engine == "native" or device.type == "cpu"):
        print(f"fastgan: using the torch engine: {reason}", file=sys.stderr)
    return "torch"


def why_not_native(config: TrainConfig, device: torch.device, launched: bool,
                   models: dict[str, nn.Module],
                   optimizers: dict[str, torch.optim.Optimizer]) -> str | None:
    """Why the native engine cannot run this run, or None when it can."""
    if device.type != "cpu":
        return f"the native engine runs on the CPU, not {device.type}"
    if config.precision != "fp32":
        return f"the native engine runs fp32, not --precision {config.precision}"
    if config.compile and config.engine != "native":
        return "--compile runs the torch engine's losses through torch.compile"
    if launched:
        return "the native engine runs in one process, not under torchrun"
    if config.finetune_decoder:
        return "the native engine does not train the decoder with G (--finetune-decoder)"
    backend = os.environ.get("FASTGAN_BACKEND", "auto").strip().lower() or "auto"
    if backend not in ("auto", "cpp"):
        return f"FASTGAN_BACKEND={backend} asks for other kernels"
    for name, module in models.items():
        for layer in module.modules():
            activation = getattr(layer, "first_activation", getattr(layer, "activation", "none"))
            if activation not in NATIVE_ACTIVATIONS:
                return f"{name} has a {activation} layer; the native engine has " \
                       f"{', '.join(NATIVE_ACTIVATIONS)}"
        for tensor in module.state_dict().values():
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                return f"{name} holds {tensor.dtype} tensors; the native engine runs float32"
    for name, optimizer in optimizers.items():
        groups = optimizer.param_groups
        if len(groups) != 1 or groups[0]["weight_decay"] or groups[0]["amsgrad"] \
                or groups[0]["maximize"] or isinstance(groups[0]["lr"], Tensor):
            return f"the {name} optimizer is not plain Adam with one parameter group"
    if not cpp.available():
        return "the C++ kernels are unavailable (see the warning above)"
    return None


def gemm_library() -> str:
    """FASTGAN_NATIVE_GEMM, checked: auto (the default), aten or onednn."""
    name = os.environ.get("FASTGAN_NATIVE_GEMM", "auto").strip().lower() or "auto"
    if name not in GEMM_LIBRARIES:
        raise ValueError(f"FASTGAN_NATIVE_GEMM: expected one of {', '.join(GEMM_LIBRARIES)}, "
                         f"got {name!r}")
    if name == "onednn" and not onednn_available():
        raise ValueError("FASTGAN_NATIVE_GEMM=onednn: this torch's oneDNN matmul does not run "
                         "float32 on this CPU (on x86 it needs AVX-512 BW, DQ and VL)")
    return name


def onednn_available() -> bool:
    cpp.require()
    return torch.classes.fastgan_native.Engine.onednn_available()


# Caps on the instruction sets MKL and oneDNN use: they change which library is faster.
GEMM_ISA_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def gemm_choices_path():
    """Where the timed GEMM choices for this CPU, thread count, torch version and instruction
    set caps live."""
    caps = [os.environ[name] for name in GEMM_ISA_VARIABLES if os.environ.get(name)]
    slug = device_slug(" ".join([cpu_model(), *caps]))
    return cache_dir() / "gemms" / \
        f"cpu-{slug}-{torch.get_num_threads()}threads-torch{torch.__version__}.json"


def _load_gemm_choices() -> list[int]:
    try:
        choices = json.loads(gemm_choices_path().read_text())["choices"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: time again
        return []
    flat = [number for choice in choices for number in choice]
    return flat if all(isinstance(n, int) for n in flat) and len(flat) % 7 == 0 else []


def _save_gemm_choices(flat: list[int]) -> None:
    """Adds the engine's choices to the file's (another run may have timed other shapes)."""
    merged = {tuple(flat[i:i + 6]): flat[i + 6] for i in range(0, len(flat), 7)}
    on_file = _load_gemm_choices()
    for i in range(0, len(on_file), 7):
        merged.setdefault(tuple(on_file[i:i + 6]), on_file[i + 6])
    text = json.dumps({
        "cpu": cpu_model(), "torch": torch.__version__,
        "fields": ["threads", "m", "k", "n", "a_transposed", "b_transposed", "library"],
        "library": {name: GEMM_LIBRARY_CODES[name] for name in GEMM_LIBRARIES[1:]},
        "choices": [[*key, library] for key, library in sorted(merged.items())]}, indent=1)
    with atomic_write(gemm_choices_path()) as file:
        file.write((text + "\n").encode())


class NativeStep:
    """One phase's native engine over the run's tensors; made when the phase starts (and again
    after a checkpoint is loaded: the optimizer state is then new tensors)."""

    def __init__(self, phase: str, config: TrainConfig, models: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], ema_steps: Tensor | None):
        cpp.require()
        self.phase, self.config = phase, config
        self.engine = torch.classes.fastgan_native.Engine()
        self.gemm_library = gemm_library()
        self.engine.set_gemms(GEMM_LIBRARY_CODES[self.gemm_library],
                              _load_gemm_choices() if self.gemm_library == "auto" else [])
        self._saved_choices = self.engine.gemm_choice_count()
        if phase == "ae":
            ae = models["autoencoder"]
            self.encoder = self._add_mlp(ae.encoder, trainable=True)
            self.decoder = self._add_mlp(ae.decoder, trainable=True)
            self.adam = self._add_adam(optimizers["autoencoder"])
            return
        self.generator = self._add_conditioned(models["generator"], trainable=True)
        self.discriminator = self._add_conditioned(models["discriminator"], trainable=True)
        self.decoder = -1
        if config.mode == "latent-cgan":
            ae = models["autoencoder"]
            self.decoder = self._add_mlp(ae.decoder, trainable=False)
            self.engine.set_latent(ae.latent_mean, ae.latent_std)
        self.adam_d = self._add_adam(optimizers["discriminator"])
        self.adam_g = self._add_adam(optimizers["generator"])
        ema = [p.data for p in models["ema_generator"].parameters()]
        trained = optimizers["generator"].param_groups[0]["params"]
        if [p.shape for p in trained] != [p.shape for p in ema]:
            raise ValueError("ema_generator: expected one EMA tensor per parameter of G")
        self.engine.set_ema(self.adam_g, ema, ema_steps, config.ema_decay)

    def ae_step(self, x: Tensor) -> dict[str, Tensor]:
        losses = {"ae": self.engine.ae_step(self.encoder, self.decoder, self.adam, x)}
        self._keep_gemm_choices()
        return losses

    def gan_step(self, real: Tensor, real_labels: Tensor | None, noise_d: Tensor,
                 labels_d: Tensor | None, noise_g: Tensor, labels_g: Tensor | None
                 ) -> dict[str, Tensor]:
        d, g = self.engine.gan_step(
            self.generator, self.decoder, self.discriminator, self.adam_d, self.adam_g,
            real, real_labels, noise_d, labels_d, noise_g, labels_g,
            1.0 - self.config.label_smoothing)
        self._keep_gemm_choices()
        return {"d": d, "g": g}

    def _keep_gemm_choices(self) -> None:
        """Saves the GEMM choices when the step timed new shapes."""
        count = self.engine.gemm_choice_count()
        if count != self._saved_choices:
            self._saved_choices = count
            _save_gemm_choices(self.engine.gemm_choices())

    def _add_mlp(self, net: nn.Sequential, trainable: bool, first_activation: str | None = None,
                 label_term: tuple[Tensor, ...] = (), pack: int = 1) -> int:
        layers = list(net)
        activations = [layer.activation for layer in layers]
        if first_activation is not None:
            activations[0] = first_activation
        grads = (lambda name: [_grad(getattr(layer, name)) for layer in layers]) \
            if trainable else (lambda name: [])
        return self.engine.add_mlp(
            [layer.weight.data for layer in layers], [layer.bias.data for layer in layers],
            grads("weight"), grads("bias"), [ACTIVATION_CODES[a] for a in activations],
            [float(layer.negative_slope) for layer in layers], list(label_term), pack)

    def _add_conditioned(self, module: Generator | Discriminator, trainable: bool) -> int:
        if module.embed is None:
            return self._add_mlp(module.net, trainable, pack=module.pack)
        tensors = [module.embed.weight, module.label_weight]
        label_term = [t.data for t in tensors] + ([_grad(t) for t in tensors] if trainable else [])
        return self._add_mlp(module.net, trainable, module.first_activation, tuple(label_term),
                             module.pack)

    def _add_adam(self, optimizer: torch.optim.Optimizer) -> int:
        group = optimizer.param_groups[0]
        params = group["params"]
        states = [_adam_state(optimizer, p) for p in params]
        beta1, beta2 = group["betas"]
        return self.engine.add_adam(
            [p.data for p in params], [_grad(p) for p in params],
            [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states], float(group["lr"]), float(beta1), float(beta2),
            float(group["eps"]))


def _grad(param: Tensor) -> Tensor:
    """The parameter's .grad, the buffer the engine writes its gradient into."""
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


def _adam_state(optimizer: torch.optim.Optimizer, param: Tensor) -> dict:
    """Adam's state for `param`, made as fused Adam makes it on its first step."""
    state = optimizer.state[param]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state
