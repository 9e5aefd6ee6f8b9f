"""Orchestration above the trainer: a run described once (`RunSpec`, keyword-only), validated once,
keyed once; names -> peers (built from a preset or loaded from checkpoints), the store record.

    spec = RunSpec(peers=["DeepFM", "DCN"], init="pretrained", ckpt_dir="runs/criteo/seed2021")
    records, skipped = runs.execute(spec, data, store="store.jsonl")

`execute` is what the CLI, `ctrkit.experiments`, the widget and the distributed runner call; a new
knob is a RunSpec field (and the code that uses it), nothing else. `pretrain` is the same for one
baseline model (`ctrkit pretrain`, `experiments.pretrain_baselines`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ctrkit.training import checkpoint, presets
from ctrkit.training.losses import check_divergence, check_weight
from ctrkit.models import build, canonical_name, hparam_defaults
from ctrkit.training.mutual import MODES, MutualConfig, mutual_fit
from ctrkit.experiments.store import ResultsStore
from ctrkit.training.loop import LocalExchange, TrainConfig, fit, predict, scores
from ctrkit.core.utils import CtrkitError, resolve_device, seed_everything

__all__ = ["INITS", "MODES", "RunSpec", "run", "execute", "records", "pretrain", "peer_labels", "split_label", "checkpoint_path",
           "seed_dir", "run_key", "summary", "apply_overrides"]

INITS = ("scratch", "pretrained")
TAGS = (None, "exploration")
# Train-config keys that change how a run goes, not what it gives: not part of its key.
_NOT_RESULT = {"progress", "device", "threads", "eval_batch_size", "check_every"}


def run_key(**fields) -> str:
    """Stable id of a run's settings (sorted JSON -> sha1)."""
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def peer_labels(models: Sequence[str]) -> list[str]:
    """Unique labels within a run: DeepFM, DCN, DeepFM_2 (a repeated model gets its occurrence)."""
    seen: Counter = Counter()
    out = []
    for m in models:
        seen[m] += 1
        out.append(m if seen[m] == 1 else f"{m}_{seen[m]}")
    return out


def split_label(label: str) -> tuple[str, int]:
    """"DeepFM_2" -> ("DeepFM", 2); "DeepFM" -> ("DeepFM", 1)."""
    name, _, k = label.rpartition("_")
    if name and k.isdigit():
        return canonical_name(name), int(k)
    return canonical_name(label), 1


def checkpoint_path(ckpt_dir: str | Path, label: str) -> Path:
    """`ckpt_dir/<label>/best.pt`: one `pretrain --out` folder per model (DeepFM_2 for a repeat)."""
    return Path(ckpt_dir) / label / "best.pt"


def seed_dir(ckpt_dir: str | Path, seed: int) -> Path:
    """Where the baselines of one seed live: pass it as `ctrkit mutual --ckpt-dir`."""
    return Path(ckpt_dir) / f"seed{seed}"


def apply_overrides(name: str, hparams: dict, train: dict, overrides: dict) -> tuple[dict, dict]:
    """`--set key=value` pairs onto a model's hyperparameters and train config; unknown keys listed."""
    hparams, train = dict(hparams), dict(train)
    valid_model = hparam_defaults(name)
    for key, value in overrides.items():
        if key in TrainConfig.keys():
            train[key] = value
        elif key in valid_model:
            hparams[key] = value
        else:
            raise CtrkitError(f"--set {key}: unknown key; valid: train config {', '.join(TrainConfig.keys())}; "
                              f"{name} hyperparameters {', '.join(sorted(valid_model))}")
    return hparams, train


