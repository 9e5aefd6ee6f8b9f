"""Model registry: ``build(name, fields, **hparams)`` for LR, FM, DeepFM, DCN, PNN (IPNN), FiBiNET,
``register(cls)`` for a model of your own, and the models installed packages declare under the
``ctrkit.models`` entry-point group (loaded at the first name lookup).

Every model maps ``X`` int32/int64 ``[B, F]`` (per-field local indices) to logits float32 ``[B]``,
owns no optimizer/device/loop, and carries ``.name`` and ``.hparams`` so that
``build(m.name, m.field_sizes, **m.hparams)`` rebuilds it (the checkpoint contract).
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import warnings
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
# The entry-point group an installed package declares its models in (pyproject.toml:
# [project.entry-points."ctrkit.models"] MyNet = "mypkg.nets:MyNet"); the CLI's help reads it too.
ENTRY_POINTS = "ctrkit.models"
# name -> class of each entry point registered in this process; None until the group is loaded
_PLUGINS: dict[str, type[CTRModel]] | None = None
# lower-case name -> the one-line error of the entry point that claims it and cannot be registered
_BROKEN: dict[str, str] = {}


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
    your earlier class (a notebook cell run twice, or an installed package's); a built-in's name is
    refused. Usable as a decorator. It lasts for this process: worker processes import the class by
    its module (`reference`), the CLI knows a package's entry points only (`ENTRY_POINTS`)."""
    problem = _name_problem(getattr(cls, "name", None), cls)
    if problem:
        raise CtrkitError(f"models.register: {problem}")
    MODELS[cls.name] = cls
    return cls


def is_built_in(name: str) -> bool:
    """Whether model `name` (any case or alias) is one of ctrkit's own, not one `register`ed."""
    name = canonical_name(name)
    return _BUILT_IN.get(name) is MODELS[name]


def _load_plugins() -> None:
    """Register the classes of the `ENTRY_POINTS` group, once per process, at its first name lookup:
    not at import (`import ctrkit` stays fast, and a broken package fails where a model is looked
    up), and every process (the CLI, a worker) finds them itself. Each is checked as `register`
    checks; a class this process `register`ed under the same name stays (as a re-registration
    replaces). A broken entry point costs only its own name: one warning line naming it and its
    distribution, and a lookup of that name is the same line as an error, at every lookup until it
    is fixed or uninstalled; every other model, built-in or installed, works (one stale package must
    not stop `reproduce`). A name two entry points claim is neither's."""
    global _PLUGINS, _BROKEN
    if _PLUGINS is not None:
        return
    from importlib import metadata  # here: ~50 ms that a process which looks up no model never pays

    found: dict[str, type[CTRModel]] = {}  # lower-case name -> class
    where: dict[str, str] = {}  # lower-case name -> the entry point that claimed it
    broken: dict[str, str] = {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINTS), key=lambda e: (e.name, e.value)):
        said, cls, problem = _entry_point(ep)
        key = ep.name.lower()
        if problem is None and key in where and found.get(key) is not cls:
            problem = f"{ep.name!r} is claimed by {where[key]} too (names are case-insensitive)"
            found.pop(key, None)
        where.setdefault(key, said.removeprefix("models: "))
        if problem:
            broken[key] = f"{said}: {problem}"
            warnings.warn(broken[key], stacklevel=2)
        elif key not in broken:
            found[key] = cls
    taken = {k.lower() for k in _BUILT_IN} | {a.lower() for a in _ALIASES}
    _BROKEN = {k: why for k, why in broken.items() if k not in taken}  # a built-in's name stays the built-in's
    for cls in found.values():
        if MODELS.get(cls.name) is None:
            MODELS[cls.name] = cls
    _PLUGINS = {cls.name: cls for cls in found.values()}


def _entry_point(ep: Any) -> tuple[str, Any, str | None]:
    """(how to name entry point `ep`, its class or None, why it cannot be registered or None)."""
    dist = getattr(ep, "dist", None)
    said = (f"models: entry point {ep.name} = {ep.value} of distribution "
            f"{getattr(dist, 'name', None) or '(unnamed)'} {getattr(dist, 'version', None) or ''}".rstrip())
    try:
        cls = ep.load()
    except Exception as e:  # noqa: BLE001 - whatever the package raises, one line naming it
        return said, None, f"cannot load it: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return said, cls, _name_problem(ep.name, cls)


def reference(name: str) -> tuple[str, str, str] | None:
    """(name, module, qualname) by which a fresh process (a worker) imports model `name`'s class and
    `register_reference`s it; None for a model every process knows itself (built-in, entry point). A
    class that cannot be imported so is a one-line CtrkitError saying why."""
    name = canonical_name(name)
    cls = MODELS[name]
    if _BUILT_IN.get(name) is cls or (_PLUGINS or {}).get(name) is cls:
        return None
    module, qualname = cls.__module__, cls.__qualname__
    if "<locals>" in qualname:
        why = f"is defined inside a function ({module}.{qualname})"
    elif module == "__main__" and not _main_importable():
        why = "is defined in a notebook cell or an interactive session (__main__)"
    elif _lookup(sys.modules.get(module), qualname) is not cls:
        why = f"is not the class {module}.{qualname} names (made by type(), or that name was redefined since)"
    else:
        return name, module, qualname
    raise CtrkitError(f"{name} is registered in this process only and its class {why}, so another process "
                      f"cannot import it")


