"""Compiled training forwards: each trained peer's reference maths through `torch.compile`, switched in by the trainer.

`compile="on"` (`RunConfig.compile`, `--compile on`) puts a peer's layers back on the models'
reference maths (`ctrkit.kernels.for_device` with a non-CPU device: the CPU kernels are autograd
Functions with Python loops, which a whole-graph trace cannot take) and trains through
`torch.compile(model, fullgraph=True)`: inductor fuses the elementwise work around the matrix
products (Triton on CUDA, C++ on the CPU). Evaluation, the targets of a peer that stopped early and
the fixed teachers stay eager (a compiled peer's on the reference maths). It composes with graph
mode: the compiled kernels are captured into the step's CUDA graph like any others.

The maths is the models', the roundings are inductor's, so the numbers agree with eager within float
tolerance (tests/test_compiled.py, every model on the CPU), and dropout masks come from inductor's
own random stream (same distribution, not eager's masks). Like graph mode it is how a step runs,
not part of a run's key. "off" is the default: no profile measured it to pay (on the 2-core CPU it
gave nothing in fp32, docs/performance.md); `bench/gpu_check.py` times it on a GPU.
A compile that fails is a one-line CtrkitError at the run's first step.
"""
from __future__ import annotations

import torch

from ctrkit.core.errors import CtrkitError
from ctrkit.kernels import REFERENCE_DEVICE, for_device

__all__ = ["wanted", "Compiled", "switch_in"]


def wanted(mode: str, *, runs: int) -> bool:
    """Whether a run trains compiled forwards: `mode` "on", for one run (replicas' vmapped step is not
    compiled: "on" with replicas is a one-line CtrkitError)."""
    if mode == "off":
        return False
    if runs > 1:
        raise CtrkitError("compile=on is for one run at a time, not --seeds replicas (one batched step); "
                          "use compile=off or one seed per run")
    return True


class Compiled:
    """`torch.compile(module, fullgraph=True)` called like the module; the first call's failure (the
    compile happens then) a one-line CtrkitError naming the model."""

    def __init__(self, module: torch.nn.Module, name: str):
        self.fn, self.name, self.ran = torch.compile(module, fullgraph=True), name, False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.ran:
            return self.fn(x)
        try:
            out = self.fn(x)
        except CtrkitError:
            raise
        except Exception as e:  # noqa: BLE001 - dynamo/inductor raise many kinds; each is one line here
            line = (str(e).strip().splitlines() or [""])[0][:200]
            raise CtrkitError(f"compile=on: torch.compile of {self.name} failed: {type(e).__name__}: {line}") from None
        self.ran = True
        return out


def switch_in(peers) -> None:
    """Each trained peer's layers back to the reference maths and its training forward compiled."""
    for p in peers:
        if p.trainable:
            for_device(p.model, REFERENCE_DEVICE)
            p.train_forward = Compiled(p.train_forward, p.name)
