"""Base class and argument checks shared by the model files (kept out of ``__init__`` to avoid an
import cycle: ``ctrkit.models`` imports every model file)."""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ctrkit.models import layers
from ctrkit.core.utils import CtrkitError, as_float, as_int, as_number


def field_sizes_of(fields: Any) -> list[int]:
    """Field sizes from a list of ints, a feature_map dict (``{"fields": [{"vocab_size": ..}]}``) or
    anything with ``.field_sizes`` (CTRData)."""
    if hasattr(fields, "field_sizes"):
        fields = fields.field_sizes
    elif isinstance(fields, dict):
        if "fields" not in fields:
            raise CtrkitError("fields: a feature_map dict needs a 'fields' list of {name, vocab_size}")
        try:
            fields = [f["vocab_size"] for f in fields["fields"]]
        except (TypeError, KeyError) as e:
            raise CtrkitError(f"fields: feature_map entry without vocab_size ({e})") from None
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Iterable):
        raise CtrkitError(f"fields must be a list of vocab sizes, a feature_map dict or CTRData, "
                          f"got {type(fields).__name__}")
    fields = list(fields)
    sizes = [as_int(s) for s in fields]  # the one integer rule: numpy ints yes; bool, 10.0, "10" no
    if not sizes or any(s is None or s < 1 for s in sizes):
        raise CtrkitError(f"fields: need at least one field and every vocab size a positive int, got {list(fields)}")
    return sizes


def check_int(name: str, value: Any, minimum: int) -> int:
    n = as_int(value)
    if n is None or n < minimum:
        raise CtrkitError(f"hyperparameter {name} must be an int >= {minimum}, got {value!r}")
    return n


def check_units(value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise CtrkitError(f"hyperparameter hidden_units must be a list of positive ints, got {value!r}")
    return [check_int("hidden_units[]", v, 1) for v in value]


def check_dropout(value: Any) -> float:
    p = as_float(value)
    if p is None or not 0 <= p < 1:
        raise CtrkitError(f"hyperparameter net_dropout must be a float in [0, 1), got {value!r}")
    return p


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise CtrkitError(f"hyperparameter {name} must be true or false, got {value!r}")
    return value


def check_activation(name: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in layers.ACTIVATIONS:
        raise CtrkitError(f"hyperparameter {name} must be one of {sorted(layers.ACTIVATIONS)}, got {value!r}")
    return value


def check_deep_args(embedding_dim: Any, hidden_units: Any, hidden_activations: Any, net_dropout: Any,
                    batch_norm: Any) -> list[int]:
    """The embedding + MLP arguments every deep model shares (so peers share their semantics);
    returns hidden_units as a list of ints."""
    check_int("embedding_dim", embedding_dim, 1)
    units = check_units(hidden_units)
    check_activation("hidden_activations", hidden_activations)
    check_dropout(net_dropout)
    check_bool("batch_norm", batch_norm)
    return units


def _plain(value: Any) -> Any:
    """A hyperparameter as the checkpoint records it (JSON): numbers as Python's (np.int64(16) -> 16,
    checked by `check_int` already), sequences as lists; bools and names as given."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    n = as_number(value)
    return value if n is None else n


class CTRModel(nn.Module):
    """Common surface of every ctrkit model: ``name``, ``field_sizes``, ``hparams`` (complete, defaults
    filled, JSON-able) and ``forward(X int32/int64 [B, F]) -> logits float32 [B]``.

    ``presets``: a model of your own's presets by name ("smoke", "quick", "full"; not "bars", the BARS
    leaderboard's table), each ``{"model": {hyperparameters}, "train": {training settings}}``: what
    training it by name starts from (``ctrkit.training.presets.get`` reads and checks them). The
    built-in models keep theirs in ``ctrkit/training/presets.json``."""

    name: str = ""
    # read-only: `MyNet.presets["smoke"] = ...` on a class without its own dict would edit every model's
    presets: ClassVar[Mapping[str, Mapping[str, dict]]] = MappingProxyType({})

    def __init__(self, fields: Any, hparams: dict):
        super().__init__()
        self.field_sizes = field_sizes_of(fields)
        self.num_fields = len(self.field_sizes)
        # deep copy + list() so later mutation of the caller's lists cannot change the record
        self.hparams = {k: _plain(v) for k, v in copy.deepcopy(hparams).items()}

    def check_input(self, X: torch.Tensor) -> None:
        """Shape and dtype: what is known without reading the batch. The index range is checked
        once per split where the data is served (``ctrkit.data.CTRData.tensors``): here it would
        read every batch back to the host and break the model's graph into pieces."""
        if X.dim() != 2 or X.shape[1] != self.num_fields:
            raise CtrkitError(f"{self.name}: input must be [batch, {self.num_fields}] field indices, "
                              f"got shape {tuple(X.shape)}")
        if X.dtype not in (torch.int32, torch.int64):
            raise CtrkitError(f"{self.name}: input must be int32 or int64 field indices, got {X.dtype}")

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, vocab={sum(self.field_sizes)}, hparams={self.hparams}"
