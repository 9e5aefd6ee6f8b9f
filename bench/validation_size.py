"""Is the validation split large enough to stop on? Early stopping and finetuning alone on the same
number of training rows, scored on the protocol's small validation split or on a larger one.

Per arm, model and seed: one baseline trained with the profile's settings (its preset, patience, epoch
cap and batch; the study profile's embedding regularizer 0.01, what its search chose on both synthetic
datasets), its test AUC measured after every epoch. Reported: the epoch validation stopped at (its
best), the test AUC there, the best test AUC of any epoch and the regret between the two (what
stopping on this validation set costs on test), then finetuning alone from those best weights (a
fresh Adam at the checkpoint's lr, lr scale 1, the profile's finetuning cap, the checkpoint counted as
epoch 0), and its test gain over the baseline. The test sets differ between the arms: compare the
regret and the gains, not the AUCs.

A fixed validation set's quirks are shared by every seed trained against it, so seeds are not
independent evidence about it: each arm is repeated over `--draws` splits of the same synthetic rows
(the split's seed), and the table gives each draw's mean regret beside the pooled numbers.

    .venv/bin/python bench/validation_size.py --dataset avazu --models DeepFM,DCN,PNN
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import stamp, write  # noqa: E402  (puts the repository on sys.path)

import torch  # noqa: E402
from ctrkit import data as ctrdata, models  # noqa: E402
from ctrkit.data import synth  # noqa: E402
from ctrkit.data.schema import Split, builtin  # noqa: E402
from ctrkit.training.metrics import auc as roc_auc  # noqa: E402
from ctrkit.core.utils import seed_everything  # noqa: E402
from ctrkit.notebook import profiles  # noqa: E402
from ctrkit.training import loop, presets  # noqa: E402
from ctrkit.training.config import RunConfig  # noqa: E402
from ctrkit.training.evaluation import predict  # noqa: E402

HERE = Path(__file__).resolve().parent


def arms(profile: str) -> dict:
    """{label: (rows, split)}: the protocol's 8:1:1 of the profile's old row count, and 8:5:5 of the
    rows that keep the same training rows."""
    p = profiles.profile(profile)
    train = p["rows"] * p["split"][0] // sum(p["split"]) if p.get("split") else p["rows"] * 8 // 10
    return {"8:1:1": (train * 10 // 8, None), "8:5:5": (train * 18 // 8, (8, 5, 5))}


def train_dict(profile: str, name: str, dataset: str, seed: int) -> dict:
    p = profiles.profile(profile)
    t = {**presets.get(name, p["preset"], dataset).train, "seed": seed, "epochs": p["epochs"],
         "patience": p["patience"]}
    if profile == "study":  # 01's search chose it for every model on both synthetic datasets; 512: `min_steps`
        t.update(embedding_regularizer=0.01, batch_size=512)
    return t


def build_model(data, profile: str, name: str):
    """Model `name` at the profile's preset, for `data` (seed first for a reproducible init)."""
    return models.build(name, data.field_sizes, **presets.get(name, profiles.profile(profile)["preset"]).model)


def fit_tracked(model, data, train: dict, start: dict | None = None, out: Path | None = None,
                resume: bool = False) -> tuple[dict, list[float]]:
    """`loop.fit`'s training, with the model's test AUC after every epoch: (result's peer, test AUCs).
    With `out`: its checkpoints there (`resume` continues from its last.pt)."""
    config = RunConfig.single(train)
    Xte, yte = data.tensors("test")
    tests: list[float] = []
    peer = loop.Peer(model, config.peers[0], index=0, learns_from=[], trainable=True, device=config.torch_device,
                     start=start)
    peer.best_path = out / "best.pt" if out is not None else None
    r = loop.train_peers([peer], data, config, out_dir=out, resume=resume,
                         callback=lambda row: tests.append(roc_auc(yte.numpy(), predict(model, Xte).numpy())))
    return r["peers"][0], tests


def split_data(dataset: str, rows: int, split, draw: int, tmp: Path):
    """The synthetic rows (seed 2021, the profiles' own) split with seed `draw`: 8:1:1 the protocol's."""
    raw = synth.generate(dataset, rows, tmp / f"raw-{rows}", seed=2021)
    source = dataset if split is None else builtin(dataset).replace(split=Split(ratios=tuple(split), seed=draw))
    return ctrdata.load(ctrdata.prepare(source, raw, tmp / f"{rows}-{draw}", seed=draw, progress=False))