@dataclasses.dataclass(kw_only=True, frozen=True)
class RunSpec:
    """Everything that defines one run of N peers. `epochs` None: the presets' (scratch) or
    `finetune_epochs` (pretrained). Pretrained peers come from `ckpt_dir/<label>/best.pt`, finetuned
    at `finetune_lr_scale` x their pretraining lr, monitoring `finetune_monitor`; their pretrained
    weights count as epoch 0. `overrides`: `--set` keys of the train config (every peer) or the
    model (scratch peers). `tag` "exploration" keeps a run out of the paper's tables."""

    peers: tuple[str, ...]
    init: str = "scratch"
    mode: str = "mutual"
    weight: float = 1.0
    divergence: str = "mse"
    warmup_steps: int = 0
    epochs: int | None = None
    finetune_lr_scale: float = 0.1
    finetune_epochs: int = 2
    finetune_monitor: str = "AUC-logloss"
    seed: int = 2021
    preset: str = "quick"
    amp: str = "auto"
    batch_size: int | None = None
    overrides: tuple = ()
    ckpt_dir: str | None = None
    tag: str | None = None
    device: str = "auto"
    threads: Any = "auto"
    progress: bool = True

    def __post_init__(self):
        peers = self.peers.split(",") if isinstance(self.peers, str) else self.peers
        object.__setattr__(self, "peers", tuple(peer_labels([canonical_name(p.strip()) for p in peers if p.strip()])))
        if isinstance(self.overrides, dict):
            object.__setattr__(self, "overrides", tuple(sorted(self.overrides.items())))
        if self.ckpt_dir is not None:
            object.__setattr__(self, "ckpt_dir", str(Path(self.ckpt_dir).resolve()))
        self.validate()

    @property
    def names(self) -> list[str]:
        return [split_label(p)[0] for p in self.peers]

    @property
    def from_checkpoint(self) -> list[bool]:
        """Which peers are loaded: all when pretrained; the kd teacher (peer 0) always."""
        return [self.init == "pretrained" or (self.mode == "kd" and k == 0) for k in range(len(self.peers))]

    def validate(self) -> None:
        if self.init not in INITS:
            raise CtrkitError(f"unknown init {self.init!r}; valid: {', '.join(INITS)}")
        if self.mode not in MODES:
            raise CtrkitError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        check_weight(self.weight)
        check_divergence(self.divergence)
        need = 1 if self.mode == "alone" else 2
        if len(self.peers) < need:
            raise CtrkitError(f"--peers: mode {self.mode!r} needs at least {need} peers, got {len(self.peers)} "
                              f"({','.join(self.peers)})")
        if self.mode == "ensemble" and self.init != "pretrained":
            raise CtrkitError("mode 'ensemble' averages pretrained peers: use --init pretrained with --ckpt-dir")
        if any(self.from_checkpoint) and self.ckpt_dir is None:
            raise CtrkitError(f"init {self.init!r} / mode {self.mode!r} needs --ckpt-dir (one `pretrain --out` folder "
                              f"per model)")
        if not (isinstance(self.finetune_lr_scale, (int, float)) and 0 < self.finetune_lr_scale < math.inf):
            raise CtrkitError(f"finetune_lr_scale: expected a finite number > 0, got {self.finetune_lr_scale!r}")
        for name in ("finetune_epochs", "warmup_steps", "seed") + (("epochs",) if self.epochs is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if "epochs" in name else 0):
                raise CtrkitError(f"{name}: expected an int >= {1 if 'epochs' in name else 0}, got {v!r}")
        if self.tag not in TAGS:
            raise CtrkitError(f"tag: expected one of {TAGS}, got {self.tag!r}")

    def settings(self) -> dict:
        """Every setting that changes a result, as stored; what is irrelevant to this run is None."""
        loads = any(self.from_checkpoint)
        return {"peers": list(self.peers), "init": self.init, "mode": self.mode,
                "weight": 0.0 if self.mode == "alone" else float(self.weight), "divergence": self.divergence,
                "warmup_steps": self.warmup_steps, "epochs": self.epochs, "preset": self.preset, "amp": self.amp,
                "batch_size": self.batch_size, "overrides": dict(self.overrides), "tag": self.tag,
                "finetune_lr_scale": self.finetune_lr_scale if loads else None,
                "finetune_epochs": self.finetune_epochs if self.init == "pretrained" else None,
                "finetune_monitor": self.finetune_monitor if loads else None,
                "ckpt_dir": self.ckpt_dir if loads else None}

    def key(self, fingerprint: str) -> str:
        """The store's skip-if-done key: the data, every setting, the seed."""
        return run_key(fingerprint=fingerprint, seed=self.seed, **self.settings())

    def settings_key(self, fingerprint: str) -> str:
        """The same without the seed and the per-seed checkpoint folder: runs that tables may pair by seed."""
        s = {**self.settings(), "ckpt_dir": None}
        return run_key(fingerprint=fingerprint, **s)


# ---------------------------------------------------------------- building the peers


