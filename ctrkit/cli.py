"""The `ctrkit` command. Each subcommand parses its flags here and calls one library function.

Errors meant for the user are CtrkitError: printed as one line `ctrkit: error: ...`, exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

# Nothing heavy at import time: torch loads inside main(), where Ctrl-C and errors are handled.
from ctrkit.core.errors import CtrkitError


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


class _Given(argparse.Action):
    """Store a flag's value and note it in `args.given` (dest -> the flag as typed, for messages): a
    flag at its default and one the user typed then differ, so a conflict (--seed with --seeds) is
    caught even when the typed value equals the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {**getattr(namespace, "given", {}), self.dest: f"{self.option_strings[0]} {values}"}


def _seed(text: str, name: str = "--seed") -> int:
    """A `synth`/`prepare` seed: the rule and words of synth's own check (torch's signed 64-bit
    range), so the two commands take the same seeds. (pretrain/mutual's --seed is checked, in other
    words, where the run config is.)"""
    from ctrkit.core.utils import seed_problem

    try:
        seed = int(text)
    except ValueError:
        seed = text
    if seed_problem(seed):
        raise CtrkitError(f"{name}: {seed_problem(seed)}")
    return seed


def _run_flags(s: argparse.ArgumentParser) -> None:
    """The flags `pretrain` and `mutual` share."""
    s.add_argument("--preset", default="quick",
                   help="model and training sizes: smoke, quick, bars (the BARS winners) or full (default quick)")
    s.add_argument("--epochs", type=int, default=None, action=_Given, help="the cap on epochs (default: the preset's)")
    s.add_argument("--device", default="auto", action=_Given, help="auto (CUDA when present), cpu, cuda or cuda:N")
    s.add_argument("--amp", default="auto", action=_Given, choices=["auto", "bf16", "off"],
                   help="bf16 autocast or fp32")
    s.add_argument("--graph", default="auto", choices=["auto", "on", "off"],
                   help="CUDA: the whole training step as one replayed CUDA graph (auto: when it captures)")
    s.add_argument("--compile", default="off", choices=["off", "on"],
                   help="train each peer through torch.compile of its reference maths")
    s.add_argument("--threads", default="auto", action=_Given, help="CPU threads: a number, or auto (the cores other "
                   "processes leave free; OMP_NUM_THREADS when set)")
    s.add_argument("--seed", type=int, default=2021, action=_Given,
                   help="seeds the initialization, the batch order and dropout (default 2021)")
    s.add_argument("--seeds", type=_seed_list, default=None, metavar="S1,S2,...",
                   help="one run per seed; --out and --ckpt-dir then hold one seed<S> folder per seed")
    s.add_argument("--replicas", type=_replicas_arg, default="auto", metavar="N|auto", action=_Given,
                   help="with --seeds: seeds trained together in one batched step (auto: up to 8 on a GPU, 1 on "
                        "the CPU, where one run at a time measured faster and each seed's result is its --seed run's, "
                        "bit for bit; replicas agree within float tolerance)")
    s.add_argument("--set", dest="overrides", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a train-config key (lr, patience, ...) or a model hyperparameter; repeatable")


def _seed_list(text: str, *, at_least: int = 1) -> list[int]:
    """--seeds: comma-separated seeds under the one seed rule (`core.utils.seeds_problem`)."""
    from ctrkit.core.utils import seeds_problem

    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CtrkitError(f"--seeds {text!r}: expected comma-separated integers (e.g. 2026,2027,2028)") from None
    if seeds_problem(seeds, at_least=at_least):
        raise CtrkitError(f"--seeds {text!r}: {seeds_problem(seeds, at_least=at_least)}")
    return seeds


def _replicas_arg(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise CtrkitError(f"--replicas: expected an integer >= 1 or auto, got {text!r}")
    return int(text)


def _max_replicas(args) -> int:
    """--replicas resolved: auto is the library's rule for the device (`runs.default_max_replicas`)."""
    from ctrkit.experiments import runs

    return runs.default_max_replicas(args.device) if args.replicas == "auto" else args.replicas


def _overrides(pairs: list[tuple[str, str]], model_names: list[str]) -> dict:
    """`--set` values as YAML literals ("0.01", "[400, 400]", "{AUC: 1, logloss: -1}"); names stay names."""
    import yaml

    from ctrkit import models

    strings = {"amp", "device", "threads"} | {k for n in model_names for k, v in models.hparam_defaults(n).items()
                                                if isinstance(v, str)}
    out = {}
    for key, text in pairs:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            reason = " ".join(str(e).split())  # YAML's message spans lines: one line here
            raise CtrkitError(f"--set {key}={text}: not a YAML/JSON literal ({reason})") from None
        if key in strings or (key == "monitor" and not isinstance(value, dict)):
            value = text  # YAML 1.1 would read amp=off as false
        if isinstance(value, str) and key in ("lr", "min_lr", "lr_decay", "clip_grad_norm"):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        out[key] = value
    return out


def _settings(args, spec_class) -> dict:
    """The flags named like fields of `spec_class` (RunSpec, PretrainSpec): a new field with a flag
    of its name needs nothing here. `model`, `peers`, `overrides` and `progress` are the caller's."""
    import dataclasses

    own = {"model", "peers", "overrides", "progress"}
    out = {f.name: getattr(args, f.name) for f in dataclasses.fields(spec_class)
           if f.name not in own and hasattr(args, f.name)}
    if "threads" in out:
        out["threads"] = _threads(out["threads"])
    return out


def _threads(text: str, name: str = "--threads"):
    try:
        return text if text == "auto" else int(text)
    except ValueError:
        raise CtrkitError(f"{name}: expected a number or auto, got {text!r}") from None


# `--set` keys that have a flag of their own. Each becomes that flag's value, so one setting has one
# path: pretrain let `--set` win over the flag, mutual the flag (and its loop never read `--set seed`,
# `amp`, `threads` or `device` at all); both given with different values is an error naming both.
_FLAGGED = ("epochs", "seed", "amp", "threads", "device", "batch_size")


def _fold_sets(args) -> None:
    """Move the `--set` keys of `_FLAGGED` onto their flags (`args.given` notes them as given)."""
    given, rest = dict(getattr(args, "given", {})), []
    for key, text in args.overrides:
        if key not in _FLAGGED or not hasattr(args, key):  # pretrain has no --batch-size: a train key there
            rest.append((key, text))
            continue
        said, value = f"--set {key}={text}", _set_value(key, text)
        if key in given and _same_value(key, getattr(args, key)) != _same_value(key, value):
            raise CtrkitError(f"{given[key]} and {said} disagree: give one")
        if args.command == "mutual" and key in ("epochs", "batch_size") and key not in given:
            # mutual always trained with these as train keys: kept there, a stored run's key stays its key
            rest.append((key, text))
            continue
        given.setdefault(key, said)
        setattr(args, key, value)
    args.overrides, args.given = rest, given


def _set_value(key: str, text: str):
    """A `--set` value of a key that has a flag, checked as the flag would be and in the flag's form;
    an error names the `--set` key, not the flag the user did not type."""
    from ctrkit.core.utils import resolve_device
    from ctrkit.training.config import AMP_CHOICES

    said = f"--set {key}={text}"
    if key == "seed":
        return _seed(text, f"--set {key}")
    if key == "amp" and text not in AMP_CHOICES:
        raise CtrkitError(f"{said}: expected one of {', '.join(AMP_CHOICES)}")
    if key == "threads":
        _threads(text, said)
    if key == "device":
        try:
            resolve_device(text)
        except CtrkitError as e:  # its message names --device; here the value came from --set
            raise CtrkitError(f"{said}: {str(e).removeprefix(f'--device {text}: ').removeprefix('--device ')}") from None
    if key in ("epochs", "batch_size"):
        try:
            return int(text)
        except ValueError:
            raise CtrkitError(f"{said}: expected an integer") from None
    return text


def _same_value(key: str, value):
    """A flag's value as compared with its `--set` twin: threads "4" and 4 are one setting."""
    return _threads(str(value)) if key == "threads" else value


def _reconcile(args) -> None:
    """`pretrain`/`mutual` flags that contradict each other or would be ignored, before any work."""
    _fold_sets(args)
    given = args.given
    if args.seeds and "seed" in given:
        raise CtrkitError(f"{given['seed']} and --seeds {','.join(map(str, args.seeds))}: give one "
                          f"(--seeds trains one run per seed)")
    if "replicas" in given and not args.seeds:
        # speed only: replicas agree with one run at a time, so the run is what the user asked for
        warnings.warn(f"{given['replicas']} ignored: it batches the seeds of --seeds, and there is none")


def _unused_mutual_flags(args, spec) -> None:
    """A mutual flag this run would not use is an error: the run would quietly differ from the command."""
    from ctrkit.training.config import weight_matters

    given, settings = getattr(args, "given", {}), spec.settings()
    if not weight_matters(spec.mode):  # nobody learns from a peer: the mutual term's flags do nothing
        for dest, neutral in (("weight", 0.0), ("warmup_steps", 0), ("divergence", "mse")):
            if dest in given and getattr(args, dest) != neutral:
                raise CtrkitError(f"{given[dest]}: --mode {spec.mode} has no mutual term, so it would be ignored; "
                                  f"drop it or choose another --mode")
    for dest in ("ckpt_dir", "finetune_lr_scale", "finetune_epochs", "finetune_monitor"):
        if dest in given and settings[dest] is None:  # `RunSpec.settings`: None is what this run does not use
            raise CtrkitError(f"{given[dest]}: --init {spec.init} --mode {spec.mode} "
                              f"{'loads' if dest == 'ckpt_dir' else 'finetunes'} no checkpoint, so it would be "
                              f"ignored; drop it or use --init pretrained")


def _add_synth(sub) -> None:
    s = sub.add_parser("synth", help="write a synthetic Criteo-/Avazu-/Frappe-/MovieLens-shaped raw file with a hidden ground truth")
    s.add_argument("dataset", choices=["criteo", "avazu", "frappe", "movielens"],
                   help="whose columns and shapes to imitate")
    s.add_argument("--rows", type=int, required=True, help="rows to write")
    s.add_argument("--out", required=True, help="folder to write train.txt (criteo) or train.csv into")
    s.add_argument("--seed", type=_seed, default=2021, help="seeds the hidden ground truth and the rows (default 2021)")
    s.add_argument("--gzip", action="store_true", help="write train.txt.gz / train.csv.gz")
    s.add_argument("--force", action="store_true", help="replace a file that ctrkit synth wrote before")


def _add_prepare(sub) -> None:
    s = sub.add_parser("prepare", help="raw files (or a hub id) -> processed dataset directory")
    s.add_argument("dataset", nargs="?", default=None, help="built-in: criteo, avazu, frappe or movielens (or --schema)")
    s.add_argument("--schema", default=None, help="a dataset schema file (.yaml) describing your own data")
    s.add_argument("--raw", required=True, help="file (.csv/.tsv/.txt, .gz, .parquet), directory with train/valid/test, or hf://<hub id>")
    s.add_argument("--out", required=True, help="the processed dataset directory to write")
    s.add_argument("--protocol", default=None, help="built-in datasets: x4_001, x4_002 or x1 (BARS)")
    s.add_argument("--on-bad-lines", default="error", choices=["error", "skip"],
                   help="a malformed row: stop with its line number (error, the default) or skip and count it")
    s.add_argument("--seed", type=_seed, default=None, help="split seed (default: the schema's, 2021)")
    s.add_argument("--force", action="store_true", help="replace a previous ctrkit output in --out")
    s.add_argument("--json", action="store_true", help="last stdout line: one JSON object")


def _add_info(sub) -> None:
    s = sub.add_parser("info", help="rows per split, CTR and vocabulary sizes of a processed dataset")
    s.add_argument("data", help="a processed dataset directory (`ctrkit prepare --out`)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the text")


def _add_pretrain(sub) -> None:
    s = sub.add_parser("pretrain", help="train one model with the BARS protocol")
    s.add_argument("--data", required=True, help="a processed dataset directory (`ctrkit prepare --out`)")
    s.add_argument("--model", required=True, help=_model_names())
    s.add_argument("--out", default=None, help="folder for best.pt and last.pt (default runs/<dataset>/seed<S>/<model>; "
                   "with --seeds runs/<dataset>, one seed<S>/<model> folder per seed)")
    s.add_argument("--resume", action="store_true",
                   help="continue from --out's last.pt: the result of an uninterrupted run")
    s.add_argument("--store", default=None, help="also record the baseline in this results store (.jsonl)")
    _run_flags(s)
    s.add_argument("--json", action="store_true", help="last stdout line: one JSON object (the result)")


def _model_names() -> str:
    """The models `--model` takes: the built-in ones and those installed packages declare (their entry
    points' names, read without importing them or torch, so the help stays fast)."""
    from importlib import metadata

    # the group of ctrkit.models.ENTRY_POINTS (not imported here: it loads torch)
    plugins = sorted({ep.name for ep in metadata.entry_points(group="ctrkit.models")})
    names = ["DeepFM", "DCN", "PNN", "FiBiNET", "FM", "LR", *plugins]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _add_mutual(sub) -> None:
    s = sub.add_parser("mutual", help="train N peers mutually (or a control: alone, kd, ensemble)")
    s.add_argument("--data", required=True, help="a processed dataset directory (`ctrkit prepare --out`)")
    s.add_argument("--peers", required=True, help="comma-separated model names, e.g. DeepFM,DCN,PNN,FiBiNET")
    s.add_argument("--init", required=True, choices=["scratch", "pretrained"],
                   help="train from random weights, or finetune the checkpoints of --ckpt-dir")
    s.add_argument("--ckpt-dir", default=None, action=_Given, help="folder with one `pretrain --out` folder per model")
    # the modes are checked where they are defined (ctrkit.training.config.MODES), in one line
    s.add_argument("--mode", default="mutual", help="mutual, alone, kd, ensemble, ensemble_teacher or ektf")
    s.add_argument("--weight", type=float, default=1.0, action=_Given, help="w of the mutual term (0 = alone)")
    s.add_argument("--divergence", default="mse", choices=["mse", "kl"], action=_Given,
                   help="the mutual term: the paper's squared difference of probabilities, or KL (deep mutual learning)")
    s.add_argument("--warmup-steps", type=int, default=0, action=_Given,
                   help="the mutual weight rises linearly from 0 over these steps")
    s.add_argument("--finetune-lr-scale", type=float, default=0.1, action=_Given, help="x each checkpoint's pretraining lr")
    s.add_argument("--finetune-epochs", type=int, default=2, action=_Given, help="epochs of a finetuning run (--epochs wins)")
    s.add_argument("--finetune-monitor", default="AUC-logloss", action=_Given, help="what finetuning early-stops on")
    s.add_argument("--batch-size", type=int, default=None, action=_Given, help="default: the first peer's preset")
    s.add_argument("--share-embedding", action="store_true", help="peers from scratch share one embedding table")
    s.add_argument("--store", default=None, help="record every peer in this results store (.jsonl); a run already "
                   "there is skipped")
    s.add_argument("--force", action="store_true", help="train a run the store already has again")
    s.add_argument("--distributed", action="store_true", help="peer-per-rank under torchrun")
    _run_flags(s)
    s.add_argument("--out", default=None, help="folder for the run's checkpoints and result.json: a killed run "
                   "resumes from it (not with --force)")
    s.add_argument("--json", action="store_true", help="last stdout line: one JSON object (the run's summary)")


def _add_table(sub) -> None:
    s = sub.add_parser("table", help="print a result table from a results store")
    s.add_argument("name", help="baselines, scratch, finetune, sweep, partners, partner_slopes, peer_count, controls, "
                   "headline, alternatives, tuning or power")
    s.add_argument("--store", required=True, help="a results store (.jsonl) of `ctrkit mutual --store` or reproduce")
    s.add_argument("--format", default="md", choices=["md", "csv", "tex"], help="Markdown (default), CSV or LaTeX")
    s.add_argument("--include-exploration", action="store_true",
                   help="also count runs tagged 'exploration' (the widget's), left out by default")
    s.add_argument("--peers", default=None, help="the mutual peer set of scratch, finetune, sweep, controls, "
                   "alternatives, headline and power, e.g. DeepFM+DCN (default: the largest per dataset)")


def _add_compare(sub) -> None:
    s = sub.add_parser("compare", help="two reproductions side by side: which conclusions a change moved")
    s.add_argument("a", help="the --out folder of one `ctrkit reproduce` run")
    s.add_argument("b", help="the --out folder of another (e.g. with --amp bf16)")
    s.add_argument("--labels", default="a,b", help="names of the two, e.g. fp32,bf16 (default a,b)")
    s.add_argument("--out", default=None, help="also write compare.csv, compare.md and compare.png/.svg here")
    s.add_argument("--json", action="store_true", help="last stdout line: one JSON object (counts, moved rows)")


def _add_reproduce(sub) -> None:
    s = sub.add_parser("reproduce", help="run the notebooks with papermill: every table and figure")
    s.add_argument("--dataset", default="both",
                   help="criteo, avazu, both, frappe, movielens, or a schema file (.yaml; needs --data)")
    s.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper", "study", "full"],
                   help="sizes, seeds and epochs (docs/notebooks.md; default quick)")
    s.add_argument("--data", default=None, help="processed or raw data (full profile: the real data you bring)")
    s.add_argument("--out", default="results",
                   help="data, checkpoints, store, notebooks, tables and figures (default results)")
    s.add_argument("--figures", default=None, help="also copy the figures here (the README's command: figures/)")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    s.add_argument("--amp", default=None, choices=["auto", "off", "bf16"],
                   help="the runs' precision (default: the profile's, fp32 on synthetic data); `ctrkit compare` "
                        "then tells whether it moved a conclusion")
    s.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="every run's seeds instead of the profile's (at least 2; the CIs are paired over them)")
    s.add_argument("--force", action="store_true", help="run again the notebooks already done with the same parameters")
    s.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="notebooks run at once, their dependencies allowing (default auto: the CPU cores / the "
                        "profile's threads per run, 1 on CUDA); 1: one after another, in order")


