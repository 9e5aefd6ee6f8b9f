"""Orchestration above the trainer: a run described once (`RunSpec`, keyword-only, in
`ctrkit.training.config`), validated once, keyed once; names -> peers (built from a preset or loaded
from checkpoints), the store record (`ctrkit.experiments.record`).

    spec = RunSpec(peers=["DeepFM", "DCN"], init="pretrained", ckpt_dir="runs/criteo/seed2021")
    records, skipped = runs.execute(spec, data, store="store.jsonl")

`execute` is what the CLI, `ctrkit.experiments`, the widget and the distributed runner call; a new
knob is a RunSpec field (and the code that uses it), nothing else. `pretrain` is the same for one
baseline model (`PretrainSpec`; `ctrkit pretrain`, `experiments.pretrain_baselines`).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ctrkit.core.utils import CtrkitError, as_int, resolve_device, seed_everything
from ctrkit.experiments import churn, pretrained
from ctrkit.experiments.record import make_records
from ctrkit.experiments.store import ResultsStore
from ctrkit.experiments.workers import check_workers, default_workers, hold_until_recorded, resolve_workers, run_jobs
from ctrkit.models import build, hparam_defaults, is_built_in, reference
from ctrkit.models.layers import FeatureEmbedding
from ctrkit.training import checkpoint, presets
from ctrkit.training.replicas import replica_bytes
from ctrkit.training.config import (INITS, MODES, TRAIN_DICT_KEYS, PretrainSpec, RunConfig, RunSpec,
                                    normalize_train_dict, peer_labels, run_key, split_label)
from ctrkit.training.exchange import Exchange, LocalExchange
from ctrkit.training.loop import fit, fit_replicas, train_replicas
from ctrkit.training.metrics import forward_flops_per_sample
from ctrkit.training.mutual import make_peers, mutual_fit

__all__ = ["INITS", "MODES", "RunSpec", "PretrainSpec", "run", "execute", "records", "pretrain", "peer_labels",
           "split_label", "checkpoint_path", "seed_dir", "run_key", "summary", "apply_overrides", "run_many",
           "execute_many", "pretrain_many", "pretrain_groups", "replica_groups", "default_max_replicas",
           "check_max_replicas", "default_workers"]


def checkpoint_path(ckpt_dir: str | Path, label: str) -> Path:
    """`ckpt_dir/<label>/best.pt`: one `pretrain --out` folder per model (DeepFM_2 for a repeat)."""
    return Path(ckpt_dir) / label / "best.pt"


def seed_dir(ckpt_dir: str | Path, seed: int) -> Path:
    """Where the baselines of one seed live: pass it as `ctrkit mutual --ckpt-dir`."""
    return Path(ckpt_dir) / f"seed{seed}"


def apply_overrides(name: str, hparams: dict, train: dict, overrides: dict) -> tuple[dict, dict]:
    """`--set key=value` pairs onto a model's hyperparameters and flat train dict; unknown keys listed."""
    hparams, train = dict(hparams), dict(train)
    valid_model = hparam_defaults(name)
    for key, value in overrides.items():
        if key in TRAIN_DICT_KEYS:
            train[key] = value
        elif key in valid_model:
            hparams[key] = value
        else:
            # the CLI's --set and Python's `overrides` reach this one check: the message names both
            raise CtrkitError(f"--set {key}: unknown key; valid: train config {', '.join(TRAIN_DICT_KEYS)}; "
                              f"{name} hyperparameters {', '.join(sorted(valid_model))} (--set {key}=... from the CLI, "
                              f"overrides={{{key!r}: ...}} from Python)")
    return hparams, train


# ---------------------------------------------------------------- building the peers


def _check_present(spec: RunSpec, data, labels: Sequence[str]) -> None:
    """A one-line error for the first checkpoint of the run that is not there, not finished or
    pretrained with another preset, saying what to do. The CLI and the Python API both land here,
    so each message names both forms."""
    for label, use in zip(labels, spec.from_checkpoint):
        path = checkpoint_path(spec.ckpt_dir, label) if use else None
        if path is None:
            continue
        if not path.is_file():
            raise CtrkitError(f"missing checkpoint {path} for peer {label} {_how_to_pretrain(spec, data, label, path)}")
        if (path.parent / "last.pt").is_file() and not (path.parent / "result.json").is_file():
            # a pretraining keeps best.pt and last.pt as it goes and writes result.json when it ends:
            # without it the run was stopped, and its best.pt is a few epochs' model, not the baseline
            raise CtrkitError(f"checkpoint {path}: its pretraining did not finish (last.pt but no result.json "
                              f"beside it): finish it with `ctrkit pretrain ... --out {path.parent} --resume` "
                              f"(from Python: the same pretrain_baselines / runs.pretrain call again, which resumes)")
        _check_preset(spec, path)


def _how_to_pretrain(spec: RunSpec, data, label: str, path: Path) -> str:
    """The hint of a missing checkpoint, in parentheses, at the run's seed and preset."""
    # `pretrain --seeds` writes seed<S>/ folders: a ckpt_dir above them is the usual slip
    seeds = sorted(p.parent.parent.name for p in Path(spec.ckpt_dir).glob(f"seed*/{label}/best.pt"))
    if seeds:
        return (f"({spec.ckpt_dir} holds {', '.join(seeds)}: pass --seeds, or --ckpt-dir one of them; from Python: "
                f"ckpt_dir one of them, or experiments.run(..., ckpt_dir={str(spec.ckpt_dir)!r}, seeds=[...]))")
    return (f"(run `ctrkit pretrain --data {data.path} --model {split_label(label)[0]} --seed {spec.seed} "
            f"--preset {spec.preset} --out {path.parent}`; from Python: runs.pretrain(runs.PretrainSpec("
            f"model={label!r}, seed={spec.seed}, preset={spec.preset!r}), data, out_dir={str(path.parent)!r}))")


