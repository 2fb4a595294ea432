"""One run's models, optimizers and random stream, and the training steps that update them.

    autoencoder step   x -> encoder -> decoder -> fused MSE against x
    GAN step           D: fused gan_d_loss on [real; G(noise, label) decoded], one D forward
                       G: fused gan_g_loss on D(G(noise, label) decoded), then the EMA of G

Every random draw (batches, noise, labels, augmentation) comes from one torch.Generator on
the training device, saved in checkpoints: that is what makes --resume bit-exact.

How an iteration runs (the engine): the loss computations are torch.compile'd (--compile;
by default on CUDA only: on a 2-core CPU compiled small MLPs ran slower than eager), the
optimizers are fused Adam (one multi-tensor kernel per update, also on the CPU), and on
CUDA each phase's whole iteration is one CUDA graph (fastgan/graphs.py; --no-cuda-graphs
turns it off). Nothing in an iteration syncs with the host, so every path runs the same
step code: the EMA's decay, for one, comes from a step counter on the device.
On CUDA, fp32 matmuls run as TF32 unless --no-tf32 (fastgan.devices.use_fp32_policy).
On the CPU, fp32, the default engine is native instead (--engine, fastgan/native.py): each
phase's iteration is one C++ call on the same tensors, fed the same random draws.

Under torchrun (fastgan/distributed.py) the trained modules run under DDP: every rank draws
the global batch and noise from the same generator state and trains on its own rows.

In latent-cgan mode G makes *standardized* autoencoder latents (the encoder's training-set
mean and std are buffers of the autoencoder): G starts near the latent distribution instead
of having to grow its outputs to the latents' scale, which made training several times
slower. With the decoder frozen, D's real data are the autoencoder's reconstructions: G can
only reach what the decoder makes, so D compares like with like and cannot win on the
decoder's blur alone.
"""

import sys
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fastgan.config import TrainConfig, conditioning
from fastgan.data import BatchSampler, Dataset, kmeans_labels
from fastgan.devices import use_fp32_policy
from fastgan.distributed import DDP_GRAPH_WARMUP, World, ddp_graphs_problem
from fastgan.graphs import WARMUP, GraphedStep, on_stream, supports_graphs
from fastgan.models import Autoencoder, Generator, build_models
from fastgan.native import NativeStep, choose_engine
from fastgan.ops import gan_d_loss, gan_g_loss, mse_loss

EMA_WARMUP = 10  # the EMA's decay ramps up as (1 + t) / (EMA_WARMUP + t)
FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch.optim.Adam(fused=True) has a kernel