def _check_checkpoints(spec: RunSpec, data, labels: Sequence[str]) -> None:
    """Every checkpoint a run loads checked (exists, readable, this dataset, this model) first."""
    for label, use in zip(labels, spec.from_checkpoint):
        if not use:
            continue
        path = checkpoint_path(spec.ckpt_dir, label)
        if not path.is_file():
            raise CtrkitError(f"missing checkpoint {path} for peer {label} "
                              f"(run `ctrkit pretrain --model {split_label(label)[0]} --out {path.parent}`)")
        ck = checkpoint.load_checkpoint(path)
        if ck.get("fingerprint") != data.fingerprint:
            raise CtrkitError(f"checkpoint {path} was pretrained on feature map {ck.get('fingerprint')!r}, "
                              f"the dataset {data.path} has {data.fingerprint!r}: peers must be prepared "
                              f"on the same feature map")
        checkpoint.check_identity(path, ck, model_name=split_label(label)[0])


def _build_peer(spec: RunSpec, data, k: int, dev) -> tuple[Any, TrainConfig, dict | None]:
    """Peer k: (model, train config, checkpoint metadata or None)."""
    label, name = spec.peers[k], spec.names[k]
    overrides = dict(spec.overrides)
    if spec.from_checkpoint[k]:
        model, meta = checkpoint.load_pretrained(checkpoint_path(spec.ckpt_dir, label), dev,
                                                 expect_fingerprint=data.fingerprint, expect_model=name)
        tc = TrainConfig.from_dict(meta["train_config"])
        model_keys = sorted(set(overrides) - set(TrainConfig.keys()))
        if model_keys:
            raise CtrkitError(f"--set {', '.join(model_keys)}: a pretrained peer's architecture is its checkpoint's")
        tc = tc.replace(lr=tc.lr * spec.finetune_lr_scale, monitor=spec.finetune_monitor, **overrides)
        return model, tc, meta
    p = presets.get(name, spec.preset, data.dataset, data.protocol)
    hparams, train = apply_overrides(name, p.model, {**p.train, "seed": spec.seed}, overrides)
    seed_everything(spec.seed + split_label(label)[1] - 1)  # the k-th copy of a model differs
    return build(name, data.field_sizes, **hparams), TrainConfig.from_dict(train), None


def _pre_scores(model, data, dev, batch_size: int) -> dict:
    """A pretrained peer's scores measured here on this data (not trusted from the checkpoint)."""
    out = {}
    for split in ("valid", "test"):
        X, y = data.tensors(split, dev)
        out[split] = scores(y, predict(model, X, batch_size))
    return out


def _mutual_config(spec: RunSpec, trains: Sequence[TrainConfig], dev) -> MutualConfig:
    epochs = spec.epochs or (spec.finetune_epochs if spec.init == "pretrained" else max(t.epochs for t in trains))
    return MutualConfig(mode=spec.mode, weight=0.0 if spec.mode == "alone" else spec.weight,
                        divergence=spec.divergence, warmup_steps=spec.warmup_steps,
                        epochs=0 if spec.mode == "ensemble" else epochs,
                        batch_size=spec.batch_size or trains[0].batch_size, seed=spec.seed, device=str(dev),
                        amp=spec.amp, progress=spec.progress, threads=spec.threads, train=list(trains))


# ---------------------------------------------------------------- one run


def run(spec: RunSpec, data, *, exchange=None, out_dir: str | Path | None = None, resume: bool = False, callback=None,
        stop=None) -> dict:
    """Build the peers (only this process's under `exchange`), train them (`mutual.mutual_fit`) and
    return its result with each peer's label, seed, init, checkpoint and pretrained scores. No store."""
    exchange = exchange or LocalExchange(len(spec.peers), resolve_device(spec.device))
    # a bad checkpoint on one host stops every rank with the same message
    exchange.agree(lambda: _check_checkpoints(spec, data, spec.peers))
    dev = exchange.device
    built = [_build_peer(spec, data, k, dev) for k in exchange.local_indices()]
    # every process needs every peer's train config (the run's batch size and epochs come from them)
    trains = [TrainConfig.from_dict(t) for t in exchange.gather_objects([b[1].to_dict() for b in built])]
    cfg = _mutual_config(spec, trains, dev)
    pre = [_pre_scores(m, data, dev, cfg.eval_batch_size) if meta is not None else None for m, _, meta in built]
    starts = [p["valid"] if p is not None and spec.init == "pretrained" else None for p in pre]
    result = mutual_fit([b[0] for b in built], data, cfg, exchange=exchange, out_dir=out_dir, resume=resume,
                        callback=callback, stop=stop, starts=starts)
    mine = [{"meta_path": meta["path"] if meta is not None else None, "pre": p} for (_, _, meta), p in zip(built, pre)]
    everyone = exchange.gather_objects(mine)
    for k, (r, e) in enumerate(zip(result["peers"], everyone)):
        pre_k = e["pre"] or {}
        r.update(label=spec.peers[k], init="pretrained" if e["meta_path"] else "scratch", checkpoint=e["meta_path"],
                 seed=spec.seed if e["meta_path"] else spec.seed + split_label(spec.peers[k])[1] - 1,
                 **{f"pretrained_{s}_{m}": pre_k[s][m] if pre_k else None
                    for s in ("valid", "test") for m in ("auc", "logloss")})
    result.update(init=spec.init, seed=spec.seed, preset=spec.preset, protocol=data.protocol, labels=list(spec.peers),
                  finetune_lr_scale=spec.finetune_lr_scale if any(spec.from_checkpoint) else None)
    return result


