"""Optional dependencies: import a module of a pip extra, or say in one line which extra to install.

The library layers (data, models, training, experiments, analysis tables) need only the base
dependencies; the notebook stack (`notebooks`: jupyterlab, papermill, ipykernel, ipywidgets,
seaborn, markdown) and Hugging Face `datasets` (`hub`) are extras, reached where they are used through
`require` (imports) or `check` (finds without importing), so a missing one is a `CtrkitError` (the
CLI's one line, exit 2), not a traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ctrkit.core.errors import CtrkitError

__all__ = ["EXTRAS", "require", "check", "missing"]

# extra -> the modules ctrkit reaches through it (the pip extra also brings jupyterlab and ipykernel).
EXTRAS: dict[str, tuple[str, ...]] = {
    "notebooks": ("papermill", "ipywidgets", "seaborn", "markdown"),
    "hub": ("datasets",),
}


def _error(extra: str, what: str, name: str, why: str = "is not installed") -> CtrkitError:
    return CtrkitError(f"{what} needs the '{extra}' extra ({name} {why}): pip install 'ctrkit[{extra}]'")


def _known(extra: str, modules: tuple[str, ...]) -> None:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; valid: {', '.join(EXTRAS)}")
    if not modules:
        raise ValueError("name at least one module")


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a None in sys.modules (the module was blocked)
        return False


def missing(*modules: str) -> list[str]:
    """The top-level `modules` that cannot be found, in order (nothing is imported)."""
    return [m for m in modules if not _findable(m)]


def check(extra: str, *modules: str, what: str | None = None) -> None:
    """CtrkitError naming `extra` unless every one of `modules` can be found; imports nothing, so a
    package can check at its top what its modules import later without paying for the imports."""
    _known(extra, modules)
    gone = missing(*modules)
    if gone:
        verb = "is not installed" if len(gone) == 1 else "are not installed"
        raise _error(extra, what or gone[0], ", ".join(gone), verb)


def require(extra: str, *modules: str, what: str | None = None) -> ModuleType | tuple[ModuleType, ...]:
    """Import `modules` (of pip extra `extra`) and return them: one module, or a tuple for several.

    A failing import raises CtrkitError "<what> needs the '<extra>' extra (<module> is not installed):
    pip install 'ctrkit[<extra>]'"; `what` defaults to the module's name.
    """
    _known(extra, modules)
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as e:
            # The module itself absent is the extra's absence; a dependency missing inside it is named.
            why = "is not installed" if getattr(e, "name", None) in (None, name) else f"cannot be imported: {e}"
            raise _error(extra, what or name, name, why) from None
    return loaded[0] if len(loaded) == 1 else tuple(loaded)
