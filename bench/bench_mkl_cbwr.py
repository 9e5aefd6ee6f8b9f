"""What MKL's strict reproducibility mode (`MKL_CBWR=AUTO,STRICT`, set by `import ctrkit`) costs a training step.

    python bench/bench_mkl_cbwr.py --repeats 3

Each (model, size) trains the same steps, on the same random batch from the same initial weights, 1
thread, in a fresh process per mode (MKL reads the mode once, at its first product), the modes
interleaved and their order rotating by repeat. It reports the median ms per step of each mode,
whether each mode ends with the same loss bits in every repeat (deterministic at 1 thread), and
whether the two modes end with the same bits (measured: not always; strict mode also changes how some
1-thread products are computed, so switching it changes results in their last bits).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _results import stamp, write

_STEP = """
import json, sys, time, torch
torch.set_num_threads(1)
from ctrkit.kernels import for_device
from ctrkit.models import build
from ctrkit.training import presets
name, preset, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
m = for_device(build(name, [50] * 39, **presets.get(name, preset).model), "cpu")
g = torch.Generator().manual_seed(1)
X, y = torch.randint(0, 50, (batch, 39), generator=g), torch.randint(0, 2, (batch,), generator=g).float()
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m(X).view(-1), y)
    loss.backward()
    opt.step()
    return loss
for _ in range(20):
    step()
t = time.perf_counter()
for _ in range(steps):
    loss = step()
print(json.dumps({"ms": (time.perf_counter() - t) / steps * 1e3, "loss": float(loss).hex()}))
"""
MODES = ["AUTO,STRICT", "AUTO"]


def one(name: str, preset: str, batch: int, steps: int, mode: str) -> dict:
    env = {**os.environ, "MKL_CBWR": mode, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-c", _STEP, name, preset, str(batch), str(steps)], env=env,
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def to_markdown(res: dict) -> str:
    lines = ["# MKL strict reproducibility mode: cost per training step", "",
             f"{res['date']} | {res['machine']} | `{res['command']}`", "", res["note"], "",
             "| model | preset (batch) | strict ms/step per repeat | auto ms/step per repeat | strict / auto (medians) "
             "| each mode's final loss the same bits every repeat | strict == auto bits |", "|---|---|---|---|---:|---|---|"]
    for row in res["rows"]:
        s, a = row["AUTO,STRICT"], row["AUTO"]
        lines.append(f"| {row['model']} | {row['preset']} ({row['batch']}) | {', '.join(f'{x:.2f}' for x in s)} | "
                     f"{', '.join(f'{x:.2f}' for x in a)} | {statistics.median(s) / statistics.median(a):.2f}x | "
                     f"{row['repeatable']} | {row['same_bits']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="DeepFM,DCN,PNN,FiBiNET")
    ap.add_argument("--sizes", default="smoke:512:300,quick:2048:100", help="preset:batch:steps,...")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tag", default="mkl-cbwr-cpu")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    rows = []
    for size in args.sizes.split(","):
        preset, batch, steps = size.split(":")
        for name in args.models.split(","):
            row = {"model": name, "preset": preset, "batch": int(batch), **{m: [] for m in MODES}}
            losses = {m: set() for m in MODES}
            for r in range(args.repeats):
                for mode in MODES[r % 2:] + MODES[:r % 2]:
                    got = one(name, preset, int(batch), int(steps), mode)
                    row[mode].append(round(got["ms"], 3))
                    losses[mode].add(got["loss"])
            row["repeatable"] = all(len(v) == 1 for v in losses.values())
            row["same_bits"] = row["repeatable"] and losses[MODES[0]] == losses[MODES[1]]
            print(row, flush=True)
            rows.append(row)
    res = {**stamp("bench_mkl_cbwr.py"), "note": args.note, "rows": rows}
    write(Path(__file__).resolve().parent / "results", args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
