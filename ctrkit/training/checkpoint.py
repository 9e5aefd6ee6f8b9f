"""Checkpoints: the one writer and reader of `best.pt` (a trained model) and `last.pt` (the state
a killed run resumes from), the model-identity check, and what may change on resume.

best.pt: {model_name, hparams, field_sizes, fingerprint, train_config, state_dict, epoch, metrics,
scored_by}; `ctrkit mutual --init pretrained` and `load_pretrained` read it. `scored_by` (written
with the final valid/test metrics only) says how they were measured (`scored_by`).
last.pt: {format, signature, epoch, global_step, history, rng, training, train_seconds,
train_samples, peers: [{state_dict, optimizer, tracker}]} for the peers of one process: the whole
run in one process, or one rank's peer under `ctrkit.training.distributed`.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ctrkit import kernels, models
from ctrkit.kernels import for_device
from ctrkit.models import build
from ctrkit.core.utils import (CtrkitError, file_stamp, remove_stale_temp, resolve_device, sha256_file,
                               torch_save_atomic, write_json_atomic)

__all__ = ["LAST_FORMAT", "RESUMABLE", "load_checkpoint", "load_pretrained", "model_from", "check_identity",
           "model_identity", "save", "save_json", "write_best", "scored_by", "signature", "read_resume", "clean_stale_temp",
           "digest", "changed_since"]

LAST_FORMAT = "ctrkit-last-2"
# Settings that may differ between a run and its resumption: a resumed run may train longer, show
# progress differently, run on another device or evaluate in other batch sizes.
RESUMABLE = frozenset({"epochs", "progress", "device", "eval_batch_size", "check_every", "threads"})


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a torn zip or a foreign pickle
        # torch's own message runs over many lines (weights_only advice): keep its first
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CtrkitError(f"checkpoint {path}: unreadable (truncated or corrupt): {type(e).__name__}"
                          + (f": {first}" if first else "")) from None


def load_checkpoint(path: str | Path) -> dict:
    """A ctrkit best.pt / last.pt as a dict on the CPU; CtrkitError if missing, torn or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CtrkitError(f"checkpoint {path}: no such file")
    ck = _read(path)
    if not isinstance(ck, dict) or not ({"state_dict", "model_name"} <= set(ck) or "peers" in ck):
        raise CtrkitError(f"checkpoint {path}: not a ctrkit checkpoint (no model_name/state_dict)")
    return ck


def model_identity(model: nn.Module) -> tuple[str, dict]:
    """(name, hyperparameters) of a ctrkit model: what a checkpoint must match to be loaded into it."""
    return getattr(model, "name", type(model).__name__), dict(getattr(model, "hparams", {}))


def check_identity(path, ck: dict, *, fingerprint: str | None = None, field_sizes: Sequence[int] | None = None,
                   model_name: str | None = None, hparams: dict | None = None) -> None:
    """Refuse a checkpoint of another dataset or another model than the one asked for."""
    if fingerprint is not None and ck.get("fingerprint") != fingerprint:
        raise CtrkitError(f"checkpoint {path} was trained on a dataset with feature-map fingerprint "
                          f"{ck.get('fingerprint')!r}, this dataset has {fingerprint!r}; indices would not match "
                          f"(use the dataset the model was pretrained on)")
    if field_sizes is not None and list(ck.get("field_sizes", [])) != list(field_sizes):
        raise CtrkitError(f"checkpoint {path}: field sizes {ck.get('field_sizes')} differ from the dataset's "
                          f"{list(field_sizes)}")
    if model_name is not None and ck.get("model_name") != model_name:
        raise CtrkitError(f"checkpoint {path} holds a {ck.get('model_name')}, not the {model_name} asked for")
    if hparams is not None and dict(ck.get("hparams", {})) != dict(hparams):
        diff = sorted(k for k in set(hparams) | set(ck.get("hparams", {}))
                      if ck.get("hparams", {}).get(k) != hparams.get(k))
        raise CtrkitError(f"checkpoint {path}: {model_name or ck.get('model_name')} hyperparameters differ from the "
                          f"ones asked for ({', '.join(diff)})")


def load_pretrained(path_or_dir: str | Path, device: str | torch.device = "cpu", *,
                    expect_fingerprint: str | None = None, expect_model: str | None = None,
                    expect_hparams: dict | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, checkpoint metadata without the weights, plus `path`) from
    a best.pt or a `pretrain --out` folder holding one; the expectations are checked first."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "best.pt"
    return model_from(load_checkpoint(path), path, device, expect_fingerprint=expect_fingerprint,
                      expect_model=expect_model, expect_hparams=expect_hparams)