def _check_preset(spec: RunSpec, path: Path) -> None:
    """A pretrained peer is its checkpoint's architecture and training settings (`_build_peer`), not
    the run's preset's, yet the run's records carry `spec.preset`: a run whose preset is not the one
    its checkpoints were pretrained with would label, say, smoke models as quick in every table. So
    it is refused. Checkpoints whose result.json records no preset (pretrained before it did) pass."""
    was = _pretrain_result(path).get("preset")
    if was is not None and was != spec.preset:
        raise CtrkitError(f"checkpoint {path} was pretrained with preset {was!r}, but this run has preset "
                          f"{spec.preset!r} (a pretrained peer keeps its checkpoint's model and training settings, "
                          f"and the run records its preset): pass preset={was!r} (--preset {was}), or pretrain "
                          f"it again with preset {spec.preset!r}")


def _check_checkpoints(spec: RunSpec, data, labels: Sequence[str]) -> None:
    """Every checkpoint a run loads checked (exists, readable, this dataset, this model) first."""
    _check_present(spec, data, labels)
    for label, use in zip(labels, spec.from_checkpoint):
        if not use:
            continue
        path = checkpoint_path(spec.ckpt_dir, label)
        ck = pretrained.read(path)
        if ck.get("fingerprint") != data.fingerprint:
            raise CtrkitError(f"checkpoint {path} was pretrained on feature map {ck.get('fingerprint')!r}, "
                              f"the dataset {data.path} has {data.fingerprint!r}: peers must be prepared "
                              f"on the same feature map")
        checkpoint.check_identity(path, ck, model_name=split_label(label)[0])


def _build_peer(spec: RunSpec, data, k: int, dev) -> tuple[Any, dict, dict | None]:
    """Peer k: (model, its flat train dict, checkpoint metadata or None)."""
    label, name = spec.peers[k], spec.names[k]
    overrides = dict(spec.overrides)
    if spec.from_checkpoint[k]:
        model, meta = pretrained.load(checkpoint_path(spec.ckpt_dir, label), dev,
                                      expect_fingerprint=data.fingerprint, expect_model=name)
        tc = normalize_train_dict(meta["train_config"])
        model_keys = sorted(set(overrides) - set(TRAIN_DICT_KEYS))
        apply_overrides(name, {}, {}, {k: overrides[k] for k in model_keys})  # a typo is "unknown key" first
        if model_keys:
            raise CtrkitError(f"--set / overrides {', '.join(model_keys)}: a pretrained peer's architecture is its "
                              f"checkpoint's")
        train = {**tc, "lr": tc["lr"] * spec.finetune_lr_scale, "monitor": spec.finetune_monitor, **overrides}
        return model, normalize_train_dict(train), meta
    p = presets.get(name, spec.preset, data.dataset, data.protocol)
    hparams, train = apply_overrides(name, p.model, {**p.train, "seed": spec.seed}, overrides)
    seed_everything(spec.seed + split_label(label)[1] - 1)  # the k-th copy of a model differs
    return build(name, data.field_sizes, **hparams), normalize_train_dict(train), None


def _share_embedding(models: Sequence, exchange: Exchange) -> None:
    """`RunSpec.share_embedding`: peer 0's embedding table becomes every peer's, one FeatureEmbedding
    module, so every peer's loss sends its gradient into it and every peer's optimizer steps it (N
    Adam updates per batch, each with that peer's own moments and embedding regularizer; each peer's
    best weights hold the table too, so the table a run ends with is the last peer's restored one)."""
    if exchange.n_peers != len(models):
        raise CtrkitError("share_embedding: the peers share one table in one process (not under --distributed)")
    tables = [getattr(m, "embedding", None) for m in models]
    if not all(isinstance(t, FeatureEmbedding) for t in tables):
        raise CtrkitError("share_embedding: every peer needs an embedding table (`.embedding`; LR has none)")
    if len({tuple(t.weight.shape) for t in tables}) != 1:
        raise CtrkitError(f"share_embedding: the peers' tables differ in size "
                          f"({', '.join(str(tuple(t.weight.shape)) for t in tables)}): one embedding_dim for all")
    for m in models[1:]:
        m.embedding = tables[0]


# ---------------------------------------------------------------- one run


def run(spec: RunSpec, data, *, exchange: Exchange | None = None, out_dir: str | Path | None = None,
        resume: bool = False, callback=None, stop=None) -> dict:
    """Build the peers (only this process's under `exchange`), train them (`mutual.mutual_fit`) and
    return its result with each peer's label, seed, init, checkpoint, pretrained scores and churn
    against the other peers (`peer_churn`), and `test_probs` (every peer's test probabilities, numpy
    [N, rows]: not JSON; `execute` saves them beside the store). No store."""
    exchange = exchange or LocalExchange(len(spec.peers), spec.torch_device)
    built, cfg, pre, starts = _prepare(spec, data, exchange)
    result = mutual_fit([b[0] for b in built], data, cfg, exchange=exchange, out_dir=out_dir, resume=resume,
                        callback=callback, stop=stop, starts=starts, occurrences=_occurrences(spec))
    return _annotate(spec, result, built, pre, data, exchange)