def _main_importable() -> bool:
    """Whether a process started by spawn/forkserver imports this process's `__main__` (as
    `__mp_main__`, also `__main__` there): a script run by path or `python -m` is, an interactive
    session or a notebook kernel is not (multiprocessing.spawn's own rule)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:
        return spec_name != "__main__" and not spec_name.endswith(".__main__")
    path = getattr(main, "__file__", None)
    return path is not None and os.path.splitext(os.path.basename(path))[0] != "ipython"


def _lookup(owner: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        owner = getattr(owner, part, None)
    return owner


def register_reference(ref: tuple[str, str, str]) -> None:
    """In a fresh process: import the class of a `reference` and `register` it (nothing when it is
    registered already, so a warm worker takes the same reference with every job). One-line
    CtrkitError naming the model and module when the import fails."""
    name, module, qualname = ref
    try:
        cls = _lookup(importlib.import_module(module), qualname)
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything on import
        raise CtrkitError(f"model {name}: cannot import its class {qualname} from module {module}: "
                          f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}") from None
    if cls is None:
        raise CtrkitError(f"model {name}: module {module} has no class {qualname} here (defined under the "
                          f"`if __name__ == \"__main__\":` guard? define it above the guard)")
    if MODELS.get(name) is not cls:
        problem = _name_problem(name, cls)
        if problem:
            raise CtrkitError(f"model {name} ({module}.{qualname}): {problem}")
        MODELS[name] = cls


def _check_registry() -> None:
    """`MODELS` edited by hand is checked as `register` checks (one lookup per call: a few entries);
    the installed packages' models are registered first (`_load_plugins`)."""
    _load_plugins()
    seen: dict[str, str] = {}
    for key, cls in MODELS.items():
        problem = _name_problem(key, cls)
        if problem is None and key.lower() in seen:
            problem = f"{key!r} and {seen[key.lower()]!r} differ only in case"
        if problem:
            raise CtrkitError(f"models.MODELS[{key!r}]: {problem}; add models with ctrkit.models.register(cls)")
        seen[key.lower()] = key


def names() -> list[str]:
    """Every model this process knows, by name: the built-in ones, those `register`ed and those of the
    installed packages' entry points (loaded here if no lookup has yet): what a list of models offers."""
    _check_registry()
    return list(MODELS)


def canonical_name(name: str) -> str:
    """Case-insensitive model name (or alias) -> canonical registry name; CtrkitError if unknown."""
    _check_registry()
    lookup = {k.lower(): k for k in MODELS} | {k.lower(): v for k, v in _ALIASES.items()}
    if not isinstance(name, str) or name.lower() not in lookup:
        if isinstance(name, str) and name.lower() in _BROKEN:  # an installed package's, that failed
            raise CtrkitError(_BROKEN[name.lower()])
        raise CtrkitError(f"unknown model {name!r}; valid: {', '.join(MODELS)} (a model of your own: "
                          f"ctrkit.models.register(cls) first, in this process, or a package's "
                          f"{ENTRY_POINTS!r} entry point: docs, Your own model)"
                          f"{did_you_mean(name, [*MODELS, *_ALIASES])}")
    return lookup[name.lower()]


def hparam_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters model `name` accepts, with their defaults."""
    sig = inspect.signature(MODELS[canonical_name(name)].__init__)
    return {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
            for k, p in sig.parameters.items() if k not in ("self", "fields")}


def build(name: str, fields: Any, **hparams: Any) -> CTRModel:
    """Build model `name` for `fields` (list of vocab sizes, feature_map dict or CTRData).

    Unknown hyperparameters raise CtrkitError listing the valid ones (checked before construction);
    a value the class cannot take (a TypeError or ValueError of its constructor) is one line too.
    """
    cls = MODELS[canonical_name(name)]
    valid = hparam_defaults(cls.name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise CtrkitError(f"{cls.name}: unknown hyperparameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(valid) or '(none)'}")
    try:
        return cls(field_sizes_of(fields), **hparams)
    except (TypeError, ValueError) as e:  # a value of the wrong kind (hidden="big"): one line naming the call
        given = ", ".join(f"{k}={v!r}" for k, v in hparams.items())
        raise CtrkitError(f"{cls.name}({given}): cannot build it: {type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0]}") from None


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


__all__ = ["MODELS", "ENTRY_POINTS", "names", "register", "reference", "register_reference", "is_built_in", "build",
           "embedding_parameters", "net_parameters", "hparam_defaults", "canonical_name", "CTRModel",
           "LR", "FM", "DeepFM", "DCN", "PNN", "FiBiNET"]
