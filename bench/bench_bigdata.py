"""One model's training on a prepared (real-size) dataset through ``ctrkit.training.loop.fit``, for a bounded
time: load time, samples/s, the epoch time that implies, and peak RSS (what a full epoch needs).

``fit`` loads the training and validation splits, then trains; after ``--seconds`` of training the
run is stopped through fit's ``stop`` hook (after a step: ``RunStopped``, nothing written). Peak RSS
(``ru_maxrss``) covers loading, the optimizer state and the training steps, which is what a whole
epoch holds too (an epoch only repeats steps); the validation pass at epoch end streams batches.

    nice -n 10 .venv/bin/python bench/bench_bigdata.py --data /work/bigdata/criteo --model DeepFM \
        --preset bars --seconds 300 --threads auto
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a ctrkit prepare --out folder")
    ap.add_argument("--model", default="DeepFM")
    ap.add_argument("--preset", default="bars")
    ap.add_argument("--protocol", default="x4_001")
    ap.add_argument("--seconds", type=float, default=300.0,
                    help="training time before the stop (inf: the whole epoch, then validation and test)")
    ap.add_argument("--threads", default="auto")
    ap.add_argument("--out", default=None, help="result JSON (default: print only)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from ctrkit import data as cdata, models
    from ctrkit.training import presets
    from ctrkit.training.config import RunConfig
    from ctrkit.training.loop import RunStopped, fit
    from ctrkit.core.utils import seed_everything, write_json_atomic
    from ctrkit.kernels import env_info

    t0 = time.perf_counter()
    d = cdata.load(args.data)
    p = presets.get(args.model, args.preset, dataset=d.dataset, protocol=args.protocol)
    seed_everything(2021)
    model = models.build(args.model, d.field_sizes, **p.model)
    cfg = RunConfig.single({**p.train, "epochs": 1, "device": "cpu", "threads": args.threads, "progress": False})
    calls = []  # time of every stop check: one per training step

    def stop() -> bool:
        calls.append(time.perf_counter())
        return calls[-1] - calls[0] > args.seconds

    result = None  # fit's result when the epoch ends before --seconds (a whole epoch, validated and tested)
    try:
        result = fit(model, d, cfg, stop=stop)
    except RunStopped:
        pass
    steps = len(calls) - 1  # steps between the first and the last check
    train_s = calls[-1] - calls[0] if steps > 0 else float("nan")
    sps = steps * cfg.batch_size / train_s if steps > 0 else None
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "data": args.data, "rows": d.rows, "model": args.model, "preset": args.preset,
           "params": sum(q.numel() for q in model.parameters()), "batch_size": cfg.batch_size,
           "seconds_to_first_step": calls[0] - t0 if calls else None, "timed_steps": steps,
           "samples_per_s": sps, "epoch_seconds_estimate": d.rows["train"] / sps if sps else None,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "loadavg": os.getloadavg(), "env": env_info("cpu"),
           "whole_epoch": result is not None, "wall_s": time.perf_counter() - t0}
    if result is not None:
        res.update({k: result[k] for k in ("valid_auc", "valid_logloss", "test_auc", "test_logloss", "seconds")})
    print(json.dumps(res, indent=2))
    if args.out:
        write_json_atomic(args.out, res)


if __name__ == "__main__":
    main()