def run_many(specs: Sequence[RunSpec], data, *, out_dirs: Sequence[str | Path | None] | None = None,
             resume: bool = False, callback=None, stop=None) -> list[dict]:
    """`run` of specs that differ only in seed (and weight, finetuning lr scale, checkpoint folder) as
    replicas in one batched step (`ctrkit.training.loop.train_replicas`): each result is the one `run`
    gives alone, within the tolerance `ctrkit.training.replicas` states. One spec is `run`, bit for bit."""
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(specs)
    if len(specs) == 1:
        return [run(specs[0], data, out_dir=out_dirs[0], resume=resume, callback=callback, stop=stop)]
    exchange = LocalExchange(len(specs[0].peers), specs[0].torch_device)
    prepared = [_prepare(spec, data, exchange) for spec in specs]
    outs = [Path(o) if o is not None else None for o in out_dirs]
    groups = [make_peers([b[0] for b in built], cfg, exchange, out, starts, _occurrences(spec))
              for spec, (built, cfg, _, starts), out in zip(specs, prepared, outs)]
    results = train_replicas(groups, data, [p[1] for p in prepared], exchange=exchange, out_dirs=outs,
                             resume=resume, callback=callback, stop=stop)
    return [_annotate(spec, r, built, pre, data, exchange) for spec, r, (built, _, pre, _) in zip(specs, results, prepared)]


def _occurrences(spec: RunSpec) -> list[int]:
    """Per peer, which of the run's models of its name it is ("DeepFM_2" -> 2): its dropout stream
    (`ctrkit.training.rng.dropout_stream`), known to every rank of a distributed run."""
    return [split_label(label)[1] for label in spec.peers]


def _prepare(spec: RunSpec, data, exchange: Exchange) -> tuple[list, RunConfig, list, list]:
    """A run's peers built (model, train dict, checkpoint metadata), its RunConfig, the pretrained
    peers' scores and their epoch-0 starts."""
    # a bad checkpoint on one host stops every rank with the same message
    exchange.agree(lambda: _check_checkpoints(spec, data, spec.peers), where="checking the checkpoints")
    dev = exchange.device
    built = [_build_peer(spec, data, k, dev) for k in exchange.local_indices()]
    if spec.share_embedding:
        _share_embedding([b[0] for b in built], exchange)
    # every process needs every peer's train dict (the run's batch size and epochs come from them)
    cfg = spec.run_config(exchange.gather_objects([b[1] for b in built], where="start-up"), dev)
    # a pretrained peer's scores on this data: the checkpoint's own only where they are what measuring
    # here gives (same data, machine and code: `pretrained.scores`), else measured
    pre = [pretrained.scores(m, meta["path"], data, dev, cfg.eval_batch_size) if meta is not None else None
           for m, _, meta in built]
    starts = [p["valid"] if p is not None and spec.init == "pretrained" else None for p in pre]
    return built, cfg, pre, starts


def _annotate(spec: RunSpec, result: dict, built: list, pre: list, data, exchange: Exchange) -> dict:
    """The trainer's result plus each peer's label, seed, init, checkpoint and pretrained scores."""
    mine = [{"meta_path": meta["path"] if meta is not None else None, "pre": p} for (_, _, meta), p in zip(built, pre)]
    everyone = exchange.gather_objects(mine, where="gathering the results")
    for k, (r, e, c) in enumerate(zip(result["peers"], everyone, churn.peer_churn(result["test_probs"]))):
        pre_k = e["pre"] or {}
        r.update(label=spec.peers[k], peer_churn=c, init="pretrained" if e["meta_path"] else "scratch", checkpoint=e["meta_path"],
                 seed=spec.seed if e["meta_path"] else spec.seed + split_label(spec.peers[k])[1] - 1,
                 **{f"pretrained_{s}_{m}": pre_k[s][m] if pre_k else None
                    for s in ("valid", "test") for m in ("auc", "logloss")})
    result.update(init=spec.init, seed=spec.seed, preset=spec.preset, protocol=data.protocol, labels=list(spec.peers),
                  finetune_lr_scale=spec.finetune_lr_scale if any(spec.from_checkpoint) else None)
    return result


def records(spec: RunSpec, result: dict, data) -> list[dict]:
    """One store record per peer of a finished run."""
    settings, epochs_run, max_epochs = spec.settings(), len(result["history"]), result["config"]["epochs"]
    run_fields = dict(
        run_key=spec.key(data.fingerprint), settings_key=spec.settings_key(data.fingerprint), tag=spec.tag,
        dataset=result["dataset"], protocol=result.get("protocol"), fingerprint=result["fingerprint"],
        mode=result["mode"], init=result["init"], seed=result["seed"], weight=result["weight"],
        divergence=result["divergence"], warmup_steps=spec.warmup_steps, preset=spec.preset, amp=result["amp"],
        epochs=epochs_run, max_epochs=max_epochs, run_batch_size=result["config"]["batch_size"],
        finetune_lr_scale=settings["finetune_lr_scale"],
        finetune_epochs=settings["finetune_epochs"], ensemble_valid_auc=result["ensemble"]["valid_auc"],
        ensemble_test_auc=result["ensemble"]["test_auc"], ensemble_test_logloss=result["ensemble"]["test_logloss"],
        seconds=result["seconds"], env_info=result["env"])
    if spec.share_embedding:
        run_fields["share_embedding"] = True
    if "distributed" in result:
        run_fields["distributed"] = {k: v for k, v in result["distributed"].items() if k != "per_rank"}
    peers = [dict(
        peer_seed=p["seed"], peer=label, model=p["model"], stopped_early=p["stopped_early"],
        epoch_cap_hit=bool(p["trained"] and not p["stopped_early"] and epochs_run >= max_epochs),
        trained=p["trained"], valid_auc=p["valid_auc"], valid_logloss=p["valid_logloss"], test_auc=p["test_auc"],
        test_logloss=p["test_logloss"], best_epoch=p["best_epoch"],
        **({"peer_churn_abs": p["peer_churn"]["mean_abs"], "peer_churn_top10": p["peer_churn"]["top_decile_flip"]}
           if p.get("peer_churn") else {}),
        **{k: p[k] for k in ("pretrained_valid_auc", "pretrained_valid_logloss", "pretrained_test_auc",
                             "pretrained_test_logloss")},
        **({"checkpoint": p["checkpoint"], "checkpoint_key": checkpoint_key(p["checkpoint"])}
           if p.get("checkpoint") else {}),
        config={**settings, "seed": spec.seed, "train": p["train_config"], "hparams": p["hparams"]})
        for p, label in zip(result["peers"], result["labels"])]
    return make_records(run_fields, peers)


