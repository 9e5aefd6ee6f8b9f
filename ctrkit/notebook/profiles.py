"""The reproduction's fixed choices: each profile's sizes, the datasets and notebooks, where relative paths start.

The notebook helpers (`ctrkit.notebook.reproduce`) and the papermill runner (`ctrkit.notebook.runner`)
both read these; they are data, so the notebooks' parameter cells stay plain literals.
"""
from __future__ import annotations

import json
from pathlib import Path

from ctrkit.core import utils
from ctrkit.core.utils import CtrkitError

# This file is ctrkit/notebook/profiles.py: the clone's notebooks/ folder is two levels up.
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
# The clone this ctrkit runs from (None for an installed package): relative notebook paths start here.
REPO_ROOT = NOTEBOOK_DIR.parent if (NOTEBOOK_DIR.parent / "pyproject.toml").is_file() and NOTEBOOK_DIR.is_dir() \
    else None
# The seed of the synthetic rows of the smoke/quick profiles (part of what `dataset()` checks).
SYNTH_SEED = 2021
DATASETS = ("criteo", "avazu")
# Also accepted: the other built-in schemas, and any schema file (.yaml, real data: --data required).
SMALL_DATASETS = ("frappe", "movielens")
SCHEMA_SUFFIXES = (".yaml", ".yml")
PER_DATASET = ("00_data", "01_baselines", "02_scratch_vs_finetune", "03_partners", "04_peer_count",
               "07_variants")
ONCE = ("05_architectures", "06_explore")
NOTEBOOKS = PER_DATASET + ONCE