def model_from(ck: dict, path: str | Path, device: str | torch.device = "cpu", *, expect_fingerprint: str | None = None,
               expect_model: str | None = None, expect_hparams: dict | None = None) -> tuple[nn.Module, dict]:
    """`load_pretrained` of a checkpoint dict already read from `path` (left as it is: the weights
    are copied into a new model)."""
    check_identity(path, ck, fingerprint=expect_fingerprint, model_name=expect_model, hparams=expect_hparams)
    try:
        model = build(ck["model_name"], ck["field_sizes"], **ck["hparams"])
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, CtrkitError, TypeError) as e:
        raise CtrkitError(f"checkpoint {path}: weights do not fit {ck['model_name']}: "
                          f"{str(e).splitlines()[0][:200]}") from None
    for_device(model.to(resolve_device(device)).eval(), resolve_device(device))  # as Peer: CPU kernels
    meta = copy.deepcopy({k: v for k, v in ck.items() if k != "state_dict"})  # ck may be read again
    meta["path"] = str(path)
    return model, meta


def save(obj: Any, path: Path) -> None:
    """torch.save, atomically; a full disk or an unwritable folder is a one-line error naming the path."""
    try:
        torch_save_atomic(obj, path)
    except OSError as e:
        raise CtrkitError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def save_json(path: Path, obj: dict) -> None:
    """A result file, atomically; a full disk or an unwritable folder is a one-line error."""
    try:
        write_json_atomic(path, obj)
    except OSError as e:
        raise CtrkitError(f"cannot write {path}: {e.strerror or e}") from None


def write_best(path: Path, model: nn.Module, state_dict: dict, *, data, train_config: dict, epoch: int | None,
               metrics: dict, scored: dict | None = None) -> None:
    """`scored`: `scored_by(...)` of the evaluation that measured `metrics` (valid and test)."""
    name, hparams = model_identity(model)
    save({"model_name": name, "hparams": hparams, "field_sizes": list(data.field_sizes),
          "fingerprint": data.fingerprint, "train_config": train_config, "state_dict": state_dict,
          "epoch": epoch, "metrics": metrics, **({"scored_by": scored} if scored is not None else {})}, path)


# path -> (its `file_stamp`, its digest): a checkpoint reused by several calls of one process (a grid's
# baselines are looked at before and where they would train) is hashed once until it changes
_DIGESTS: dict[str, tuple[tuple, dict]] = {}


def digest(path: Path) -> dict:
    """{"bytes", "sha256"} of the file at `path` (OSError if unreadable): what result.json records of
    the best.pt its pretraining wrote (`ctrkit.experiments.runs`), to know it again before reuse."""
    st = os.stat(path)
    key, stamp = str(Path(path).resolve()), file_stamp(st)
    if key not in _DIGESTS or _DIGESTS[key][0] != stamp:
        _DIGESTS[key] = (stamp, {"bytes": st.st_size, "sha256": sha256_file(path)})
    return dict(_DIGESTS[key][1])


def changed_since(path: Path, recorded: dict) -> str | None:
    """How the file at `path` differs from its `digest` as `recorded` ("N bytes, not M", "other bytes"
    of the same size, "missing", "unreadable: ..."), or None when it is that file. The size first: a
    truncated checkpoint is told without reading it."""
    try:
        size = os.stat(path).st_size
        if size != recorded.get("bytes"):
            return f"{size} bytes, not the {recorded.get('bytes')} written"
        if digest(path)["sha256"] != recorded.get("sha256"):
            return f"other bytes than written (sha256 differs, same size {size})"
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return None


def scored_by(device, eval_batch_size: int) -> dict:
    """What a model's predictions depend on besides its weights and data: the device, the batch
    size, the machine (CPU or GPU model, torch, the BLAS and MKL's mode) and the code of the maths
    (models, kernels, prediction and metrics, by digest). A checkpoint's metrics measured under an
    equal `scored_by` on data of its fingerprint are the scores measuring it again would give, bit
    for bit (`ctrkit.experiments.pretrained.scores` reuses them)."""
    return {"device": str(device), "eval_batch_size": int(eval_batch_size), **_machine(str(device))}


@functools.lru_cache(maxsize=None)
def _machine(device: str) -> dict:
    env = kernels.env_info(device)
    # plain strings: torch.__version__ is a TorchVersion, which a weights-only load refuses
    return {"maths": _maths_digest(), **{k: None if env.get(k) is None else str(env[k])
                                         for k in ("torch", "cpu", "gpu", "cpu_blas", "mkl_cbwr")}}


@functools.lru_cache(maxsize=1)
def _maths_digest() -> str:
    here = Path(__file__).parent
    files = [*sorted(Path(models.__file__).parent.glob("*.py")), *sorted(Path(kernels.__file__).parent.glob("*.py")),
             here / "evaluation.py", here / "metrics.py", here / "precision.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def signature(run_config: dict, peers: Sequence[tuple[str, dict, dict]], fingerprint: str,
              layout: dict | None = None) -> dict:
    """What must not change between a run and its resumption: the run settings, every peer's
    (model, hyperparameters, train config) and the dataset; RESUMABLE keys left out."""
    keep = lambda d: {k: v for k, v in d.items() if k not in RESUMABLE}  # noqa: E731
    return {"config": keep(run_config), "fingerprint": fingerprint, "layout": layout or {},
            "peers": [{"model": n, "hparams": h, "train_config": keep(t)} for n, h, t in peers]}


