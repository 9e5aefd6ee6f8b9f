"""Mixed precision: whether a device gets bf16 autocast (`resolve_amp`) and the autocast context."""
from __future__ import annotations

import contextlib
import warnings

import torch

from ctrkit.core.errors import CtrkitError
from ctrkit.core.utils import cpuinfo

__all__ = ["AMP_CHOICES", "resolve_amp", "amp_context"]

AMP_CHOICES = ("auto", "bf16", "off")


def _cpu_bf16_flags() -> set[str]:
    """The CPU's bf16 instruction sets among amx_bf16 and avx512_bf16 (empty: none, or no /proc)."""
    return {"amx_bf16", "avx512_bf16"} & set((cpuinfo("flags") or "").split())


def _cpu_has_amx_bf16() -> bool:
    return "amx_bf16" in _cpu_bf16_flags()


_WARNED_EMULATED_BF16 = False


def _warn_emulated_bf16() -> None:
    global _WARNED_EMULATED_BF16
    if not _WARNED_EMULATED_BF16:
        _WARNED_EMULATED_BF16 = True
        warnings.warn("amp=bf16 on a CPU without bf16 instructions (neither amx_bf16 nor avx512_bf16): its bf16 "
                      "products are emulated, several times slower than fp32 (FiBiNET trained ~8x slower on an "
                      "AMD Zen 3, bench/results/); amp=auto picks fp32 here", stacklevel=3)


def resolve_amp(device: torch.device | str, amp: str) -> torch.dtype | None:
    """bf16 autocast dtype or None. auto: bf16 on CUDA with bf16 support (the GPU default: with the
    launches gone in graph mode the matmuls are the step, measured in bench/gpu_check.py) and on CPUs
    with AMX (where bf16 matmuls have hardware support); fp32 master weights either way (autocast
    casts copies, the parameters and Adam's moments stay fp32)."""
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise CtrkitError(f"amp: expected one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = _cpu_has_amx_bf16()
    else:
        supported = False
    if amp == "bf16":
        if device.type == "cuda" and not supported:
            raise CtrkitError(f"amp=bf16: the CUDA device {device} has no bf16 support; use amp=off")
        if device.type == "cpu" and not _cpu_bf16_flags():
            _warn_emulated_bf16()
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def amp_context(device: torch.device | str, dtype: torch.dtype | None, *, cache: bool = True):
    """Autocast to `dtype` on `device`'s type (None: fp32, no autocast). `cache=False` for a step
    captured as a CUDA graph: autocast's cache of bf16 weight copies must not outlive the capture."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=cache)