def records(spec: RunSpec, result: dict, data) -> list[dict]:
    """One store record per peer of a finished run."""
    peers, labels = result["peers"], result["labels"]
    settings = spec.settings()
    out = []
    for k, p in enumerate(peers):
        partners = [j for j in range(len(peers)) if j != k]
        epochs_run = len(result["history"])
        out.append(dict(
            run_key=spec.key(data.fingerprint), settings_key=spec.settings_key(data.fingerprint), tag=spec.tag,
            dataset=result["dataset"], protocol=result.get("protocol"), fingerprint=result["fingerprint"],
            mode=result["mode"], init=result["init"], seed=result["seed"], peer_seed=p["seed"], n_peers=len(peers),
            peer_index=k, peer=labels[k], model=p["model"], peers="+".join(labels),
            partners=[labels[j] for j in partners], weight=result["weight"], divergence=result["divergence"],
            warmup_steps=spec.warmup_steps, preset=spec.preset, amp=result["amp"], epochs=epochs_run,
            max_epochs=result["config"]["epochs"], stopped_early=p["stopped_early"],
            epoch_cap_hit=bool(p["trained"] and not p["stopped_early"] and epochs_run >= result["config"]["epochs"]),
            finetune_lr_scale=settings["finetune_lr_scale"], finetune_epochs=settings["finetune_epochs"],
            trained=p["trained"], valid_auc=p["valid_auc"], valid_logloss=p["valid_logloss"],
            test_auc=p["test_auc"], test_logloss=p["test_logloss"], best_epoch=p["best_epoch"],
            pretrained_valid_auc=p["pretrained_valid_auc"], pretrained_valid_logloss=p["pretrained_valid_logloss"],
            pretrained_test_auc=p["pretrained_test_auc"], pretrained_test_logloss=p["pretrained_test_logloss"],
            partners_pretrained_auc=[peers[j]["pretrained_test_auc"] for j in partners],
            ensemble_valid_auc=result["ensemble"]["valid_auc"], ensemble_test_auc=result["ensemble"]["test_auc"],
            ensemble_test_logloss=result["ensemble"]["test_logloss"], seconds=result["seconds"],
            config={**settings, "seed": spec.seed, "train": p["train_config"], "hparams": p["hparams"]},
            env_info=result["env"]))
    return out


def _store(store) -> ResultsStore | None:
    if store is None or isinstance(store, ResultsStore):
        return store
    return ResultsStore(store)


def execute(spec: RunSpec, data, *, store=None, out_dir: str | Path | None = None, resume: bool | None = None,
            force: bool = False, callback=None, stop=None, exchange=None) -> tuple[list[dict], bool]:
    """One run, recorded in `store` in one append. Returns (records, skipped): a run already in the
    store comes back from it unless `force`; two identical runs started together train once (the
    run key is claimed in the store first). With `out_dir`, a killed run resumes from its last
    checkpoint (`resume` defaults to `not force`). `stop` ends the run after the current step with
    `ctrkit.training.loop.RunStopped`, recording nothing. `exchange`: see `ctrkit.training.mutual.mutual_fit`."""
    main = exchange is None or exchange.is_main
    st = _store(store) if main else None
    key = spec.key(data.fingerprint)
    with st.claim(key) if st is not None else contextlib.nullcontext():
        done = None if st is None or force else st.run_records(key)
        if exchange is not None:
            done = exchange.broadcast(done)  # the main process decides "already done" for everyone
        if done:
            return done, True
        result = run(spec, data, exchange=exchange, out_dir=out_dir,
                     resume=(out_dir is not None and not force) if resume is None else resume, callback=callback,
                     stop=stop)
        recs = records(spec, result, data)
        if "distributed" in result:
            for r in recs:
                r["distributed"] = {k: v for k, v in result["distributed"].items() if k != "per_rank"}
        if st is not None:
            st.append(recs)
    return recs, False


