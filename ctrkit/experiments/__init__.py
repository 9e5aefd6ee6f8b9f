"""Experiments: a run described once and executed (`runs`), grids of runs over seeds, peer sets and
sweeps (`grid`, re-exported here: `experiments.run`, `experiments.pretrain_baselines`), designs as
pure functions (`designs`), and the append-only results store (`store`). Imports training and below.
"""
from ctrkit.experiments.grid import expand, pretrain_baselines, run, run_one, seed_dir

__all__ = ["pretrain_baselines", "run", "run_one", "expand", "seed_dir"]
