"""Base class and argument checks shared by the model files (kept out of ``__init__`` to avoid an
import cycle: ``ctrkit.models`` imports every model file)."""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from ctrkit.models import layers
from ctrkit.core.utils import CtrkitError


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
    try:
        sizes = [int(s) for s in fields]
    except (TypeError, ValueError):
        raise CtrkitError(f"fields must be a list of vocab sizes, a feature_map dict or CTRData, "
                          f"got {type(fields).__name__}") from None
    if not sizes or any(s < 1 for s in sizes) or any(int(s) != s for s in fields):
        raise CtrkitError(f"fields: need at least one field and every vocab size a positive int, got {list(fields)}")
    return sizes


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CtrkitError(f"hyperparameter {name} must be an int >= {minimum}, got {value!r}")
    return value


def check_units(value: Any) -> list[int]:
    if isinstance(value, int) or not isinstance(value, Sequence) or isinstance(value, str):
        raise CtrkitError(f"hyperparameter hidden_units must be a list of positive ints, got {value!r}")
    return [check_int("hidden_units[]", v, 1) for v in value]


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise CtrkitError(f"hyperparameter net_dropout must be a float in [0, 1), got {value!r}")
    return float(value)


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


class CTRModel(nn.Module):
    """Common surface of every ctrkit model: ``name``, ``field_sizes``, ``hparams`` (complete, defaults
    filled, JSON-able) and ``forward(X int32/int64 [B, F]) -> logits float32 [B]``."""

    name: str = ""

    def __init__(self, fields: Any, hparams: dict):
        super().__init__()
        self.field_sizes = field_sizes_of(fields)
        self.num_fields = len(self.field_sizes)
        # deep copy + list() so later mutation of the caller's lists cannot change the record
        self.hparams = {k: list(v) if isinstance(v, (list, tuple)) else v
                        for k, v in copy.deepcopy(hparams).items()}

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
