"""Later notebooks of a profile rerun side by side in kept output folders, their own runs taken out of the store first.

    python bench/stage_rerun_ab.py --variant before=/tmp/before:/tmp/nbab/before-0 \
        --variant now=/tmp/now:/tmp/nbab/now-0 --notebooks 03_partners,04_peer_count --drop-peers 2,3

A stage late in a profile (03, 04) needs the earlier stages' checkpoints and runs, which take most of
an hour to make on the 2-core machine: this reruns it in a folder that `notebook_ab.py --keep` left,
in place (a run's key names its checkpoint folder, so the folder cannot move). Before each run the
variant's store is put back to its first state without the mutual runs of `--drop-peers` peers (the
stage's own), so the stage trains them again; the earlier stages' records stay. The variants rotate
by repeat; each run's tables are copied out and compared with the first variant's (run-key columns
aside). Each variant should name the folder its own tree made.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from _results import stamp, write
from notebook_ab import run_notebooks, table
from reproduce_ab import interleaved, variants


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=TREE:FOLDER (repeatable; the first is the reference)")
    ap.add_argument("--dataset", default="criteo")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--notebooks", default="03_partners,04_peer_count")
    ap.add_argument("--drop-peers", default="2,3", help="the mutual runs of these peer counts are retrained")
    ap.add_argument("--seeds", default="2021,2022")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="stage-rerun-ab")
    ap.add_argument("--note", default="")
    return ap.parse_args()


def reset_store(folder: Path, dataset: str, drop: set[int]) -> int:
    """The store back to its first state (kept once as `store.jsonl.first`) minus the dropped runs."""
    store = folder / dataset / "store.jsonl"
    first = store.with_name("store.jsonl.first")
    if not first.exists():
        shutil.copyfile(store, first)
    keep = [line for line in first.read_text().splitlines()
            if not ((r := json.loads(line))["mode"] == "mutual" and r["n_peers"] in drop)]
    store.write_text("".join(line + "\n" for line in keep))
    return len(keep)


def one(v: dict, args, out: Path) -> dict:
    folder = Path(v["flags"][0])
    reset_store(folder, args.dataset, {int(n) for n in args.drop_peers.split(",")})
    res = run_notebooks(v, args, folder)
    shutil.copytree(folder / "tables", out / "tables")
    return res


def to_markdown(res: dict) -> str:
    return table(res, "Late stages rerun side by side", tree=lambda v: f"`{v['tree']}` in `{v['flags'][0]}`",
                 stage_head="per repeat (s)",
                 stage=lambda rows, nb: ", ".join(str(r["notebooks"][nb]) for r in rows))


def main() -> None:
    args = parse()
    vs = variants(args.variant)
    root = Path(tempfile.mkdtemp(prefix="stage-rerun-ab-"))
    runs = interleaved(vs, args.repeats, root, lambda v, out: one(v, args, out))
    res = {**stamp("stage_rerun_ab.py"), "dataset": args.dataset, "profile": args.profile, "notebooks": args.notebooks,
           "seeds": args.seeds, "drop_peers": args.drop_peers, "note": args.note, "variants": vs, "runs": runs}
    write(Path(__file__).resolve().parent / "results", args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