class Fakes(nn.Module):
    """G's samples in model units of the data (decoded in latent mode): the module whose
    trained parameters the G step updates (G's, and the decoder's with --finetune-decoder),
    so that DDP sees them in one forward."""

    def __init__(self, generator: Generator, autoencoder: Autoencoder | None):
        super().__init__()
        self.generator, self.autoencoder = generator, autoencoder

    def forward(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        return self.decode(self.generator(noise, labels))

    def decode(self, g_out: Tensor) -> Tensor:
        """G's output in model units of the data: decoded in latent mode."""
        return g_out if self.autoencoder is None else self.autoencoder.decode_standardized(g_out)


@contextmanager
def frozen(module: nn.Module):
    """No parameter gradients for `module` (gradients still flow through it)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


class Training:
    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device,
                 world: World | None = None):
        world = world or World()
        self.config, self.data, self.device, self.world = config, data, device, world
        use_fp32_policy(device, config.tf32)
        self.global_batch = config.batch_size * world.size
        self.num_classes, clustered = conditioning(config, data.num_classes)
        labels = (kmeans_labels(data.x, self.num_classes, config.seed) if clustered
                  else data.y if self.num_classes else None)
        torch.manual_seed(config.seed)  # parameter initialization
        self.models = build_models(config, data.dim, self.num_classes, data.is_image)
        for module in self.models.values():
            module.to(device)
        self.rng = torch.Generator(device).manual_seed(config.seed)
        if labels is not None and "generator" in self.models:
            prior = torch.bincount(labels, minlength=self.num_classes).float()
            for name in ("generator", "ema_generator"):
                self.models[name].label_prior.copy_(prior / prior.sum())
        self.sampler = BatchSampler(data.x, labels, self.global_batch, self.rng)
        self.compiled = device.type == "cuda" if config.compile is None else config.compile
        why_not = supports_graphs(device)
        if why_not is None and world.launched:
            why_not = ddp_graphs_problem()
            if why_not and config.cuda_graphs and world.is_main:
                print(f"fastgan: warning: CUDA graphs off: {why_not}", file=sys.stderr)
        self.graphed = config.cuda_graphs and why_not is None
        self._adam_flags = {"fused": device.type in FUSED_ADAM_DEVICES,
                            "capturable": self.graphed}
        self.optimizers = self._optimizers()
        self.step = 0
        self._gan_data = None  # latent-cgan: made when the GAN phase starts
        if "generator" in self.models:  # (EMA parameters, G parameters), listed once
            self._ema_pairs = tuple(list(self.models[name].parameters())
                                    for name in ("ema_generator", "generator"))
            self._ema_steps = torch.zeros((), device=device)  # GAN steps taken, on the device
            self._ema_weights = _weights_like(self._ema_pairs[0])
        # On CUDA, one side stream for the run: DDP is built, graphs are warmed up and
        # captured on it, since DDP's gradient hooks belong to the stream it was built on.
        self.side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # Under DDP, not fullgraph: Dynamo runs DDP's forward wrapper eagerly and compiles
        # the module's forward inside it (DDPOptimizer splits it at the gradient buckets).
        fullgraph = not world.launched
        compile_ = (lambda f: torch.compile(f, fullgraph=fullgraph, dynamic=False)) \
            if self.compiled else (lambda f: f)
        self._ae_loss, self._d_loss, self._g_loss = (
            compile_(self._ae_loss), compile_(self._d_loss), compile_(self._g_loss))
        self._graphs: dict[str, GraphedStep] = {}
        # the modules the current phase's losses call (under DDP when launched), and its name
        self._trained: dict[str, nn.Module] = {}
        self._trained_phase: str | None = None
        self.fakes = Fakes(self.models["generator"], self.models["autoencoder"]
                           if config.mode == "latent-cgan" else None) \
            if "generator" in self.models else None
        # native: each phase's iteration is one C++ call (fastgan/native.py), made with the phase
        self.engine = choose_engine(config, device, world.launched, self.models,
                                    self.optimizers, announce=world.is_main)
        self._native: NativeStep | None = None

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c, m = self.config, self.models
        adam = lambda params, lr: torch.optim.Adam(params, lr, betas=c.betas,
                                                   **self._adam_flags)
        optimizers = {}
        if "autoencoder" in m:
            optimizers["autoencoder"] = adam(m["autoencoder"].parameters(), c.lr_ae)
        if "generator" in m:
            params = list(m["generator"].parameters())
            if c.finetune_decoder:
                params += list(m["autoencoder"].decoder.parameters())
            optimizers["generator"] = adam(params, c.lr_g or c.lr)
            optimizers["discriminator"] = adam(m["discriminator"].parameters(), c.lr_d or c.lr)
        return optimizers

    @property
    def phase(self) -> str:
        return "ae" if self.step < self.config.ae_phase_steps else "gan"

    def train_step(self) -> dict[str, Tensor]:
        """One iteration of the current phase; the losses stay on the device (when graphed,
        they are the graph's outputs: read them before the next step)."""
        phase = self.phase
        step = self._ae_step if phase == "ae" else self._gan_step
        if self._trained_phase != phase:
            self._trained, self._trained_phase = self._phase_modules(phase), phase
            self._native = NativeStep(phase, self.config, self.models, self.optimizers,
                                      getattr(self, "_ema_steps", None)) \
                if self.engine == "native" else None
        if self.graphed:
            if phase not in self._graphs:
                warmup = DDP_GRAPH_WARMUP if self.world.launched else WARMUP
                self._graphs = {phase: GraphedStep(step, (self.rng,), warmup,
                                                   self.side_stream)}  # frees the last
            step = self._graphs[phase]
        losses = step()
        self.step += 1
        return losses

    def _phase_modules(self, phase: str) -> dict[str, nn.Module]:
        """The modules the phase's losses call, under DDP when launched. Made when the phase
        starts: DDP averages the gradients of the parameters that require them when it is
        made, and the GAN phase freezes the encoder (and the decoder, unless fine-tuned).
        On CUDA, DDP is made on the run's side stream, the one its graphs are captured on."""
        if phase == "gan" and self.config.mode == "latent-cgan" and self._gan_data is None:
            self._gan_data = GanData(self)
        modules = {"ae": {"autoencoder": self.models.get("autoencoder")},
                   "gan": {"discriminator": self.models.get("discriminator"),
                           "fakes": self.fakes}}[phase]
        if self.device.type != "cuda" or not self.world.launched:
            return {name: self.world.wrap(m) for name, m in modules.items()}
        return on_stream(self.side_stream,
                         lambda: {name: self.world.wrap(m) for name, m in modules.items()})

    def state_dict(self) -> dict:
        return {"step": self.step,
                "models": {name: m.state_dict() for name, m in self.models.items()},
                "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.models.items():
            module.load_state_dict(state["models"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            _use_flags(optimizer, self._adam_flags)
        self.rng.set_state(state["rng"])
        self.step = state["step"]
        if "generator" in self.models:
            self._ema_steps.fill_(max(0, self.step - self.config.ae_phase_steps))
        self._gan_data = None  # remade from the loaded autoencoder
        self._graphs = {}  # they recorded the tensors just replaced
        self._trained_phase = None

    # ---- autoencoder ---------------------------------------------------------------------

    def autocast(self):
        # A new context per use: torch.compile traces one made inside the compiled code.
        # No weight cache: fastgan's ops cast their own inputs, and the cache's tensors
        # would outlive a CUDA graph capture.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False,
                              enabled=self.config.precision == "bf16")

    def shard(self, t: Tensor | None) -> Tensor | None:
        """This rank's rows of a global batch."""
        return self.world.shard(t, self.config.batch_size)

    def _ae_step(self) -> dict[str, Tensor]:
        x, _ = self.sampler()
        if self._native is not None:
            return self._native.ae_step(self.shard(x))
        loss = self._ae_loss(self.shard(x))
        self._update("autoencoder", loss)
        return {"ae": loss.detach()}

    def _ae_loss(self, x: Tensor) -> Tensor:
        with self.autocast():
            reconstruction = self._trained["autoencoder"](x)
        return mse_loss(reconstruction.float(), x)

    # ---- GAN -----------------------------------------------------------------------------

    def noise_and_labels(self, n: int) -> tuple[Tensor, Tensor | None]:
        noise = torch.randn(n, self.config.noise_dim, generator=self.rng, device=self.device)
        if not self.num_classes:
            return noise, None
        # the labels of random training rows: classes as often as the data has them
        rows = torch.randint(len(self.sampler.y), (n,), generator=self.rng, device=self.device)
        return noise, self.sampler.y[rows]

    def _gan_step(self) -> dict[str, Tensor]:
        real, real_labels = self._real_batch()
        noise, labels = self.noise_and_labels(self.global_batch)
        if self._native is not None:  # G's draws come next in the stream, as below
            return self._native.gan_step(*map(self.shard, (
                real, real_labels, noise, labels, *self.noise_and_labels(self.global_batch))))
        d_loss = self._d_loss(*map(self.shard, (real, real_labels, noise, labels)))
        self._update("discriminator", d_loss)

        noise, labels = self.noise_and_labels(self.global_batch)
        with frozen(self.models["discriminator"]):  # G's step: no gradients for D's weights
            g_loss = self._g_loss(self.shard(noise), self.shard(labels))
        self._update("generator", g_loss)
        self._update_ema()
        return {"d": d_loss.detach(), "g": g_loss.detach()}

    def _d_loss(self, real: Tensor, real_labels: Tensor | None, noise: Tensor,
                labels: Tensor | None) -> Tensor:
        """D's loss on a real batch and on G's samples for (noise, labels), in one D
        forward."""
        with self.autocast():
            with torch.no_grad():  # no backward through G: its plain module, not DDP's
                fake = self.fakes(noise, labels)
            both_labels = None if labels is None else torch.cat([real_labels, labels])
            logits = self._trained["discriminator"](torch.cat([real, fake.to(real.dtype)]),
                                                    both_labels).float()
        real_logits, fake_logits = logits.chunk(2)
        return gan_d_loss(real_logits, fake_logits,
                          real_target=1.0 - self.config.label_smoothing)

    def _g_loss(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        # D is frozen: its plain module, so that its DDP expects no gradients
        with self.autocast():
            logits = self.models["discriminator"](
                self._trained["fakes"](noise, labels), labels).float()
        return gan_g_loss(logits)

    def _update(self, name: str, loss: Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema = decay * ema + (1 - decay) * G, decay = min(ema_decay, (1 + t) / (10 + t))
        after t GAN steps, computed on the device."""
        t = self._ema_steps
        decay = ((1 + t) / (EMA_WARMUP + t)).clamp_max(self.config.ema_decay)
        ema, params = self._ema_pairs
        # A scalar weight would be read into a Python number (a host sync), and a list of
        # 0-dim weights takes foreach's slow path (one lerp_ launch per parameter on CUDA).
        # Weights shaped as the parameters take the fast path: one fill, one lerp pass.
        self._ema_weights[0].fill_(1 - decay)
        torch._foreach_lerp_(ema, params, self._ema_weights[1])
        t.add_(1)

    def _real_batch(self) -> tuple[Tensor, Tensor | None]:
        if self.config.mode != "latent-cgan":
            return self.sampler()
        return self._gan_data.real_batch()  # made when the phase started


def _weights_like(params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One flat buffer and its views shaped (and strided) as `params`: per-element lerp
    weights that one fill_ sets."""
    flat = torch.empty(sum(p.numel() for p in params), device=params[0].device,
                       dtype=params[0].dtype)
    return flat, [view.view_as(p) for view, p in
                  zip(flat.split([p.numel() for p in params]), params, strict=True)]


def _use_flags(optimizer: torch.optim.Optimizer, flags: dict) -> None:
    """A loaded optimizer state carries the implementation flags (fused, capturable) of the
    run that saved it: use this run's, with Adam's step counts where they need to be
    (on the parameters' device for fused and capturable updates, else on the CPU)."""
    for group in optimizer.param_groups:
        group.update(flags)
    on_device = flags["fused"] or flags["capturable"]
    for param, state in optimizer.state.items():
        if "step" in state:
            state["step"] = state["step"].to(param.device if on_device else "cpu",
                                             torch.float32)


class GanData:
    """latent-cgan's view of the training set, made once the autoencoder is trained: the
    training latents (for augmentation) and D's real data (reconstructions, with a frozen
    decoder)."""

    @torch.no_grad()
    def __init__(self, training: Training):
        c, ae, data = training.config, training.models["autoencoder"], training.data
        self.training, self.labels = training, training.sampler.y
        ae.encoder.requires_grad_(False)
        ae.decoder.requires_grad_(c.finetune_decoder)
        latents = torch.cat([ae.encoder(chunk) for chunk in data.x.split(4096)])
        ae.latent_mean.copy_(latents.mean(0))
        ae.latent_std.copy_(latents.std(0).clamp_min(1e-6))
        self.latents = (latents - ae.latent_mean) / ae.latent_std
        real = data.x if c.finetune_decoder else torch.cat(
            [training.fakes.decode(z) for z in self.latents.split(4096)])
        self.sampler = BatchSampler(real, self.labels, training.global_batch, training.rng)
        self.augmented = round(c.augment * training.global_batch)
        if self.labels is not None:  # rows grouped by label, for same-label partners
            self.by_label = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=training.num_classes)
            self.label_start, self.label_count = counts.cumsum(0) - counts, counts

    def real_batch(self) -> tuple[Tensor, Tensor | None]:
        x, y = self.sampler()
        if not self.augmented:
            return x, y
        x_aug, y_aug = self._interpolations(self.augmented)
        x = torch.cat([x[self.augmented:], x_aug.to(x.dtype)])
        return x, None if y is None else torch.cat([y[self.augmented:], y_aug])

    def _interpolations(self, n: int) -> tuple[Tensor, Tensor | None]:
        """Decoded points between two training latents of the same label."""
        rng, device = self.training.rng, self.latents.device
        first = torch.randint(len(self.latents), (n,), generator=rng, device=device)
        second = self.partners(first)
        t = torch.rand(n, 1, generator=rng, device=device)
        with torch.no_grad():
            z = torch.lerp(self.latents[first], self.latents[second], t)
            labels = None if self.labels is None else self.labels[first]
            return self.training.fakes.decode(z), labels

    def partners(self, first: Tensor) -> Tensor:
        """A random training row for each of `first`, with the same label when labeled."""
        rng, n = self.training.rng, len(first)
        if self.labels is None:
            return torch.randint(len(self.latents), (n,), generator=rng, device=first.device)
        labels = self.labels[first]
        pick = torch.rand(n, generator=rng, device=first.device) * self.label_count[labels]
        return self.by_label[self.label_start[labels] + pick.long()]