def checkpoint_key(best: str | Path | None) -> str | None:
    """The run key of the pretraining that wrote checkpoint `best` (the result.json beside it), or None
    (a checkpoint ctrkit did not pretrain, or one from before result.json held its key)."""
    return _pretrain_result(best).get("run_key") if best is not None else None


def _pretrain_result(best: str | Path) -> dict:
    """The result.json beside checkpoint `best` (its pretraining's run key and preset), {} when there
    is none or it is not a JSON object."""
    try:
        out = json.loads((Path(best).parent / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def check_same_checkpoints(done: list[dict] | None) -> list[dict] | None:
    """`done` (a stored run's records) when each peer's checkpoint is still the one it was finetuned from;
    a one-line CtrkitError when one was pretrained again since (same path, other weights): reusing the
    stored result would report the old checkpoint's run as this one's."""
    for r in done or []:
        was, now = r.get("checkpoint_key"), checkpoint_key(r.get("checkpoint"))
        if None not in (was, now) and now != was:  # (a checkpoint gone since: the stored run still stands)
            raise CtrkitError(f"the store holds this run (run {r['run_key'][:12]}), finetuned from an earlier "
                              f"{r['peer']} checkpoint than {r['checkpoint']} now holds (it was pretrained again "
                              f"since): use another store, or force it to train again from the new one "
                              f"(--store / --force; force=True; the widget's re-run box)")
    return done


def _store(store) -> ResultsStore | None:
    if store is None or isinstance(store, ResultsStore):
        return store
    return ResultsStore(store)


def _check_store(st: ResultsStore) -> None:
    """Before a run that records in `st` trains: the store takes an append, and the folder beside it
    takes the run's test predictions (saved before the append)."""
    st.check_usable()
    churn.check_writable(st.path)


def execute(spec: RunSpec, data, *, store=None, force: bool = False, exchange: Exchange | None = None,
            out_dir: str | Path | None = None, resume: bool | None = None, **hooks) -> tuple[list[dict], bool]:
    """One run, recorded in `store` in one append. Returns (records, skipped): a run already in the
    store comes back from it unless `force`; two identical runs started together train once (the
    run key is claimed in the store first). With `out_dir`, a killed run resumes from its last
    checkpoint (`resume` defaults to `not force`). `hooks`: `callback` (every epoch's history row)
    and `stop` (ends the run after the current step with `ctrkit.training.loop.RunStopped`,
    recording nothing). `exchange`: see `ctrkit.training.mutual.mutual_fit`."""
    main = exchange is None or exchange.is_main
    st = _store(store) if main else None
    # a store it cannot append to fails now, not after the training; on every rank alike (the others
    # would wait for the main one, then report it lost)
    check = lambda: _check_store(st) if st is not None else None  # noqa: E731
    exchange.agree(check, where="checking the results store") if exchange is not None else check()
    key = spec.key(data.fingerprint)
    with st.claim(key) if st is not None else contextlib.nullcontext():
        done = None if st is None or force else check_same_checkpoints(st.run_records(key))
        if exchange is not None:
            done = exchange.broadcast(done)  # the main process decides "already done" for everyone
        if done:
            return done, True
        result = run(spec, data, exchange=exchange, out_dir=out_dir,
                     resume=(out_dir is not None and not force) if resume is None else resume, **hooks)
        recs = records(spec, result, data)
        if st is not None:
            # the test predictions first: a run in the store has them (churn between seeds reads them)
            churn.save_predictions(churn.predictions_dir(st.path), key, spec.peers, result["test_probs"])
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


def pretrain(spec: PretrainSpec, data, *, out_dir: str | Path | None = None, resume: bool | None = None, store=None,
             force: bool = False) -> tuple[dict, dict]:
    """Pretrain one model (or label, "DeepFM_2": init seed + 1) with its preset and `fit`; a finished
    checkpoint of the same dataset and settings in `out_dir` is reused, an interrupted one resumed,
    unless `force`. `resume` None: resume when there is an `out_dir` to resume from (as `execute`);
    True without `out_dir` is an error (`fit`'s). Returns (fit's result, the store record, also
    appended to `store` once)."""
    resume = out_dir is not None if resume is None else resume
    if store is not None:
        _store(store).check_usable()
    j = _pretrain_job(spec, data, out_dir, force)
    if j["result"] is None:
        seed_everything(j["init_seed"])  # the init seed; fit reseeds for the batch order
        result = fit(build(j["name"], data.field_sizes, **j["hparams"]), data, j["cfg"], out_dir=j["out"],
                     resume=resume and not force)
        j["result"] = _keyed(result, j)
    return _pretrain_record(j, data, store, force)


def _pretrain_job(spec: PretrainSpec, data, out_dir, force: bool) -> dict:
    """What pretraining one baseline needs: model, hyperparameters, config, keys, a reusable result."""
    name, k = split_label(spec.model)
    p = presets.get(name, spec.preset, data.dataset, data.protocol)
    hparams, train = apply_overrides(name, p.model, spec.base_train(p.train), dict(spec.overrides or {}))
    cfg = RunConfig.single(train)  # --set wins over the spec's fields
    train = cfg.train_dict(0)
    key, settings_key = spec.keys(data.fingerprint, hparams, train)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _refuse_other_model(out, name, data)
    return {"spec": spec, "name": name, "init_seed": spec.seed + k - 1, "hparams": hparams, "train": train,
            "cfg": cfg, "key": key, "settings_key": settings_key, "out": out,
            "result": _reusable(out, key, data, spec.preset) if out is not None and not force else None}


def _refuse_other_model(out: Path, name: str, data) -> None:
    """A one-line error when `out` holds the checkpoint of another model or dataset: retraining the same
    model there replaces its own earlier run, but a long pretrain of something else is not lost to a
    mistyped --out (ctrkit deletes nothing; the user can)."""
    try:
        old = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(old, dict) and (old.get("model"), old.get("fingerprint")) != (name, data.fingerprint) \
            and old.get("model") is not None:
        raise CtrkitError(f"{out} holds a {old.get('model')} checkpoint of {old.get('dataset')} (feature map "
                          f"{old.get('fingerprint')}), not {name} of {data.dataset} ({data.fingerprint}): not "
                          f"replaced (use another --out / out_dir (pretrain_baselines: ckpt_dir), or remove that "
                          f"folder first)")


def _keyed(result: dict, j: dict) -> dict:
    """fit's result with the baseline's run key (a re-run reuses it), preset (a run finetuning the
    checkpoint must have the same one: `_check_preset`) and best.pt's size and sha256 (a re-run reuses
    only that very file: `_reusable`), written to result.json beside best.pt."""
    result["run_key"], result["preset"] = j["key"], j["spec"].preset
    if j["out"] is not None:  # fit wrote result.json already
        best = j["out"] / "best.pt"
        if best.is_file():
            try:
                result["checkpoint_digest"] = checkpoint.digest(best)
            except OSError as e:
                raise CtrkitError(f"checkpoint {best}: cannot read it back: {e.strerror or e}") from None
        checkpoint.save_json(j["out"] / "result.json", result)
    return result


def _pretrain_record(j: dict, data, store, force: bool) -> tuple[dict, dict]:
    """(result, its store record), the record appended to `store` once."""
    spec, result, name, key = j["spec"], j["result"], j["name"], j["key"]
    rec = make_records(dict(
        run_key=key, settings_key=j["settings_key"], tag=None, dataset=data.dataset, protocol=data.protocol,
        fingerprint=data.fingerprint, mode="baseline", init=None, seed=spec.seed, weight=None, divergence=None,
        preset=spec.preset, amp=result["amp"], epochs=result["epochs"], max_epochs=j["cfg"].epochs,
        run_batch_size=j["cfg"].batch_size,
        ensemble_test_auc=None, ensemble_test_logloss=None, seconds=result["seconds"], env_info=result.get("env")),
        [dict(peer_seed=j["init_seed"], peer=spec.label, model=name, stopped_early=result.get("stopped_early"),
              epoch_cap_hit=result.get("epoch_cap_hit"), valid_auc=result["valid_auc"],
              valid_logloss=result["valid_logloss"], test_auc=result["test_auc"], test_logloss=result["test_logloss"],
              pretrained_test_auc=None, best_epoch=result.get("best_epoch"), checkpoint=result.get("checkpoint"),
              config={"model": j["hparams"], "train": j["train"]})])[0]
    st = _store(store)
    if st is not None and (force or not st.has_run(key)):
        st.append([rec])
    return result, rec


def _reusable(out: Path, key: str, data, preset: str) -> dict | None:
    done = out / "result.json"
    if not done.is_file():
        return None
    try:
        old = json.loads(done.read_text())
    except (OSError, ValueError):
        return None
    # the run's checkpoint must be there too: a result.json copied without it is not a finished run here
    best = out / "best.pt"
    ours = isinstance(old, dict) and old.get("fingerprint") == data.fingerprint and old.get("run_key") == key \
        and best.is_file()
    if not ours:
        return None
    _check_intact(best, old.get("checkpoint_digest"))
    old["checkpoint"] = str(best)  # where it is now: the folder may have been moved or copied since
    if "preset" not in old:
        # written before result.json held the preset: the run key has it (`PretrainSpec.keys`), so the
        # preset is known; recorded now, the runs finetuning this checkpoint are checked too. A
        # checkpoint folder this process cannot write keeps working unchecked, as before.
        old["preset"] = preset
        with contextlib.suppress(CtrkitError):
            checkpoint.save_json(done, old)
    return old


def _check_intact(best: Path, recorded) -> None:
    """A one-line error when `best` is not the file its pretraining wrote (the size and sha256 that
    result.json records; a result.json from before it did is taken as before): a truncated or
    replaced checkpoint is neither reused nor overwritten, as `checkpoint.refuse_foreign` treats a
    damaged one, since a copy that went wrong may be the user's only one."""
    if not isinstance(recorded, dict):
        return
    how = checkpoint.changed_since(best, recorded)
    if how is not None:
        raise CtrkitError(f"checkpoint {best}: not the file its pretraining wrote ({how}; result.json beside it "
                          f"records its size and sha256): not reused and not overwritten (restore it, or remove it "
                          f"and run again to pretrain it again, or use another --out / out_dir)")


# ---------------------------------------------------------------- many runs as replicas

# Runs of one group train as replicas (one batched step) on a GPU, where small steps are launch-bound;
# more than this many are split into groups. On the CPU the default is 1 (one run at a time, as
# before): there the batched step was slower than K sequential steps at every size measured
# (bench/bench_replicas.py: the CPU kernels beat the vmapped reference maths and a CPU core gains
# nothing from batching), so replicas there are opt-in (`max_replicas`).
MAX_REPLICAS = 8


def default_max_replicas(device: str) -> int:
    """Replicas per group when not given: MAX_REPLICAS on a GPU, 1 on the CPU."""
    return MAX_REPLICAS if resolve_device(device).type == "cuda" else 1


def check_max_replicas(max_replicas: Any) -> int | None:
    """`max_replicas` as given when valid: None (`default_max_replicas`) or an int >= 1."""
    if max_replicas is None:
        return None
    n = as_int(max_replicas)
    if n is None or n < 1:
        raise CtrkitError(f"max_replicas must be an int >= 1 or None, got {max_replicas!r}")
    return n


# The share of the machine's memory the replicas of one group may take (`replicas.replica_bytes`).
_MEMORY_SHARE = 0.25


def replica_groups(specs: Sequence[RunSpec], max_replicas: int | None = None) -> list[list[int]]:
    """Indices of `specs` grouped into replicas: runs whose settings differ only in seed, weight,
    finetuning lr scale and checkpoint folder (one architecture, one schedule), at most
    `max_replicas` per group, in the specs' order; ensemble runs (nothing trains) stay single."""
    max_replicas = check_max_replicas(max_replicas)
    groups: dict = {}
    for i, spec in enumerate(specs):
        s = spec.settings()
        key = (json.dumps({k: v for k, v in s.items() if k not in ("weight", "finetune_lr_scale", "ckpt_dir")},
                          sort_keys=True, default=str), spec.device, str(spec.threads))
        # ensemble runs train nothing; shared-table peers would sum their gradients into the one table
        single = spec.mode == "ensemble" or spec.share_embedding
        groups.setdefault(key if not single else ("single", i), []).append(i)
    out = []
    for g in groups.values():
        n = max(1, max_replicas or default_max_replicas(specs[g[0]].device))
        out += [g[j:j + n] for j in range(0, len(g), n)]
    return sorted(out, key=lambda g: g[0])  # groups of one: the specs' order, as one run after another


def _fits_memory(models: Sequence, batch_size: int, num_fields: int, k: int) -> bool:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return True
    need = sum(replica_bytes(m, batch_size, num_fields) for m in models) * k
    return need <= _MEMORY_SHARE * total


def execute_many(specs: Sequence[RunSpec], data, *, store=None, force: bool = False,
                 out_dirs: Sequence[str | Path | None] | None = None, max_replicas: int | None = None,
                 progress=None, workers: int | str = 1) -> tuple[list[list[dict]], list[bool]]:
    """`execute` of many runs, those that differ only in seed (and weight, lr scale) trained together
    as replicas (`replica_groups`, `run_many`), each still recorded under its own run key in one
    append. Runs already in the store are skipped (unless `force`); a group's run keys are all claimed
    while it trains. With `out_dirs` (one per spec) a killed group resumes each run from its own last
    checkpoint. `max_replicas`: runs per group (None: `default_max_replicas` of the device; 1: every
    run alone, bit for bit as `execute`). `workers`: processes the groups are spread over
    (`ctrkit.experiments.workers`; "auto": `default_workers`; 1: one group after another in this
    process). `progress(spec_indices)` is called before each group (with workers: as each group
    finishes). Returns (records, skipped) per spec."""
    st = _store(store)
    if st is not None:
        _check_store(st)
    for spec in specs:  # every run's checkpoints there before the first trains: a missing seed is not found halfway
        if force or st is None or not st.has_run(spec.key(data.fingerprint)):
            _check_present(spec, data, spec.peers)  # (each is read and checked in full where its run starts)
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(specs)
    recs: list = [None] * len(specs)
    skipped = [False] * len(specs)
    groups = replica_groups(specs, max_replicas)
    if workers != 1:
        groups, spread = _spread_groups(specs, groups, data, st, force, out_dirs, progress, workers)
        for i, (r, s) in spread.items():
            recs[i], skipped[i] = r, s
    for group in groups:
        show = (lambda todo, group=group: progress([group[j] for j in todo])) if progress is not None else None
        for i, (r, s) in zip(group, _execute_group([specs[i] for i in group], data, st, [out_dirs[i] for i in group],
                                                   force=force, progress=show)):
            recs[i], skipped[i] = r, s
    return recs, skipped


def _execute_group(specs: list[RunSpec], data, st: ResultsStore | None, out_dirs: list, *, force: bool,
                   progress=None, append: bool = True) -> list[tuple[list[dict], bool]]:
    """One replica group of `execute_many`: its run keys claimed, those in the store skipped, the rest
    trained together and recorded (test predictions saved beside the store, then the records
    appended). `progress(local indices)` before training. Without `append` (a worker whose parent
    appends, `_spread_groups`) the claims are held until the parent has recorded the group
    (`workers.hold_until_recorded`). (records, skipped) per spec."""
    keys = [spec.key(data.fingerprint) for spec in specs]
    out: list = [None] * len(specs)
    with contextlib.ExitStack() as claims:
        for key in sorted(set(keys)) if st is not None else ():
            claims.enter_context(st.claim(key))
        todo = []
        for j, key in enumerate(keys):
            done = None if st is None or force else check_same_checkpoints(st.run_records(key))
            if done:
                out[j] = (done, True)
            else:
                todo.append(j)
        if progress is not None and todo:
            progress(todo)
        results = _run_group([specs[j] for j in todo], data, [out_dirs[j] for j in todo], resume=not force)
        for j, result in zip(todo, results):
            out[j] = (records(specs[j], result, data), False)
            if st is not None and "test_probs" in result:  # as `execute` does: a stored run has its test predictions
                churn.save_predictions(churn.predictions_dir(st.path), keys[j], specs[j].peers, result["test_probs"])
        if not append:
            hold_until_recorded(claims.pop_all())
        elif st is not None:
            for j in todo:
                st.append(out[j][0])
    return out


def _group_task(data, specs: list[RunSpec], out_dirs: list, store_path, force: bool) -> list:
    """`_execute_group` in a worker process (its own handle on the store); the parent appends."""
    st = ResultsStore(store_path) if store_path is not None else None
    return _execute_group(specs, data, st, out_dirs, force=force, append=False)


def _spread_groups(specs, groups: list[list[int]], data, st, force: bool, out_dirs: list, progress,
                   workers) -> tuple[list[list[int]], dict]:
    """The groups still to train run on worker processes when there is more than one of them and
    `workers` resolves to more than one process: the longest first (`_longest_first`), their records
    appended here in the groups' order, as the sequential path writes them. Returns (the groups left
    to the sequential path: all or none, {spec index: (records, skipped)} of the groups done here or
    found wholly in the store)."""
    check_workers(workers)
    found, todo = {}, []
    for group in groups:
        done = [None if st is None or force else check_same_checkpoints(st.run_records(specs[i].key(data.fingerprint)))
                for i in group]
        if all(done):
            found.update({i: (d, True) for i, d in zip(group, done)})
        else:
            todo.append(group)
    n = resolve_workers(workers, specs[0].device, specs[0].threads, len(todo)) if todo else 1
    if n <= 1:
        return todo, found
    refs = _model_references(specs[i] for g in todo for i in g)
    jobs = [([specs[i] for i in g], [out_dirs[i] for i in g], st.path if st is not None else None, force)
            for g in todo]
    names = [_run_name(specs[g[0]], len(g)) for g in todo]

    def record(k: int, out: list) -> None:  # in the groups' order, while their workers hold the claims
        for recs, skipped in out:
            if st is not None and not skipped:
                st.append(recs)

    first = _longest_first([_run_work([specs[i] for i in g], data) for g in todo], data)
    for k, out in run_jobs(_group_task, jobs, data, n, names=names, first=first, record=record, models=refs):
        found.update(zip(todo[k], out))
        ran = [i for i, (_, s) in zip(todo[k], out) if not s]
        if progress is not None and ran:
            progress(ran)
    return [], found


def _run_name(spec: RunSpec, k: int) -> str:
    more = f" (+{k - 1} replicas)" if k > 1 else ""
    return f"run {'+'.join(spec.peers)} {spec.init} {spec.mode} seed {spec.seed}{more}"


def _run_group(specs: list[RunSpec], data, out_dirs: list, *, resume: bool) -> list[dict]:
    """`run_many`, halved while the group would not fit the memory share."""
    if not specs:
        return []
    models = [_sized_model(specs[0], data, k) for k in range(len(specs[0].peers))]
    bs = specs[0].batch_size or 4096
    if len(specs) > 1 and not _fits_memory(models, bs, len(data.field_sizes), len(specs)):
        half = len(specs) // 2
        return (_run_group(specs[:half], data, out_dirs[:half], resume=resume)
                + _run_group(specs[half:], data, out_dirs[half:], resume=resume))
    resume = resume and any(o is not None for o in out_dirs)
    return run_many(specs, data, out_dirs=out_dirs, resume=resume)


def _sized_model(spec: RunSpec, data, k: int):
    """Peer k as its run builds it, for the memory estimate only: a pretrained peer is its checkpoint's
    architecture (read once; the run reads it from `pretrained`'s cache), which needs no preset, so a
    model added to `models.MODELS` finetunes in a grid as in one run."""
    if spec.from_checkpoint[k]:
        return pretrained.load(checkpoint_path(spec.ckpt_dir, spec.peers[k]), "cpu", expect_fingerprint=data.fingerprint,
                               expect_model=spec.names[k])[0]
    return build(spec.names[k], data.field_sizes, **presets.get(spec.names[k], spec.preset, data.dataset,
                                                                   data.protocol).model)


def pretrain_many(specs: Sequence[PretrainSpec], data, *, out_dirs: Sequence[str | Path | None],
                  store=None, force: bool = False) -> list[tuple[dict, dict]]:
    """`pretrain` of one model label at several seeds (or settings), those not reusable from their
    `out_dirs` trained together as replicas (`fit_replicas`); each result and record is the one
    `pretrain` gives alone (within `ctrkit.training.replicas`'s tolerance). Returns (result, record) per spec."""
    if store is not None:
        _store(store).check_usable()
    jobs = [_pretrain_job(spec, data, out, force) for spec, out in zip(specs, out_dirs)]
    todo = [j for j in jobs if j["result"] is None]
    for j in todo:
        seed_everything(j["init_seed"])  # each replica's init is its sequential run's
        j["model"] = build(j["name"], data.field_sizes, **j["hparams"])
    if todo:
        results = fit_replicas([j["model"] for j in todo], data, [j["cfg"] for j in todo],
                               [j["out"] for j in todo], resume=not force)
        for j, result in zip(todo, results):
            j["result"] = _keyed(result, j)
    return [_pretrain_record(j, data, store, force) for j in jobs]


def pretrain_groups(groups: Sequence[Sequence[PretrainSpec]], data, *, out_dirs: Sequence[Sequence],
                    store=None, force: bool = False, workers: int | str = 1, progress=None) -> list[list[tuple]]:
    """`pretrain_many` of each group (one label's seeds: replicas), with its `out_dirs`, one group after
    another (`workers` 1) or spread over worker processes (`ctrkit.experiments.workers`; "auto":
    `default_workers`; groups with nothing to train or record stay here). With workers the groups
    start longest first (`_longest_first`), so no long group is left to run alone at the end, and
    this process appends their records in the groups' order, as the sequential path does; a failure
    leaves the later groups' finished checkpoints to be reused and recorded by the next call.
    `progress(group index)` as each group finishes. Returns each group's (result, record) per spec."""
    for spec in {(s.model, s.preset): s for g in groups for s in g}.values():  # a model without the preset
        presets.get(split_label(spec.model)[0], spec.preset, data.dataset, data.protocol)  # fails before any training
    out: list = [None] * len(groups)
    if workers != 1:
        check_workers(workers)
        st = _store(store)
        todo = [k for k, (g, o) in enumerate(zip(groups, out_dirs)) if force or any(
            (j := _pretrain_job(s, data, d, force))["result"] is None or (st is not None and not st.has_run(j["key"]))
            for s, d in zip(g, o))]
        n = resolve_workers(workers, groups[0][0].device, groups[0][0].threads, len(todo)) if todo else 1
        if n > 1:
            jobs = [(list(groups[k]), list(out_dirs[k]), force) for k in todo]
            names = [f"baseline {groups[k][0].label} seed {groups[k][0].seed}"
                     + (f" (+{len(groups[k]) - 1} replicas)" if len(groups[k]) > 1 else "") for k in todo]
            def record(_, done: list[tuple]) -> None:  # in the groups' order
                for _, rec in done:
                    if st is not None and (force or not st.has_run(rec["run_key"])):
                        st.append([rec])

            for j, done in run_jobs(_pretrain_task, jobs, data, n, names=names, record=record,
                                    first=_longest_first([_pretrain_work(groups[k], data) for k in todo], data)):
                out[todo[j]] = done
                if progress is not None:
                    progress(todo[j])
    for k in range(len(groups)):
        if out[k] is None:
            out[k] = pretrain_many(groups[k], data, out_dirs=out_dirs[k], store=store, force=force)
            if progress is not None:
                progress(k)
    return out


def _pretrain_task(data, specs: list[PretrainSpec], out_dirs: list, force: bool) -> list[tuple]:
    """`pretrain_many` in a worker process; the parent records the results (`pretrain_groups`)."""
    return pretrain_many(specs, data, out_dirs=out_dirs, store=None, force=force)


def _pretrain_work(group: Sequence[PretrainSpec], data) -> tuple[int, list[tuple[str, dict]]]:
    """(replicas, [(model, hyperparameters)]) of one baselines group, for `_longest_first`."""
    j = _pretrain_job(group[0], data, None, True)
    return len(group), [(j["name"], j["hparams"])]


def _model_references(specs) -> tuple:
    """Worker processes start from a fresh import of ctrkit: a model registered in this process
    (`models.register`) goes to them as the module and name they import its class by
    (`models.reference`; built-in and entry-point models they know). One that cannot (a notebook
    cell's class) is one line before any work, saying what to do."""
    refs = []
    for name in sorted({n for spec in specs for n in spec.names}):
        try:
            refs.append(reference(name))
        except CtrkitError as e:
            raise CtrkitError(f"workers: {e}: put the class in a .py module (importable, e.g. a file next to the "
                              f"notebook) and import it from there, or run this grid with workers=1") from None
    return tuple(r for r in refs if r is not None)


def _run_work(group: Sequence[RunSpec], data) -> tuple[int, list[tuple[str, dict]]]:
    """(replicas, [(model, hyperparameters)] per peer) of one replica group of runs, for
    `_longest_first`: a scratch peer's preset (and `--set` model keys); a pretrained peer's too, as
    its checkpoint's architecture is not read here (an estimate: baselines are pretrained with it). A
    pretrained model of your own has no preset: its result.json's hyperparameters (else its defaults)."""
    spec = group[0]
    model_sets = {k: v for k, v in dict(spec.overrides).items() if k not in TRAIN_DICT_KEYS}

    def hparams(k: int, name: str) -> dict:
        if spec.from_checkpoint[k] and not is_built_in(name):
            found = _pretrain_result(checkpoint_path(spec.ckpt_dir, spec.peers[k])).get("hparams")
            return found if isinstance(found, dict) else {}
        return {**presets.get(name, spec.preset, data.dataset, data.protocol).model,
                **({} if spec.from_checkpoint[k] else model_sets)}

    return len(group), [(name, hparams(k, name)) for k, name in enumerate(spec.names)]


def _longest_first(work: Sequence[tuple[int, list[tuple[str, dict]]]], data) -> list[int]:
    """The groups' indices by estimated work, largest first (ties in the given order): replicas x the
    sum of their models' matrix FLOPs per sample (`forward_flops_per_sample`: a grid's groups train
    on the same rows, and how many epochs each runs is not known before it stops). Started in this
    order on the workers, the long FiBiNET groups run beside the short ones instead of last, alone.
    Each model is built here with two rows per field (gathers count no FLOPs, so the vocabularies do
    not matter and a Criteo-sized table is never allocated), under a forked RNG: nothing a run draws
    changes."""
    cost: dict[str, float] = {}
    fields = [2] * len(data.field_sizes)
    total, x = [], torch.zeros(8, len(fields), dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        for replicas, models in work:
            flops = 0.0
            for name, hparams in models:
                key = json.dumps([name, hparams], sort_keys=True, default=str)
                if key not in cost:
                    cost[key] = forward_flops_per_sample(build(name, fields, **hparams), x)
                flops += cost[key]
            total.append(replicas * flops)
    return sorted(range(len(work)), key=lambda k: -total[k])
