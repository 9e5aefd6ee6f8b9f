"""Why does finetuning alone improve the quick profile's baselines? A fresh optimizer against the run's
own next epoch, from the same best weights.

The quick profile's baselines (the `smoke` preset on 6,400 synthetic training rows, batch 512: 13
steps an epoch) stop at epoch 2-3, and finetuning alone from their best weights (a fresh Adam at the
pretraining lr, `finetune_lr_scale` 1) gains +0.6-0.8% test AUC on Avazu-shaped data on average
(bench/validation_size.py). The run itself also trained on from those weights: its epoch best+1 started
from them at the same lr, with its Adam state (moments of every step so far) and its own batch order.
So, per baseline (the profile's settings, test AUC after every epoch):

- continued: the test AUC after the run's own epoch best+1 (its Adam state, lr not yet decayed);
- fresh lr x1: one epoch from the best weights with a fresh Adam at the same lr, over `--restarts`
  batch orders (the seed's, then seed+1, ...): the spread is what the batch order alone moves;
- fresh lr x0.1: the same at a tenth of the lr (what the plateau decay would have used);
- with `--same-batches`: the run's own epoch best+1 resumed from a replay's checkpoint with Adam's state
  kept (must equal "continued"), reset, or its first moments reset: the optimizer's state alone differs.

No epoch is selected on validation here: each number is the test AUC of the weights one epoch gives,
so the comparison is of what the optimizer does, not of what validation picks. Paired by baseline:
fresh minus continued, mean and 95% t-interval over the baselines.

    .venv/bin/python bench/restart.py --dataset avazu --same-batches
"""
from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import stamp, write  # noqa: E402  (puts the repository on sys.path)
from validation_size import build_model, fit_tracked, split_data, train_dict  # noqa: E402

import torch  # noqa: E402
from ctrkit import data as ctrdata  # noqa: E402
from ctrkit.analysis.stats import t_interval  # noqa: E402
from ctrkit.core.utils import seed_everything  # noqa: E402
from ctrkit.notebook import profiles  # noqa: E402

HERE = Path(__file__).resolve().parent


def one(data, dataset: str, profile: str, name: str, seed: int, restarts: int, same: bool) -> dict:
    train = train_dict(profile, name, dataset, seed)
    seed_everything(seed)
    model = build_model(data, profile, name)
    base, tests = fit_tracked(model, data, train)  # ends holding its best weights
    best = copy.deepcopy(model.state_dict())
    row = {"model": name, "seed": seed, "best_epoch": base["best_epoch"], "epochs_run": len(tests),
           "test_auc": base["test_auc"],
           "continued": tests[base["best_epoch"]] if base["best_epoch"] < len(tests) else None}
    for scale in (1.0, 0.1):
        got = []
        for k in range(restarts):
            model.load_state_dict(best)
            _, after = fit_tracked(model, data, {**train, "seed": seed + k, "epochs": 1, "lr": train["lr"] * scale},
                                   start={"auc": base["valid_auc"], "logloss": base["valid_logloss"]})
            got.append(after[0])
        row[f"fresh_x{scale:g}"] = got
    if same and row["continued"] is not None:
        with tempfile.TemporaryDirectory() as tmp:
            row.update(same_batches(data, profile, name, train, base["best_epoch"], Path(tmp)))
    return row


# Adam's state entries each same-batches arm starts epoch best+1 without (zeroed; "step" 0 is a fresh Adam)
RESETS = {"same_continued": (), "same_fresh": ("step", "exp_avg", "exp_avg_sq"), "same_fresh_m": ("exp_avg",)}


def same_batches(data, profile: str, name: str, train: dict, best_epoch: int, tmp: Path) -> dict:
    """The run replayed to its best epoch into a checkpoint (last.pt: weights, Adam, RNGs), then its
    epoch best+1 resumed from it with Adam's state as it was, all of it reset, or only its first
    moments reset (the second kept): the run's own batches and dropout masks in every arm, so the
    arms differ in the optimizer's state alone. Test AUC after that epoch per arm."""
    replay = tmp / "replay"
    _tracked(data, profile, name, {**train, "epochs": best_epoch}, replay, resume=False)
    got = {}
    for arm, reset in RESETS.items():
        out = tmp / arm
        shutil.copytree(replay, out)
        last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        for state in last["peers"][0]["optimizer"]["state"].values():
            for key in reset:
                state[key] = torch.zeros_like(state[key])
        torch.save(last, out / "last.pt")
        got[arm] = _tracked(data, profile, name, {**train, "epochs": best_epoch + 1}, out, resume=True)[-1]
    return got


def _tracked(data, profile: str, name: str, train: dict, out: Path, resume: bool) -> list[float]:
    """A fresh model of the run's seed trained (or resumed) into `out`; the test AUC after each epoch."""
    seed_everything(train["seed"])
    return fit_tracked(build_model(data, profile, name), data, {**train, "progress": False}, out=out, resume=resume)[1]


def paired(rows: list[dict], key: str) -> dict:
    d = [statistics.fmean(r[key]) - r["continued"] for r in rows if r["continued"] is not None]
    m, lo, hi = t_interval(d)
    return {"n": len(d), "mean": m, "low": lo, "high": hi, "positive": sum(x > 0 for x in d)}


