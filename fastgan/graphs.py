"""One training iteration as one CUDA graph: the capture rules, in one place.

GraphedStep(step, generators) wraps a zero-argument function that runs one whole training
iteration (batch sampling, forward, backward, optimizer updates, EMA) and returns a dict of
loss tensors. It follows PyTorch's whole-network capture rules
(https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture):

1. Warm-up first, on a side stream: the first WARMUP calls run eagerly there, and capture
   runs on the same stream (a run passes its one side stream, the one its DDP modules were
   built on: DDP's autograd hooks belong to that stream, and torch warns, and capture can
   fail, when warm-up or capture runs on another). They compile
   the Triton kernels and torch.compile'd code, create Adam's state and cuBLAS workspaces:
   nothing may be compiled or lazily allocated during capture.
2. Gradients are set to None before capture (the step's own zero_grad(set_to_none=True)),
   so backward allocates them from the graph's private pool and replays refill them there.
3. Every random draw inside comes from a generator registered with the graph
   (register_generator_state, where torch has it): the graph advances its offset on every
   replay, so each replay draws new numbers. Adam runs with capturable=True (step counts
   on the device).
4. Nothing inside syncs with the host or depends on Python values that change between
   iterations (the EMA's decay is computed on the device from a device step counter).
5. Capturing does not run the work: after capture the graph is replayed once for the
   iteration that was captured, and once per iteration after that.
6. The returned loss tensors are the graph's static outputs, overwritten by each replay:
   read them (.item()) before the next call, or clone them.

Anything that replaces the tensors the graph recorded (loading an optimizer state dict,
new parameters) invalidates it: make a new GraphedStep.
"""

from collections.abc import Callable

import torch
from torch import Tensor

WARMUP = 3  # eager iterations before capture; PyTorch's examples use 3 (DDP needs 11)


class GraphedStep:
    def __init__(self, step: Callable[[], dict[str, Tensor]],
                 generators: tuple[torch.Generator, ...] = (), warmup: int = WARMUP,
                 stream: torch.cuda.Stream | None = None):
        self.step, self.generators, self.warmup = step, generators, warmup
        self.stream = stream if stream is not None else torch.cuda.Stream()  # warm-up, capture
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: dict[str, Tensor] = {}

    def __call__(self) -> dict[str, Tensor]:
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            return on_stream(self.stream, self.step)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.outputs

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # torch 2.6-2.13 need the registration; later releases register generators lazily
        # (pytorch#176753) and may drop the method.
        if hasattr(graph, "register_generator_state"):
            for generator in self.generators:
                graph.register_generator_state(generator)
        torch.cuda.synchronize()  # the warm-up's work is done before capture starts
        with torch.cuda.graph(graph, stream=self.stream):
            self.outputs = self.step()
        self.graph = graph


def on_stream(stream: torch.cuda.Stream, fn: Callable[[], object]):
    """fn() run on `stream`, ordered after the current stream's work and before its next."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return out


def supports_graphs(device: torch.device) -> str | None:
    """None when iterations on `device` can be captured, else why not."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, got {device.type}"
    return None