# Sizes per profile, as data, so the notebooks' parameter cells stay plain literals.
#   rows: synthetic rows (None: the real data of --data); split: their train/valid/test ratios (absent: the
#   protocol's, 8:1:1); preset: model/train preset of ctrkit.training.presets;
#   epochs: the cap on pretraining (and from-scratch) epochs; patience: epochs without improvement on
#   validation before a baseline stops (large enough that one noisy epoch does not end it; a run that
#   reaches the cap is flagged in the baselines table); finetune_epochs: the cap of every finetuning run
#   (the pretrained weights are its epoch 0; it stops at the checkpoint's patience): finetuning runs to
#   convergence too (quick: the baselines' cap of 8; at a cap of 1 the quick headline's arms kept their
#   pretrained weights in most seeds, and at 4, patience had not stopped 2-4 of 5 runs at lr scale
#   0.1 by the cap);
#   seeds: every run's seeds (>= 5: the CIs are paired
#   t-intervals over them); models: the paper's four, the pool of every design (partner subsets, peer
#   count; FM/LR are not in it); sweep_weights x sweep_lr_scales: the finetuning grid, chosen on validation;
#   threads: torch CPU threads of every run. 1 for the synthetic profiles: their batches are small, and
#   with another busy process on the 2-core machine 2 threads ran FiBiNET's steps 17x slower than 1
#   (a fixed count also keeps the float summation order, so the results, the same on every load);
#   workers: processes a grid's independent runs are spread over (`ctrkit.experiments.workers`): "auto"
#   is the CPU's cores / threads (2 on the 2-core machine at threads 1; 1 at threads "auto", and 1 on
#   CUDA, where seeds batch as replicas); each run's numbers are the ones it gives alone, so the
#   tables do not depend on it;
#   amp: the precision of every run. fp32 ("off") for the synthetic profiles: "auto" is bf16 on a CPU
#   with AMX and fp32 elsewhere, so the tables would depend on the CPU that ran them (no bf16 hardware
#   was at hand to measure by how much); `full` keeps "auto" (bf16 on a GPU);
#   graph: how a run's step executes on CUDA (`ctrkit.training.graph`): "auto" replays the whole N-peer
#   step as one CUDA graph and falls back to eager with one warning; moot on the CPU, and not part of a
#   run's key (the same numbers within float tolerance).
# quick/paper run the `smoke` model preset (small embeddings, batch 512): FiBiNET's bilinear layer
# dominates the 2-core CPU budget, so the rows are sized for it (quick: about 9 minutes for both datasets).
# quick's `sizes` (see study's below): a gain over one weak baseline is no evidence, so 02 also runs the
# same preset on a fixed 25% of the training rows ("smoke@25%": `ctrkit.data.subset.train_share`), with
# 4x the epoch cap, patience and finetuning epochs (the optimizer steps of all the rows): a baseline
# weaker for less data, still trained to its stopping rule, and tests, paired by seed, whether the gain
# differs between the two (`ctrkit.analysis.strength.contrast`). (The `quick` preset stood here before:
# within the 8-epoch cap it was weaker for being undertrained, 13 of 20 Criteo baselines at the cap.)
PROFILES: dict[str, dict] = {
    "smoke": {
        "rows": 1000, "preset": "smoke", "epochs": 2, "patience": 1, "finetune_epochs": 1, "seeds": [2021, 2022],
        "models": ["DeepFM", "DCN", "PNN", "FiBiNET"], "sweep_weights": [1.0, 10.0], "sweep_lr_scales": [1.0],
        "threads": 1, "workers": "auto", "amp": "off", "graph": "auto", "execution_timeout": 900,
    },
    "quick": {
        "rows": 8000, "preset": "smoke", "epochs": 8, "patience": 2, "finetune_epochs": 8,
        "seeds": [2021, 2022, 2023, 2024, 2025], "models": ["DeepFM", "DCN", "PNN", "FiBiNET"],
        "sweep_weights": [0.3, 1.0, 3.0, 10.0, 30.0], "sweep_lr_scales": [0.1, 1.0], "threads": 1, "workers": "auto",
        "amp": "off", "graph": "auto", "execution_timeout": 3600, "sizes": ["smoke", "smoke@25%"],
    },
    "paper": {
        "rows": 200000, "preset": "smoke", "epochs": 20, "patience": 3, "finetune_epochs": 10,
        "seeds": [2021, 2022, 2023, 2024, 2025, 2026, 2027, 2028, 2029, 2030],
        "models": ["DeepFM", "DCN", "PNN", "FiBiNET"], "sweep_weights": [0.3, 1.0, 3.0, 10.0, 30.0],
        "sweep_lr_scales": [0.1, 1.0], "threads": 1, "workers": "auto", "amp": "off", "graph": "auto", "execution_timeout": None,
    },
    # study: the evidence run. Real data (--data, a schema file): all rows; synthetic: 8,000 training rows,
    # what the 2-core CPU affords with full-size models (FiBiNET's bilinear layer on Criteo's 39 fields is
    # 23,712 wide), scored on 5,000 validation and 5,000 test rows (`split` 8:5:5 of 18,000 rows, the
    # protocol's min-count kept). With the protocol's 8:1:1 of 10,000 rows, ~1,000 validation rows stopped
    # 22 of 54 baselines (DeepFM, DCN, PNN x 3 seeds x 3 split draws, both synthetic datasets) at their
    # best test epoch, 0.006 test AUC short of it on average (up to 0.015 in one draw's mean: more than
    # the paper's gains); 8:5:5 stopped 46 of 54 there, 0.0008 short (bench/validation_size.py,
    # bench/results/*-validation-size-*). Evaluation is the cheap part of a run.
    # The `full` preset (full-size BARS-like models for any dataset: `bars` exists only for the
    # BARS datasets; its plateau decay is x0.5, not BARS's x0.1), baselines to convergence (patience 3:
    # one noisy epoch does not end a run; a cap of 30 epochs, flagged when hit), finetuning to convergence
    # too (the checkpoint's patience 3, a cap of 10 epochs: at a cap of 2 every finetuning run of the
    # first studies used the whole budget, neither arm converged), the sweep, and a small
    # search per model chosen on validation only (`tune`: candidates beside the preset, `tune_seeds` its
    # seeds; the tuning table says what was chosen). `min_steps`: the preset's batch (4,096) is halved,
    # not below 512, until an epoch has at least this many steps (`batch_size`): on UCI Adult (39k train
    # rows) 4,096 left 10 steps an epoch and DeepFM/FiBiNET needed 24-30 epochs (FiBiNET hit the cap),
    # 512 converged in 5 with a higher validation AUC; at Criteo scale the preset's batch stays.
    # Budget, measured on the 2-core CPU: 5 seeds (paired t-intervals need >= 5), the sweep at weights 1,
    # 10 and 30, 07's variants at `variant_seeds` (3: its 9 runs from scratch per seed cost ~80% of the
    # study), 03 and 04 not run (`skip`: the paper profile has them). On a GPU pass more seeds.
    # `sizes`: 02 also reports the headline at each of these model presets side by side (the profile's
    # own, tuned, from 01/02; the others pretrained and finetuned over the sweep in their own store, each
    # at the setting its own validation chose), with the gain against the baseline's strength and the
    # paired test of whether it changes with it (empty: not run; every profile but quick and study).
    "study": {
        "rows": 18000, "split": [8, 5, 5], "preset": "full", "epochs": 30, "patience": 3, "finetune_epochs": 10,
        "seeds": [2021, 2022, 2023, 2024, 2025],
        "models": ["DeepFM", "DCN", "PNN", "FiBiNET"], "sweep_weights": [1.0, 10.0, 30.0],
        "sweep_lr_scales": [0.1, 1.0], "threads": 1, "workers": "auto", "amp": "off", "graph": "auto", "execution_timeout": None,
        # the third candidate: the small-data regularizer of the BARS Frappe/MovieLens winners (0.01-0.05)
        "tune": [{}, {"lr": 0.0003}, {"embedding_regularizer": 0.01}], "tune_seeds": [2021, 2022],
        # the first studies chose lr 1e-3 and regularizer 0.01 for every model, the largest of each tried:
        # `tune_widen` rounds step x3 past such an edge (ctrkit.experiments.designs.beyond_edges). On the
        # Criteo-shaped study 2 rounds left DeepFM and PNN at lr 9e-3, still the largest tried (and 0.014-0.016
        # validation AUC above lr 1e-3), so 4: up to lr 0.081, x81 the preset's
        "tune_widen": 4,
        "sizes": ["full", "smoke"], "min_steps": 64, "variant_seeds": [2021, 2022, 2023],
        "skip": ["03_partners", "04_peer_count"],
    },
    "full": {
        "rows": None, "preset": "bars", "epochs": None, "patience": None, "finetune_epochs": 2,
        "seeds": [2021, 2022, 2023, 2024, 2025], "models": ["DeepFM", "DCN", "PNN", "FiBiNET"],
        "sweep_weights": [0.3, 1.0, 3.0, 10.0, 30.0], "sweep_lr_scales": [0.1, 1.0], "threads": "auto",
        "workers": "auto", "amp": "auto", "graph": "auto", "execution_timeout": None,
    },
}


