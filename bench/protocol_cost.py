"""Where the time of a `ctrkit reproduce` run goes: per notebook, per stage, per model.

Reads a reproduce output folder (``--out`` of ``ctrkit reproduce``): the notebook markers
``.done/<job>.json`` (seconds and finish time of every executed notebook), the results stores
``<dataset>/store.jsonl`` (one record per peer per training run, with the run's seconds and write
time) and, when present, the executed notebooks' per-cell durations (papermill metadata). A run is
put in the notebook whose time window [finished - seconds, finished] holds its write time; its stage
comes from its record:

    pretraining   mode "baseline" (01)
    scratch       init "scratch" (mutual and alone from scratch, 02)
    finetune grid init "pretrained", mode mutual/alone, all the profile's models as peers (02's sweep
                  over weights x lr scales, the chosen setting among them)
    partners      pretrained, 2 peers (03)        peer count    pretrained, other peer counts (04)
    controls      mode kd / ensemble
    notebook rest the notebook's seconds not spent in runs (data, evaluation, tables, figures, kernel)

    .venv/bin/python bench/protocol_cost.py results --tag quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("pretraining", "scratch", "finetune grid", "partners", "peer count", "controls", "notebook rest")


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def load_notebooks(out: Path) -> list[dict]:
    nbs = []
    for marker in sorted((out / ".done").glob("*.json")):
        m = json.loads(marker.read_text())
        end = _time(m["finished"])
        # markers keep whole seconds of finish time: widen the window by 1 s each side
        nbs.append({"job": marker.stem, "seconds": float(m["seconds"]), "start": end - m["seconds"] - 1, "end": end + 1,
                    "dataset": (m.get("parameters") or {}).get("dataset")})
    return sorted(nbs, key=lambda n: n["end"])


def load_runs(out: Path) -> list[dict]:
    """One entry per training run (a run's peers share one append): its seconds, stage and models."""
    runs = {}
    for store in sorted(out.glob("*/store.jsonl")):
        for line in store.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            key = r.get("append_id") or r.get("run_key")
            run = runs.setdefault(key, {"seconds": float(r.get("seconds") or 0.0), "at": _time(r["written_at"]),
                                        "dataset": r.get("dataset"), "record": r, "models": []})
            run["models"].append(r.get("model"))
    return list(runs.values())


def stage_of(r: dict, n_models: int) -> str:
    if r.get("mode") == "baseline":
        return "pretraining"
    if r.get("mode") in ("kd", "ensemble"):
        return "controls"
    if r.get("init") == "scratch":
        return "scratch"
    n = int(r.get("n_peers") or 1)
    if n == n_models:
        return "finetune grid"
    return "partners" if n == 2 else "peer count"


def cell_times(out: Path, job: dict, top: int) -> list[tuple[float, str]]:
    """The `top` slowest cells of the executed notebook (papermill's per-cell duration), if found."""
    for path in out.glob(f"notebooks/**/{job['job'].split('_', 1)[-1]}.ipynb"):
        if job["dataset"] and job["dataset"] not in path.parts and not job["job"].startswith(("05", "06")):
            continue
        cells = json.loads(path.read_text()).get("cells", [])
        timed = [(float((c.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0),
                  "".join(c.get("source", "")).strip().splitlines()[0][:70] if c.get("source") else "")
                 for c in cells if c.get("cell_type") == "code"]
        return sorted(timed, reverse=True)[:top]
    return []


def analyse(out: Path, n_models: int, top_cells: int) -> dict:
    nbs, runs = load_notebooks(out), load_runs(out)
    if not nbs:
        raise SystemExit(f"protocol_cost: no notebook markers in {out / '.done'} (is it a ctrkit reproduce --out?)")
    by_nb = {n["job"]: defaultdict(float) for n in nbs}
    by_model = defaultdict(float)  # pretraining seconds per model
    with_fibinet = defaultdict(float)  # multi-peer seconds of runs with / without FiBiNET
    unplaced = 0.0
    for run in runs:
        nb = next((n for n in nbs if n["start"] <= run["at"] <= n["end"] and n["dataset"] in (None, run["dataset"])), None)
        st = stage_of(run["record"], n_models)
        if nb is None:
            unplaced += run["seconds"]
            continue
        by_nb[nb["job"]][st] += run["seconds"]
        if st == "pretraining":
            by_model[run["models"][0]] += run["seconds"]
        else:
            with_fibinet["with FiBiNET" if "FiBiNET" in run["models"] else "without FiBiNET"] += run["seconds"]
    for n in nbs:
        n["stages"] = dict(by_nb[n["job"]])
        n["stages"]["notebook rest"] = max(0.0, n["seconds"] - sum(by_nb[n["job"]].values()))
        n["slowest_cells"] = cell_times(out, n, top_cells)
    total = sum(n["seconds"] for n in nbs)
    stages = {s: sum(n["stages"].get(s, 0.0) for n in nbs) for s in STAGES}
    return {"out": str(out), "total_seconds": total, "stages": stages, "notebooks": nbs,
            "pretraining_by_model": dict(by_model), "finetuning_runs_by_fibinet": dict(with_fibinet),
            "runs": len(runs), "unplaced_run_seconds": unplaced}


def to_markdown(res: dict, note: str) -> str:
    tot = res["total_seconds"] or 1.0
    lines = [f"# Time of a ctrkit reproduce run by stage ({res['date']})", "",
             f"Source: `{res['out']}` ({len(res['notebooks'])} notebooks, {res['runs']} training runs). "
             f"Machine: {res['machine']}. Command: `{res['command']}`. {note}", "",
             f"Total notebook time: {tot:,.0f} s ({tot / 60:.1f} min).", "",
             "| stage | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {s} | {v:,.0f} | {v / tot:.0%} |" for s, v in res["stages"].items() if v]
    lines += ["", "| notebook | seconds | " + " | ".join(STAGES) + " |", "|---|---:|" + "---:|" * len(STAGES)]
    for n in res["notebooks"]:
        lines.append(f"| {n['job']} | {n['seconds']:,.0f} | " + " | ".join(f"{n['stages'].get(s, 0):,.0f}" for s in STAGES) + " |")
    pm = res["pretraining_by_model"]
    if pm:
        pt = sum(pm.values()) or 1.0
        lines += ["", "Pretraining by model: " + ", ".join(f"{m} {v:,.0f} s ({v / pt:.0%})" for m, v in
                                                            sorted(pm.items(), key=lambda kv: -kv[1])) + "."]
    fb = res["finetuning_runs_by_fibinet"]
    if fb:
        lines += ["", "Runs after pretraining: " + ", ".join(f"{k} {v:,.0f} s" for k, v in fb.items()) + "."]
    slow = [(t, n["job"], src) for n in res["notebooks"] for t, src in n["slowest_cells"]]
    if slow:
        lines += ["", "Slowest cells: " + "; ".join(f"{j} `{s}` {t:,.0f} s" for t, j, s in sorted(slow, reverse=True)[:8]) + "."]
    if res["unplaced_run_seconds"]:
        lines += ["", f"Runs outside every notebook's window (earlier runs reused from the store): "
                      f"{res['unplaced_run_seconds']:,.0f} s, not counted."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a ctrkit reproduce --out folder")
    ap.add_argument("--models", type=int, default=4, help="the profile's number of models (the 02 grid's peers)")
    ap.add_argument("--top-cells", type=int, default=3)
    ap.add_argument("--tag", default="protocol-cost")
    ap.add_argument("--note", default="")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from ctrkit.core.utils import atomic_path, write_json_atomic
    from ctrkit.kernels import env_info
    res = analyse(Path(args.out), args.models, args.top_cells)
    now = dt.datetime.now(dt.timezone.utc)
    info = env_info()
    res.update(date=now.isoformat(timespec="seconds"), machine=f"{info['cpu']}, {info['cpu_count']} cores",
               command="python bench/protocol_cost.py " + " ".join(sys.argv[1:] if argv is None else argv), note=args.note)
    stem = Path(args.results) / f"{now:%Y-%m-%d}-{args.tag}"
    write_json_atomic(stem.with_suffix(".json"), res)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(to_markdown(res, args.note))
    print(to_markdown(res, args.note))


if __name__ == "__main__":
    main()