def _differences(old: dict, new: dict) -> list[str]:
    out = [f"{k}: {old['config'].get(k)!r} -> {v!r}" for k, v in new["config"].items() if old["config"].get(k) != v]
    if old["fingerprint"] != new["fingerprint"]:
        out.append(f"dataset fingerprint: {old['fingerprint']!r} -> {new['fingerprint']!r}")
    if old["layout"] != new["layout"]:
        out.append(f"layout: {old['layout']} -> {new['layout']}")
    if [(p["model"], p["hparams"]) for p in old["peers"]] != [(p["model"], p["hparams"]) for p in new["peers"]]:
        out.append(f"peers: {[p['model'] for p in old['peers']]} -> {[p['model'] for p in new['peers']]}")
    else:
        for po, pn in zip(old["peers"], new["peers"]):
            out += [f"{pn['model']} {k}: {po['train_config'].get(k)!r} -> {v!r}"
                    for k, v in pn["train_config"].items() if po["train_config"].get(k) != v]
    return out


def read_resume(paths: Sequence[Path], sig: dict) -> dict[int, dict]:
    """{epoch: state} of the readable last-checkpoints among `paths` that belong to this very run.
    A torn file is no candidate while another one is readable; another run's file is an error."""
    found, torn = {}, []
    for path in paths:
        if not path.is_file():
            continue
        try:
            ck = load_checkpoint(path)
        except CtrkitError as e:
            torn.append(e)
            continue
        if ck.get("format") != LAST_FORMAT:
            raise CtrkitError(f"{path}: not a resume checkpoint of this ctrkit version; use --force (force=True) to "
                              f"start over")
        diff = _differences(ck["signature"], sig)
        if diff:
            raise CtrkitError(f"{path}: cannot resume with different settings ({', '.join(diff)}); "
                              f"use another --out (out_dir) or --force (force=True) to start over")
        found[int(ck["epoch"])] = ck
    if torn and not found:
        raise torn[0]
    return found


def refuse_foreign(folder: Path, names: Sequence[str]) -> None:
    """A one-line error when a file of `names` in `folder` is not one ctrkit writes there (a
    checkpoint: a torch archive whose pickle has a ctrkit checkpoint's keys; a result.json: a JSON
    object with a run's history and environment): ctrkit never overwrites what it did not write, and
    a file another tool saved as best.pt, or one damaged since, is not provably ctrkit's."""
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        if path.suffix == ".pt":
            ours = _ctrkit_archive(path)
            if ours is None:
                raise CtrkitError(f"{path}: unreadable (truncated or corrupt), so not provably ctrkit's: not "
                                  f"overwritten (remove it, or use another --out)")
        else:
            try:
                obj = json.loads(path.read_text())
            except (OSError, ValueError):
                obj = None
            ours = isinstance(obj, dict) and "history" in obj and bool({"env", "run_key", "fingerprint"} & set(obj))
        if not ours:
            raise CtrkitError(f"{path} exists and was not written by ctrkit: not overwritten (use another --out)")


# What the pickle of every checkpoint ctrkit writes names: a best.pt's keys (`write_best`), or the
# format tag of a last.pt (any version, so an older one is still known as ctrkit's: before 97acdfc a
# mutual run's was "ctrkit-mutual-last-1").
_BEST_KEYS = (b"model_name", b"hparams", b"field_sizes", b"fingerprint", b"train_config", b"state_dict")
_LAST_TAGS = (b"ctrkit-last-", b"ctrkit-mutual-last-")


def _ctrkit_archive(path: Path) -> bool | None:
    """Whether `path` is a torch archive that ctrkit wrote, read from its data.pkl's bytes (small: the
    tensors are other entries) without unpickling anything; None: a zip archive, but a damaged one."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            data = z.read(pkl) if pkl is not None else b""
    except OSError:
        return False
    except (zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return None
    return any(t in data for t in _LAST_TAGS) or all(k in data for k in _BEST_KEYS)


def clean_stale_temp(folder: Path, names: Sequence[str]) -> None:
    """Remove the temporary files a killed writer of `names` left in `folder`: a checkpoint of real
    data is hundreds of MB. Only the exact names utils.atomic_path makes (mkstemp's `.NAME.` + 8
    characters + `.tmp`), so a user's `.best.pt.backup.tmp` stays. Any age: the run's output folder
    is its own while it runs (a second run there at once would clash anyway)."""
    remove_stale_temp(folder, names)