# The smallest batch the `min_steps` rule makes: below it a CPU step is overhead-bound.
MIN_BATCH = 512


def batch_size(sizes: dict, preset_batch: int, train_rows: int) -> int | None:
    """The batch of a profile with `min_steps` (None without it: the preset's): the preset's batch,
    halved while an epoch of `train_rows` has fewer than `min_steps` steps, not below MIN_BATCH."""
    steps = sizes.get("min_steps")
    if not steps:
        return None
    batch = int(preset_batch)
    while batch // 2 >= MIN_BATCH and train_rows < steps * batch:
        batch //= 2
    return batch


def profile(name: str) -> dict:
    """A copy of one profile's sizes; CtrkitError listing the valid names otherwise."""
    if not isinstance(name, str) or name not in PROFILES:  # a list from papermill would be unhashable
        raise CtrkitError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return json.loads(json.dumps(PROFILES[name]))


def check_device(device) -> str:
    """`device` when it names a device (`ctrkit.core.utils.check_device`: auto, cpu, cuda, cuda:N),
    else one line naming the notebook parameter; whether CUDA is there is the run's question, asked
    on the machine that runs it."""
    try:
        return utils.check_device(device)
    except CtrkitError as e:
        raise CtrkitError(f"parameter {e}") from None


def resolve_path(path: str | Path) -> Path:
    """A notebook's path parameter as an absolute path: relative paths are relative to the repository
    root, whatever the kernel's working directory (JupyterLab starts it in notebooks/, papermill in OUT);
    outside a clone (an installed ctrkit) relative to the working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (REPO_ROOT if REPO_ROOT is not None else Path.cwd()) / p
    return p.resolve()
