"""One step of a UAP loop captured as a CUDA graph and replayed, for the launch-bound faithful mode.

The paper's rule visits one image at a time (Section 2.2: "for each image x"), and at batch 1 a GPU waits on the
host launching the step's few hundred kernels (three forwards and a backward), not on arithmetic. A CUDA graph
records those launches once and replays them with one call. It needs what the static-shape update
(:func:`raylab.core.masked_update`) already gives: the same shapes every step, no host read inside it, and state
kept in tensors updated in place (ρ and the running counts), so that a replay reads and writes the same memory.

:class:`CapturedStep` captures ``fn(*inputs)`` the first time it is called (after a few eager warm-up calls on a
side stream, which PyTorch asks for and which cuDNN's autotuner needs; the state is restored after them; the
capture runs on that same stream, whose library handles the warm-up made) and replays it for every later call with
inputs of that shape. The model's weights stop requiring gradients for the warm-up and the capture: the step needs
only the input gradient, and a weight's autograd leaf keeps the stream it was first used on, which a capture on
another stream may not wait on. Inputs of another shape (the short last batch of a
batched pass) run eagerly: the same function, the same result. CUDA only.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor


class CapturedStep:
    """``fn(*inputs) -> Tensor`` run from a CUDA graph: captured on the first call, replayed after it.

    Args:
        fn: the step; it may update ``state`` in place and returns a tensor (read it before the next call: a replay
            overwrites it).
        state: the tensors ``fn`` updates in place (ρ, counts), restored after the warm-up calls.
        frozen: tensors that stop requiring gradients while the step is warmed up and captured (the model's
            parameters), as they were afterwards.
        warmup: eager calls before the capture.
    """

    def __init__(self, fn: Callable[..., Tensor], state: Sequence[Tensor], *, frozen: Iterable[Tensor] = (),
                 warmup: int = 3) -> None:
        if any(s.device.type != "cuda" for s in state):
            raise ValueError(f"CUDA graphs need the step's state on a CUDA device, got {[str(s.device) for s in state]}")
        self.fn, self.state, self.frozen, self.warmup = fn, tuple(state), tuple(frozen), warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple[tuple[tuple[int, ...], torch.dtype], ...] | None = None
        self.inputs: tuple[Tensor, ...] = ()
        self.output: Tensor | None = None
        #: Why the capture failed, when it did (every call then runs eagerly).
        self.failed: str | None = None

    def __call__(self, *inputs: Tensor) -> Tensor:
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        if self.key is None and self.failed is None:
            self._capture(inputs, key)
        if self.graph is None or key != self.key:
            return self.fn(*inputs)
        for buffer, x in zip(self.inputs, inputs):
            buffer.copy_(x, non_blocking=True)
        self.graph.replay()
        assert self.output is not None
        return self.output

    def _capture(self, inputs: Sequence[Tensor], key: tuple) -> None:
        if any(x.device.type != "cuda" for x in inputs):
            raise ValueError(f"CUDA graphs need the step's inputs on a CUDA device, got {[str(x.device) for x in inputs]}")
        self.key = key
        self.inputs = tuple(x.clone() for x in inputs)
        saved = [s.clone() for s in self.state]
        wanted = [t.requires_grad for t in self.frozen]
        for t in self.frozen:
            t.requires_grad_(False)
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*self.inputs)
            side.synchronize()
            for s, v in zip(self.state, saved):
                s.copy_(v)
            with torch.cuda.graph(graph, stream=side):
                self.output = self.fn(*self.inputs)
        except RuntimeError as e:  # an op that cannot be captured: the same step, eagerly
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            warnings.warn(f"CUDA graph capture failed ({self.failed}); running the step eagerly", RuntimeWarning,
                          stacklevel=3)
            torch.cuda.synchronize()
            for s, v in zip(self.state, saved):
                s.copy_(v)
            return
        finally:
            for t, w in zip(self.frozen, wanted):
                t.requires_grad_(w)
        self.graph = graph