class _Parser(argparse.ArgumentParser):
    """argparse with ctrkit's one-line error (argparse prints its whole usage block first); the
    subcommand parsers inherit it."""

    def error(self, message: str):
        if message.startswith("argument ") and message.endswith("expected one argument"):
            # `--seeds -1,2`: argparse reads a value that starts with '-' as the next flag
            message += " (a value that starts with '-' is given as --flag=VALUE)"
        sub = self.prog.removeprefix("ctrkit").strip()
        self.exit(2, f"ctrkit: error: {sub + ': ' if sub else ''}{message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from ctrkit import __version__

    p = _Parser(prog="ctrkit", description="Mutual learning for CTR models.")
    p.add_argument("--version", action="version", version=f"ctrkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_prepare, _add_info, _add_pretrain, _add_mutual, _add_table, _add_reproduce,
                _add_compare):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line: one `ctrkit: error:` line and exit 2 for bad input or an OS failure, and
    warnings as one `ctrkit: warning:` line each (Python's show the source line too)."""
    shown, stdout = warnings.formatwarning, sys.stdout
    warnings.formatwarning = lambda message, *_, **__: f"ctrkit: warning: {message}\n"
    if stdout is not None:  # None: Python started without a stdout, and print() writes nowhere
        sys.stdout = _NamedStdout(stdout)
    try:
        return _main(argv)
    finally:
        warnings.formatwarning, sys.stdout = shown, stdout


class _NamedStdout:
    """sys.stdout while a command runs, its OS errors named `stdout`: output redirected to a full disk
    otherwise reads "No space left on device" without saying which file."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._named(self._stream.write, text)

    def flush(self):
        return self._named(self._stream.flush)

    @staticmethod
    def _named(call, *args):
        try:
            return call(*args)
        except BrokenPipeError:  # the reader went away: _main ends quietly, nothing to name
            raise
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror or str(e), "stdout") from None

    def __getattr__(self, name):  # isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)


def _main(argv: list[str] | None) -> int:
    from ctrkit.core.utils import Terminated, stop_on_sigterm

    stop_on_sigterm()  # `kill` / a scheduler's stop ends the run as Ctrl-C does, in one line
    try:
        args = build_parser().parse_args(argv)  # a flag's own check (--seeds, --replicas) is one line too
        result = COMMANDS[args.command](args)
        if getattr(args, "json", False) and result is not None:
            # Contract: with --json the last line printed is one JSON object.
            print(json.dumps(result, default=str))
        sys.stdout.flush()  # here a full disk or a closed pipe is met below, not at exit as a traceback
    except CtrkitError as e:
        print(f"ctrkit: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("ctrkit: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ctrkit: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # a base dependency missing (the extras say so themselves): e.g. pyarrow
        # where ctrkit runs from a tree without being installed (a bare GPU machine)
        print(f"ctrkit: error: this command needs the Python package {e.name!r}, which is not installed "
              f"(`pip install -e .` installs ctrkit's dependencies)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # before OSError, its base class
        # `ctrkit info B | head`: the reader went away; point stdout at devnull so exit is quiet.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the net under every OS failure a command did not turn into a CtrkitError
        where = f"{e.filename}: " if e.filename else ""
        print(f"ctrkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's allocator says it with a RuntimeError
        if isinstance(e, RuntimeError) and "allocate memory" not in str(e):
            raise
        print(f"ctrkit: error: out of memory ({str(e).splitlines()[0] if str(e) else 'MemoryError'}): a setting "
              f"too large for this machine? (e.g. --set embedding_dim, --batch-size, a schema's bins)", file=sys.stderr)
        return 2
    return 0


def cmd_synth(args):
    from ctrkit.data import synth

    done = None if args.force else synth.written_before(args.dataset, args.rows, args.out, seed=args.seed,
                                                         gzip=args.gzip)
    path = done or synth.generate(args.dataset, args.rows, args.out, seed=args.seed, gzip=args.gzip,
                                  progress=sys.stderr.isatty(), force=args.force)
    print(f"{path}: already holds these {args.rows} synthetic {args.dataset} rows (seed {args.seed}); nothing written"
          if done else f"wrote {args.rows} synthetic {args.dataset} rows to {path}")
    return {"path": str(path), "rows": args.rows, "dataset": args.dataset, "seed": args.seed}


def cmd_prepare(args):
    from ctrkit import data

    if (args.dataset is None) == (args.schema is None):
        raise CtrkitError("prepare: give either a built-in dataset (criteo, avazu, frappe, movielens) or --schema FILE.yaml")
    path = data.prepare(args.dataset or args.schema, args.raw, args.out, protocol=args.protocol,
                        on_bad_lines=args.on_bad_lines, seed=args.seed, force=args.force,
                        progress=sys.stderr.isatty())
    d = data.load(path)
    source = d.feature_map.get("source", {})
    skipped = source.get("skipped_rows", 0)
    rows = d.rows
    print(f"{path}: {d.dataset}/{d.protocol}, rows train {rows['train']}, valid {rows['valid']}, "
          f"test {rows['test']}, {d.num_fields} fields, fingerprint {d.fingerprint}"
          + (f"; skipped {skipped} bad rows" if skipped else ""))
    if source.get("kind") == "train+test":
        print(f"note: no valid file: {source['split']}")
    if source.get("ignored_columns"):
        print(f"note: columns not in the schema, ignored: {', '.join(source['ignored_columns'])}")
    for note in source.get("notes", []):
        print(f"note: {note}")
    return {"path": str(path), "rows": rows, "skipped_rows": skipped, "fingerprint": d.fingerprint}


def cmd_info(args):
    from ctrkit import data

    d = data.load(args.data)
    info = data.info(d)
    if not args.json:
        print(data.format_info(info))
    return info


def cmd_pretrain(args):
    from ctrkit import data, models
    from ctrkit.experiments import runs

    _reconcile(args)
    d = data.load(args.data)
    name = models.canonical_name(args.model)
    # runs/<dataset>/seed<S>/ holds one folder per model: what `ctrkit mutual --ckpt-dir` expects
    out = args.out or f"runs/{d.dataset}/seed{args.seed}/{name}"
    spec = runs.PretrainSpec(**_settings(args, runs.PretrainSpec), model=name,
                             overrides=_overrides(args.overrides, [name]),
                             progress=not args.json or sys.stderr.isatty())
    if args.seeds:
        return _pretrain_seeds(args, spec, d, name)
    result, _ = runs.pretrain(spec, d, out_dir=out, resume=args.resume, store=args.store, force=not args.resume)
    print(f"{name} on {d.dataset}: valid AUC {result['valid_auc']:.6f} logloss {result['valid_logloss']:.6f}, "
          f"test AUC {result['test_auc']:.6f} logloss {result['test_logloss']:.6f}, {_epochs(result['epochs'])}"
          f"{' (stopped early)' if result.get('stopped_early') else ' (hit the epoch cap)'}, "
          f"{result['seconds']:.1f} s -> {result['checkpoint']}", file=sys.stderr)
    return result if args.json else None


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _pretrain_seeds(args, spec, d, name):
    """`pretrain --seeds`: one model at every seed, `--replicas` of them per batched step."""
    from ctrkit.experiments import runs

    root = Path(args.out) if args.out else Path("runs") / d.dataset
    specs = [dataclasses.replace(spec, seed=s) for s in args.seeds]
    k = _max_replicas(args)
    groups = [specs[i:i + k] for i in range(0, len(specs), k)]
    out_dirs = [[runs.seed_dir(root, s.seed) / name for s in g] for g in groups]
    by_group = runs.pretrain_groups(groups, d, out_dirs=out_dirs, store=args.store, force=not args.resume)
    done = [pair for group in by_group for pair in group]
    for s, (result, _) in zip(args.seeds, done):
        print(f"{name} seed {s}: test AUC {result['test_auc']:.6f} logloss {result['test_logloss']:.6f}, "
              f"{_epochs(result['epochs'])} -> {result['checkpoint']}", file=sys.stderr)
    return [result for result, _ in done] if args.json else None


def _spec(args):
    from ctrkit.experiments import runs

    peers = [p.strip() for p in str(args.peers).split(",") if p.strip()]  # "FM, LR" is FM and LR
    spec = runs.RunSpec(**_settings(args, runs.RunSpec), peers=tuple(peers), progress=not args.json,
                        overrides=_overrides(args.overrides, [runs.split_label(p)[0] for p in peers]))
    _unused_mutual_flags(args, spec)
    return spec


def _run_mutual(args):
    """(records, skipped, is_main): this process's share of `ctrkit mutual`."""
    from ctrkit import data
    from ctrkit.experiments import runs

    _reconcile(args)
    if args.seeds and args.distributed:
        raise CtrkitError("--seeds trains the seeds as replicas in one process: not with --distributed")
    if args.seeds:
        spec, d = _spec(args), data.load(args.data)
        specs = [dataclasses.replace(spec, seed=s, ckpt_dir=str(runs.seed_dir(spec.ckpt_dir, s)) if spec.ckpt_dir
                                     else None) for s in args.seeds]
        outs = [runs.seed_dir(args.out, s) if args.out else None for s in args.seeds]
        recs, skipped = runs.execute_many(specs, d, store=args.store, out_dirs=outs, force=args.force,
                                          max_replicas=_max_replicas(args))
        return [r for run_recs in recs for r in run_recs], skipped, True  # one flag per seed
    if not args.distributed:
        spec = _spec(args)
        recs, skipped = runs.execute(spec, data.load(args.data), store=args.store, out_dir=args.out,
                                     force=args.force)
        return recs, skipped, True
    from ctrkit.training import distributed

    n_peers = len([p for p in str(args.peers).split(",") if p.strip()])
    comm = distributed.init_from_env(n_peers, device=args.device)
    try:
        spec = distributed.agree(comm, lambda: _spec(args))  # bad flags stop every rank alike
        d = distributed.agree(comm, lambda: data.load(args.data))  # a host without the data stops every rank
        fingerprints = comm.gather_objects(d.fingerprint)
        if len(set(fingerprints)) > 1:
            raise CtrkitError("the ranks read different datasets (feature-map fingerprints by rank: "
                              + ", ".join(f"{r}: {f}" for r, f in enumerate(fingerprints))
                              + "); every host needs the same processed --data")
        recs, skipped = runs.execute(spec, d, store=args.store, out_dir=args.out, force=args.force,
                                     exchange=distributed.DistExchange(comm))
        return recs, skipped, comm.is_main
    finally:
        distributed.shutdown()


def cmd_mutual(args):
    from ctrkit.experiments import runs

    records, skipped, main = _run_mutual(args)
    if not main:
        return None  # under torchrun only rank 0 reports
    if args.seeds:  # one summary per seed's run
        by_run: dict = {}
        for r in records:
            by_run.setdefault(r["run_key"], []).append(r)
        summaries = [runs.summary(recs) for recs in by_run.values()]
        for seed, sm, was in zip(args.seeds, summaries, skipped):
            if was:  # as one seed says it: a result from the store is not a run that just trained
                print(f"seed {seed}: already in {args.store} (run {sm['run_key']}); --force re-runs it", file=sys.stderr)
            print(f"seed {seed}: ensemble test AUC {sm['ensemble_test_auc']:.6f}; " + ", ".join(
                f"{p['label']} {p['test_auc']:.6f}" for p in sm["peers"]), file=sys.stderr)
        return summaries if args.json else None
    summary = runs.summary(records)
    summary.update(skipped=skipped, store=args.store, distributed=records[0].get("distributed"))
    if skipped:
        print(f"already in {args.store} (run {summary['run_key']}); --force re-runs it", file=sys.stderr)
    if not args.json:
        for p in summary["peers"]:
            pre = p["pretrained_test_auc"]
            print(f"{p['label']:<10} test AUC {p['test_auc']:.6f} logloss {p['test_logloss']:.6f}"
                  + (f"  (pretrained {pre:.6f}, {p['test_auc'] - pre:+.6f})" if pre is not None else ""))
        dd = summary["distributed"]
        print(f"{'ensemble':<10} test AUC {summary['ensemble_test_auc']:.6f}  ({args.mode}, {args.init}, "
              f"{summary['seconds']:.1f} s" + (f", {dd.get('world_size')} ranks, {dd.get('allgather_bytes_per_step', 0):,.0f}"
                                               f" B gathered per step and rank" if dd else "") + ")")
        return None
    return summary


def cmd_table(args):
    from ctrkit.analysis import records, render, tables

    kw = {"include_exploration": args.include_exploration}
    df = tables.table(args.name, args.store, peers=args.peers, **kw)
    left = tables.left_out_peer_sets(args.name, args.store, peers=args.peers, **kw)
    # the datasets the table shows, not every dataset of the store
    shown = sorted(set(df["dataset"])) if "dataset" in df.columns else None
    cap = f"{render.CAPTIONS.get(args.name, args.name)} ({records.provenance(args.store, datasets=shown, **kw)})" + \
        (f" {left}." if left else "")
    if df.empty:  # an empty table says why, not just that it is empty (on stderr: a CSV stays a CSV)
        print(f"ctrkit: no `{args.name}` rows: {tables.why_empty(args.name, args.store, **kw)}", file=sys.stderr)
    print(render.render(args.name, df, args.format, caption=cap))


def _jobs_arg(value: str) -> int | str:
    """--jobs: 'auto' as is, else an integer >= 1."""
    if value == "auto":
        return value
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise CtrkitError(f"--jobs {value!r}: an integer >= 1 or 'auto'")
    return jobs


def _seeds_arg(value: str | None) -> list[int] | None:
    """--seeds of reproduce: at least 2 (a paired interval needs 2)."""
    return None if value is None else _seed_list(value, at_least=2)


def cmd_compare(args):
    from ctrkit.analysis import compare

    labels = args.labels.split(",")
    df = compare.conclusions(args.a, args.b, labels=labels)
    for line in compare.not_comparable(args.a, args.b):  # compare is for other seeds or precision, same protocol
        warnings.warn(f"not like for like: {line}")
    caption = (f"Each claim table's estimates [95% CI, the tables' own] side by side; verdict: gain (interval above 0), "
               f"loss (below 0), no clear difference (spans 0). {labels[0]}: {compare.provenance(args.a)}; "
               f"{labels[1]}: {compare.provenance(args.b)}.")
    if args.out:
        from ctrkit.analysis import plots

        paths = compare.write(df, args.out, labels, caption=caption,
                              figure=lambda stem: plots.compared(df, stem, labels=labels, caption=caption))
        print(f"written: {paths['csv']}, {paths['md']} and {paths['png']} (+ SVG)")
    print(compare.summary(df, labels))
    return compare.counts(df, labels) if args.json else None


def cmd_reproduce(args):
    from ctrkit.notebook import runner

    res = runner.run(runner.Reproduction(dataset=args.dataset, profile=args.profile, data=args.data, out=args.out,
                                         figures=args.figures, device=args.device, amp=args.amp,
                                         seeds=_seeds_arg(args.seeds), force=args.force,
                                         jobs=_jobs_arg(args.jobs)),
                     log=lambda m: print(m, flush=True))
    print(f"ran {len(res['ran'])} notebook(s), skipped {len(res['skipped'])} already done, {res['seconds']:.0f} s")
    print(f"index:     {res['index']} (and {res['html']})")
    print(f"tables:    {len(res['tables'])} CSV in {res['out']}/tables")
    print(f"figures:   {len(res['figures'])} PNG (+SVG) in {res['out']}/figures"
          + (f", copied to {args.figures}" if args.figures else ""))
    print(f"notebooks: {res['out']}/notebooks")
    return res


COMMANDS = {
    "synth": lambda a: cmd_synth(a),
    "prepare": lambda a: cmd_prepare(a),
    "info": lambda a: cmd_info(a),
    "pretrain": lambda a: cmd_pretrain(a),
    "mutual": lambda a: cmd_mutual(a),
    "table": lambda a: cmd_table(a),
    "reproduce": lambda a: cmd_reproduce(a),
    "compare": lambda a: cmd_compare(a),
}

if __name__ == "__main__":
    sys.exit(main())
