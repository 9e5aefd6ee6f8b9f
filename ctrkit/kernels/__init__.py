"""CPU kernels: hardware fast paths kept apart from the models' reference maths.

`cpu` holds the layers' CPU fast paths (hand-written backward passes; `cpublas`: wide fp32 layers'
products in numpy's OpenBLAS on non-Intel x86 CPUs). The trainer switches them in for CPU runs with
`for_device(model, device)` (`for_vmap`: the kernels that have a vmap rule, for replicas); the models
never import this package. Also here: setting a
run's thread count (torch's and the kernels' worker pools together) and the provenance that names the
BLAS in use.
"""
from __future__ import annotations

import contextlib
import os

import torch

from ctrkit.core import utils
from ctrkit.kernels import cpublas
from ctrkit.kernels.cpu import for_device, for_vmap

__all__ = ["REFERENCE_DEVICE", "apply_threads", "env_info", "for_device", "for_vmap"]

# `for_device(model, REFERENCE_DEVICE)` puts the reference maths back on any machine (the kernels
# are switched in only for "cpu"): what torch.compile traces
REFERENCE_DEVICE = torch.device("meta")


def apply_threads(threads: int | str | None = "auto") -> int:
    """``torch.set_num_threads(resolve_threads(threads))`` (MKL and OpenMP follow, and so does the
    worker count of ``ctrkit.kernels.cpublas``); returns the number.

    Inter-op threads (parallel TorchScript forks; ctrkit launches none) are lowered to the same number
    when torch still allows it (only before its first parallel work), never raised."""

    n = utils.resolve_threads(threads)
    torch.set_num_threads(n)
    cpublas.set_threads(n)
    if torch.get_num_interop_threads() > n:
        with contextlib.suppress(RuntimeError):  # "cannot set ... after parallel work has started"
            torch.set_num_interop_threads(n)
    return n


def env_info(device=None, seed: int | None = None) -> dict:
    """`ctrkit.core.utils.env_info` plus the BLAS of the CPU products (``cpu_blas``) and MKL's
    reproducibility mode (``mkl_cbwr``: what `import ctrkit` set, or the user's own)."""
    return {**utils.env_info(device, seed), "cpu_blas": cpublas.backend(), "mkl_cbwr": os.environ.get("MKL_CBWR")}