def summary(recs: Sequence[dict]) -> dict:
    """The `ctrkit mutual --json` object from a run's records."""
    r0 = recs[0]
    return {"init": r0["init"], "mode": r0["mode"], "seconds": r0["seconds"], "amp": r0.get("amp"),
            "ensemble_test_auc": r0["ensemble_test_auc"], "run_key": r0["run_key"],
            "peers": [{"model": r["model"], "label": r["peer"], "seed": r["peer_seed"],
                       "pretrained_test_auc": r["pretrained_test_auc"], "valid_auc": r["valid_auc"],
                       "test_auc": r["test_auc"], "test_logloss": r["test_logloss"], "epochs": r.get("epochs"),
                       "stopped_early": r.get("stopped_early")} for r in recs]}


# ---------------------------------------------------------------- one baseline


def pretrain(data, *, model: str, preset: str = "quick", seed: int = 2021, epochs: int | None = None,
             overrides: dict | None = None, device: str = "auto", threads: Any = "auto", amp: str | None = None,
             out_dir: str | Path | None = None, resume: bool = True, store=None, force: bool = False,
             progress: bool = True) -> tuple[dict, dict]:
    """Pretrain one model (or label, "DeepFM_2": init seed + 1) with its preset and `fit`; a finished
    checkpoint of the same dataset and settings in `out_dir` is reused, an interrupted one resumed,
    unless `force`. Returns (fit's result, the store record, also appended to `store` once)."""
    name, k = split_label(model)
    label = name if k == 1 else f"{name}_{k}"
    p = presets.get(name, preset, data.dataset, data.protocol)
    base = {**p.train, "seed": seed, "device": str(resolve_device(device)), "progress": progress, "threads": threads,
            **({"epochs": epochs} if epochs is not None else {}), **({"amp": amp} if amp is not None else {})}
    hparams, train = apply_overrides(name, p.model, base, overrides or {})  # --set wins over the flags
    cfg = TrainConfig.from_dict(train)
    train_key = {k_: v for k_, v in cfg.to_dict().items() if k_ not in _NOT_RESULT}
    key = run_key(kind="baseline", fingerprint=data.fingerprint, peer=label, seed=seed, preset=preset,
                  model=hparams, train=train_key)
    out = Path(out_dir) if out_dir is not None else None
    result = _reusable(out, key, data) if out is not None and not force else None
    if result is None:
        seed_everything(seed + k - 1)  # the init seed; fit reseeds for the batch order
        result = fit(build(name, data.field_sizes, **hparams), data, cfg, out_dir=out, resume=resume and not force)
        result["run_key"] = key
        if out is not None:  # fit wrote result.json already; our key lets a re-run reuse it
            checkpoint.save_json(out / "result.json", result)
    rec = dict(run_key=key, settings_key=run_key(kind="baseline", fingerprint=data.fingerprint, peer=label,
                                                 preset=preset, model=hparams, train={**train_key, "seed": None}),
               tag=None, dataset=data.dataset, protocol=data.protocol, fingerprint=data.fingerprint, mode="baseline",
               init=None, seed=seed, peer_seed=seed + k - 1, n_peers=1, peer_index=0, peer=label, model=name,
               peers=label, partners=[], weight=None, divergence=None, preset=preset, amp=result["amp"],
               epochs=result["epochs"], max_epochs=cfg.epochs, stopped_early=result.get("stopped_early"),
               epoch_cap_hit=result.get("epoch_cap_hit"), valid_auc=result["valid_auc"],
               valid_logloss=result["valid_logloss"], test_auc=result["test_auc"],
               test_logloss=result["test_logloss"], pretrained_test_auc=None, partners_pretrained_auc=[],
               ensemble_test_auc=None, ensemble_test_logloss=None, best_epoch=result.get("best_epoch"),
               seconds=result["seconds"], checkpoint=result.get("checkpoint"),
               config={"model": hparams, "train": cfg.to_dict()}, env_info=result.get("env"))
    st = _store(store)
    if st is not None and (force or not st.has_run(key)):
        st.append([rec])
    return result, rec


def _reusable(out: Path, key: str, data) -> dict | None:
    done = out / "result.json"
    if not done.is_file():
        return None
    try:
        old = json.loads(done.read_text())
    except (OSError, ValueError):
        return None
    return old if old.get("fingerprint") == data.fingerprint and old.get("run_key") == key else None
