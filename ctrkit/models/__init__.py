"""Model registry: ``build(name, fields, **hparams)`` for LR, FM, DeepFM, DCN, PNN (IPNN), FiBiNET.

Every model maps ``X`` int32/int64 ``[B, F]`` (per-field local indices) to logits float32 ``[B]``,
owns no optimizer/device/loop, and carries ``.name`` and ``.hparams`` so that
``build(m.name, m.field_sizes, **m.hparams)`` rebuilds it (the checkpoint contract).
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ctrkit.models import layers
from ctrkit.models.base import CTRModel, field_sizes_of
from ctrkit.models.dcn import DCN
from ctrkit.models.deepfm import DeepFM
from ctrkit.models.fibinet import FiBiNET
from ctrkit.models.fm import FM
from ctrkit.models.lr import LR
from ctrkit.models.pnn import PNN
from ctrkit.core.utils import CtrkitError, did_you_mean

MODELS: dict[str, type[CTRModel]] = {c.name: c for c in (LR, FM, DeepFM, DCN, PNN, FiBiNET)}
_ALIASES = {"IPNN": "PNN"}  # the BARS leaderboard calls our PNN "IPNN"


def canonical_name(name: str) -> str:
    """Case-insensitive model name (or alias) -> canonical registry name; CtrkitError if unknown."""
    lookup = {k.lower(): k for k in MODELS} | {k.lower(): v for k, v in _ALIASES.items()}
    if not isinstance(name, str) or name.lower() not in lookup:
        raise CtrkitError(f"unknown model {name!r}; valid: {', '.join(MODELS)}"
                          f"{did_you_mean(name, [*MODELS, *_ALIASES])}")
    return lookup[name.lower()]


def hparam_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters model `name` accepts, with their defaults."""
    sig = inspect.signature(MODELS[canonical_name(name)].__init__)
    return {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
            for k, p in sig.parameters.items() if k not in ("self", "fields")}


def build(name: str, fields: Any, **hparams: Any) -> CTRModel:
    """Build model `name` for `fields` (list of vocab sizes, feature_map dict or CTRData).

    Unknown hyperparameters raise CtrkitError listing the valid ones (checked before construction).
    """
    cls = MODELS[canonical_name(name)]
    valid = hparam_defaults(cls.name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise CtrkitError(f"{cls.name}: unknown hyperparameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(valid) or '(none)'}")
    return cls(field_sizes_of(fields), **hparams)


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The embedding tables' parameters (the field embeddings and the first-order weights, as in
    FuxiCTR where both are FeatureEmbedding modules) -- the target of the embedding regularizer.
    Every other parameter (MLP, cross, bilinear, SENET, biases, batch norm) is a net parameter."""
    return [m.weight for m in model.modules() if isinstance(m, layers.FeatureEmbedding)]


def net_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters that are not in ``embedding_parameters(model)``."""
    emb = {id(p) for p in embedding_parameters(model)}
    return [p for p in model.parameters() if id(p) not in emb]


__all__ = ["MODELS", "build", "embedding_parameters", "net_parameters", "hparam_defaults",
           "canonical_name", "CTRModel", "LR", "FM", "DeepFM", "DCN", "PNN", "FiBiNET"]
