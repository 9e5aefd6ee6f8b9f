"""Model registry: ``build(name, fields, **hparams)`` for LR, FM, DeepFM, DCN, PNN (IPNN), FiBiNET,
and ``register(cls)`` for a model of your own.

Every model maps ``X`` int32/int64 ``[B, F]`` (per-field local indices) to logits float32 ``[B]``,
owns no optimizer/device/loop, and carries ``.name`` and ``.hparams`` so that
``build(m.name, m.field_sizes, **m.hparams)`` rebuilds it (the checkpoint contract).
"""
from __future__ import annotations

import inspect
import re
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
_BUILT_IN = dict(MODELS)
_ALIASES = {"IPNN": "PNN"}  # the BARS leaderboard calls our PNN "IPNN"
# a name is a folder (runs/<dataset>/seed<S>/<name>) and a peer label; "_2" is the label of a model's
# second copy in a run (DeepFM_2), and "+" / "," separate names in peer sets and CLI lists
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _name_problem(key: Any, cls: Any) -> str | None:
    """Why `cls` cannot be the registry's entry `key`, or None."""
    if not (isinstance(cls, type) and issubclass(cls, CTRModel)):
        what = (f"the instance {type(cls).__name__}(...)" if isinstance(cls, nn.Module) else
                f"the class {cls.__name__}, a plain nn.Module" if isinstance(cls, type) and issubclass(cls, nn.Module)
                else repr(cls))
        return f"expected a subclass of ctrkit.models.CTRModel (the class, not an instance), got {what}"
    name = cls.name
    if not isinstance(name, str) or not _NAME.fullmatch(name) or re.search(r"_\d+$", name):
        return (f"{cls.__name__}.name = {name!r}: set a class attribute `name`, letters, digits and _ "
                f"(starting with a letter, not ending in _<digits>, which labels a model's copies)")
    if key != name:
        return f"registered as {key!r} but its name is {name!r}: the key must be the class's `name`"
    taken = {k.lower(): k for k in _BUILT_IN} | {a.lower(): k for a, k in _ALIASES.items()}
    if name.lower() in taken and _BUILT_IN.get(name) is not cls:
        return (f"{name!r} is the built-in {taken[name.lower()]}'s name (names are case-insensitive; checkpoints "
                f"and results are matched by name): give your model another")
    return None


def register(cls: type[CTRModel]) -> type[CTRModel]:
    """Add a model class of your own under its ``name``: `build`, the checkpoints, `runs` (finetuning
    from checkpoints), the tables and the widget then know it. Registering the same name again replaces
    your earlier class (a notebook cell run twice); a built-in's name is refused. Usable as a decorator."""
    problem = _name_problem(getattr(cls, "name", None), cls)
    if problem:
        raise CtrkitError(f"models.register: {problem}")
    MODELS[cls.name] = cls
    return cls


def is_built_in(name: str) -> bool:
    """Whether model `name` (any case or alias) is one of ctrkit's own, not one `register`ed."""
    name = canonical_name(name)
    return _BUILT_IN.get(name) is MODELS[name]


def _check_registry() -> None:
    """`MODELS` edited by hand is checked as `register` checks (one lookup per call: a few entries)."""
    seen: dict[str, str] = {}
    for key, cls in MODELS.items():
        problem = _name_problem(key, cls)
        if problem is None and key.lower() in seen:
            problem = f"{key!r} and {seen[key.lower()]!r} differ only in case"
        if problem:
            raise CtrkitError(f"models.MODELS[{key!r}]: {problem}; add models with ctrkit.models.register(cls)")
        seen[key.lower()] = key


def canonical_name(name: str) -> str:
    """Case-insensitive model name (or alias) -> canonical registry name; CtrkitError if unknown."""
    _check_registry()
    lookup = {k.lower(): k for k in MODELS} | {k.lower(): v for k, v in _ALIASES.items()}
    if not isinstance(name, str) or name.lower() not in lookup:
        raise CtrkitError(f"unknown model {name!r}; valid: {', '.join(MODELS)} (a model of your own: "
                          f"ctrkit.models.register(cls) first, in this process)"
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
    FuxiCTR where both are FeatureEmbedding modules; in a model of your own also torch's
    nn.Embedding / nn.EmbeddingBag tables) -- the target of the embedding regularizer.
    Every other parameter (MLP, cross, bilinear, SENET, biases, batch norm) is a net parameter."""
    return [m.weight for m in model.modules() if isinstance(m, (layers.FeatureEmbedding, nn.Embedding,
                                                                   nn.EmbeddingBag))]


def net_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters that are not in ``embedding_parameters(model)``."""
    emb = {id(p) for p in embedding_parameters(model)}
    return [p for p in model.parameters() if id(p) not in emb]


__all__ = ["MODELS", "register", "is_built_in", "build", "embedding_parameters", "net_parameters", "hparam_defaults",
           "canonical_name", "CTRModel", "LR", "FM", "DeepFM", "DCN", "PNN", "FiBiNET"]