def one(data, dataset: str, profile: str, name: str, seed: int) -> dict:
    train = train_dict(profile, name, dataset, seed)
    seed_everything(seed)
    model = build_model(data, profile, name)
    base, tests = fit_tracked(model, data, train)  # ends holding its best weights
    ft, _ = fit_tracked(model, data, {**train, "epochs": profiles.profile(profile)["finetune_epochs"]},
                        start={"auc": base["valid_auc"], "logloss": base["valid_logloss"]})
    best_test = max(tests)
    return {"model": name, "seed": seed, "stopped_at": base["best_epoch"], "test_auc": base["test_auc"],
            "best_test_epoch": 1 + tests.index(best_test), "best_test_auc": best_test,
            "regret": best_test - base["test_auc"], "finetune_best_epoch": ft["best_epoch"],
            "finetune_test_auc": ft["test_auc"], "finetune_gain_pct": 100 * (ft["test_auc"] / base["test_auc"] - 1)}


def summary(rows: list[dict]) -> dict:
    draws = sorted({r["draw"] for r in rows})
    return {"runs": len(rows), "draws": draws,
            "mean_regret_per_draw": [statistics.fmean(r["regret"] for r in rows if r["draw"] == d) for d in draws],
            "stopped_at_best_test_epoch": sum(r["stopped_at"] == r["best_test_epoch"] for r in rows),
            "mean_regret": statistics.fmean(r["regret"] for r in rows),
            "max_regret": max(r["regret"] for r in rows),
            "finetune_kept_pretrained": sum(r["finetune_best_epoch"] == 0 for r in rows),
            "mean_finetune_gain_pct": statistics.fmean(r["finetune_gain_pct"] for r in rows)}


def to_markdown(res: dict) -> str:
    lines = [f"# Validation size: early stopping and finetuning alone ({res['dataset']}, profile {res['profile']})", "",
             f"{res['date']} · {res['machine']} · `{res['command']}` · synthetic {res['dataset'].capitalize()}-shaped "
             f"data (seed 2021), fp32, 1 thread", "",
             "| split | rows train / valid / test | runs | stopped at the best test epoch | mean regret (AUC) | "
             "per draw | max regret | finetuning alone kept the baseline | mean finetuning-alone gain on test |",
             "|:--|:--|--:|--:|--:|:--|--:|--:|--:|"]
    for label, arm in res["arms"].items():
        s, r = arm["summary"], arm["rows_per_split"]
        lines.append(f"| {label} of {arm['rows']:,} | {r['train']:,} / {r['valid']:,} / {r['test']:,} | {s['runs']} | "
                     f"{s['stopped_at_best_test_epoch']} | {s['mean_regret']:.4f} | "
                     f"{', '.join(f'{x:.4f}' for x in s['mean_regret_per_draw'])} | {s['max_regret']:.4f} | "
                     f"{s['finetune_kept_pretrained']} | {s['mean_finetune_gain_pct']:+.2f}% |")
    lines += ["", "Per run (epochs counted from 1; finetuning's epoch 0 is the baseline's best weights):", "",
              "| split | draw | model | seed | stopped at | test AUC | best test epoch | its test AUC | regret | "
              "finetuning best epoch | finetuned test AUC | gain |", "|:--|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for label, arm in res["arms"].items():
        for r in arm["runs"]:
            lines.append(f"| {label} | {r['draw']} | {r['model']} | {r['seed']} | {r['stopped_at']} | {r['test_auc']:.4f} | "
                         f"{r['best_test_epoch']} | {r['best_test_auc']:.4f} | {r['regret']:.4f} | "
                         f"{r['finetune_best_epoch']} | {r['finetune_test_auc']:.4f} | {r['finetune_gain_pct']:+.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="avazu", choices=["criteo", "avazu"])
    ap.add_argument("--profile", default="study", choices=["quick", "study"])
    ap.add_argument("--models", default="DeepFM,DCN,PNN")
    ap.add_argument("--seeds", default="2021,2022,2023")
    ap.add_argument("--draws", default="2021,2022,2023", help="split seeds: each a validation/test draw")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ctrdata.SmallDataWarning)
    seeds = [int(s) for s in args.seeds.split(",")]
    draws = [int(s) for s in args.draws.split(",")]
    res = {**stamp("validation_size.py"), "dataset": args.dataset, "profile": args.profile, "arms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (rows, split) in arms(args.profile).items():
            runs = []
            for draw in draws:
                data = split_data(args.dataset, rows, split, draw, Path(tmp))
                for name in args.models.split(","):
                    for seed in seeds:
                        runs.append({"draw": draw, **one(data, args.dataset, args.profile, name, seed)})
                        print(f"{label} draw {draw} {name} {seed}: stopped at {runs[-1]['stopped_at']}, regret "
                              f"{runs[-1]['regret']:.4f}, finetuning {runs[-1]['finetune_gain_pct']:+.2f}%", flush=True)
            res["arms"][label] = {"rows": rows, "split": list(split) if split else [8, 1, 1],
                                  "rows_per_split": data.rows, "runs": runs, "summary": summary(runs)}
    write(args.out, f"validation-size-{args.dataset}-{args.profile}", res, to_markdown)


if __name__ == "__main__":
    main()