def _interval(d: list[float]) -> str:
    m, lo, hi = t_interval(d)
    return f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def to_markdown(res: dict) -> str:
    s = res["summary"]
    lines = [f"# A fresh optimizer against the run's own next epoch ({res['dataset']}, profile {res['profile']})", "",
             f"{res['date']} · {res['machine']} · `{res['command']}` · synthetic {res['dataset'].capitalize()}-shaped "
             f"data (seed 2021, the protocol's 8:1:1 split), fp32, 1 thread; {res['restarts']} batch orders per "
             "fresh arm", "",
             "Paired by baseline: test AUC one epoch from the best weights, fresh Adam minus the run's own next epoch",
             "", "| fresh Adam at | baselines | mean difference (AUC) | 95% t-interval | fresh higher in |",
             "|:--|--:|--:|:--|--:|"]
    for key, label in (("fresh_x1", "the same lr"), ("fresh_x0.1", "a tenth of the lr")):
        p = s[key]
        lines.append(f"| {label} | {p['n']} | {p['mean']:+.4f} | [{p['low']:+.4f}, {p['high']:+.4f}] | "
                     f"{p['positive']} of {p['n']} |")
    lines += ["", "Per model: test AUC one epoch on, minus the baseline's (at its best epoch); fresh arms averaged over "
              "the batch orders", "", "| model | baselines | best epoch (median) | continued | fresh, same lr | "
              "fresh, lr x0.1 | batch order's sd (same lr) |", "|:--|--:|--:|--:|--:|--:|--:|"]
    for name in dict.fromkeys(r["model"] for r in res["runs"]):
        rs = [r for r in res["runs"] if r["model"] == name and r["continued"] is not None]
        gain = {k: statistics.fmean(statistics.fmean(r[k]) - r["test_auc"] for r in rs) for k in ("fresh_x1", "fresh_x0.1")}
        lines.append(f"| {name} | {len(rs)} | {statistics.median(r['best_epoch'] for r in rs):g} | "
                     f"{statistics.fmean(r['continued'] - r['test_auc'] for r in rs):+.4f} | {gain['fresh_x1']:+.4f} | "
                     f"{gain['fresh_x0.1']:+.4f} | "
                     f"{statistics.fmean(statistics.stdev(r['fresh_x1']) if len(r['fresh_x1']) > 1 else 0.0 for r in rs):.4f} |")
    same = [r for r in res["runs"] if "same_fresh" in r]
    if same:
        lines += ["", "The run's own epoch best+1 resumed from its checkpoint (the same batches and dropout masks), "
                  "Adam's state kept or reset: test AUC minus the run's own next epoch, paired by baseline", "",
                  "| model | baselines | resumed as it was (must be 0) | Adam reset | first moments reset, second kept |",
                  "|:--|--:|--:|:--|:--|"]
        for name in [*dict.fromkeys(r["model"] for r in same), None]:
            rs = [r for r in same if name is None or r["model"] == name]
            cells = [_interval([r[k] - r["continued"] for r in rs]) for k in ("same_fresh", "same_fresh_m")]
            lines.append(f"| {name or 'all'} | {len(rs)} | {max(abs(r['same_continued'] - r['continued']) for r in rs):.4f} | "
                         f"{cells[0]} | {cells[1]} |")
    lines += ["", "Per baseline (test AUC; fresh: each batch order's):", "",
              "| model | seed | best epoch | of | at the best epoch | its next epoch (continued) | fresh, same lr | "
              "fresh, lr x0.1 |", "|:--|--:|--:|--:|--:|--:|:--|:--|"]
    for r in res["runs"]:
        cont = "-" if r["continued"] is None else f"{r['continued']:.4f}"
        lines.append(f"| {r['model']} | {r['seed']} | {r['best_epoch']} | {r['epochs_run']} | {r['test_auc']:.4f} | "
                     f"{cont} | {', '.join(f'{x:.4f}' for x in r['fresh_x1'])} | "
                     f"{', '.join(f'{x:.4f}' for x in r['fresh_x0.1'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="avazu", choices=["criteo", "avazu"])
    ap.add_argument("--profile", default="quick", choices=["quick", "study"])
    ap.add_argument("--models", default="DeepFM,DCN,PNN,FiBiNET")
    ap.add_argument("--seeds", default="2021,2022,2023,2024,2025,2026,2027,2028,2029,2030")
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--same-batches", action="store_true",
                    help="also resume the run's epoch best+1 with Adam's state kept, reset, or its first moments reset")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ctrdata.SmallDataWarning)
    p = profiles.profile(args.profile)
    res = {**stamp("restart.py"), "dataset": args.dataset, "profile": args.profile, "restarts": args.restarts,
           "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = split_data(args.dataset, p["rows"], p.get("split"), 2021, Path(tmp))
        for name in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                res["runs"].append(one(data, args.dataset, args.profile, name, seed, args.restarts, args.same_batches))
                r = res["runs"][-1]
                print(f"{name} {seed}: best {r['best_epoch']}, continued {r['continued']}, fresh {r['fresh_x1']}",
                      flush=True)
    res["summary"] = {k: paired(res["runs"], k) for k in ("fresh_x1", "fresh_x0.1")}
    write(args.out, f"restart-{args.dataset}-{args.profile}", res, to_markdown)


if __name__ == "__main__":
    main()
