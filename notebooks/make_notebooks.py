"""Write the notebooks of `notebooks/` from the cell sources below (nbformat, no outputs).

    .venv/bin/python notebooks/make_notebooks.py

Notebooks stay thin: imports, ONE cell tagged `parameters` (plain literals that papermill replaces),
then a few cells of ctrkit calls, each section ending in a table or a figure. No def/class here.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = '''# Parameters (papermill replaces this cell; None = the profile's value, see ctrkit.reproduce.PROFILES)
dataset = "criteo"      # criteo | avazu
data_dir = None         # None: synthetic data; else a processed dataset dir or raw files (profile full)
profile = "smoke"       # smoke | quick | full
device = "auto"         # auto | cpu | cuda
out = "results"         # shared output folder: data, checkpoints, store, tables, figures
rows = None             # synthetic rows
seeds = None            # e.g. [2021, 2022, 2023]
epochs = None           # pretraining epochs'''

# 06 meets the folder `make reproduce` made (profile quick); relative paths: to the repository root.
EXPLORE_PARAMETERS = '''# Parameters (papermill replaces this cell; None = the profile's value, see ctrkit.reproduce.PROFILES)
dataset = "criteo"      # criteo | avazu
data_dir = None         # None: synthetic data; else a processed dataset dir or raw files (profile full)
profile = "quick"       # smoke | quick | full: the profile that made the data under `out`
device = "auto"         # auto | cpu | cuda
out = "results"         # output folder of `make reproduce`, relative to the repository root
rows = None             # synthetic rows
seeds = None            # e.g. [2021, 2022, 2023]
epochs = None           # pretraining epochs'''

SETTINGS = ("cfg = reproduce.settings(dataset=dataset, profile=profile, out=out, data_dir=data_dir, device=device,\n"
            "                         rows=rows, seeds=seeds, epochs=epochs)\n"
            "data = reproduce.dataset(cfg)\ncfg")

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "00_data": [
        ("md", "# 00 · Data\nPrepare the dataset (synthetic rows for the smoke/quick profiles, your processed or raw "
               "files for full) and look at it: rows and CTR per split, vocabulary sizes, value frequencies."),
        ("code", "from ctrkit import plots, reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Rows and click-through rate per split"),
        ("code", "paths = reproduce.data_tables(data, cfg)\nsplits = reproduce.read_table(paths['splits'])\nsplits"),
        ("code", "plots.show(plots.split_ctr(splits, cfg.figure('data_ctr'),\n"
                 "                           title=f'Click-through rate per split ({dataset}, {profile} profile)'))"),
        ("md", "## Vocabulary sizes per field"),
        ("code", "reproduce.read_table(paths['vocab']).sort_values('vocab_size', ascending=False).head(15)"),
        ("md", "## Value frequencies of the largest fields (rank-frequency, log-log)"),
        ("code", "plots.show(plots.rank_frequency(reproduce.read_table(paths['frequency']), cfg.figure('data_frequency'),\n"
                 "                                title=f'Categorical value frequency in train ({dataset}, log-log)'))"),
    ],
    "01_baselines": [
        ("md", "# 01 · Baselines\nPretrain DeepFM, DCN, PNN and FiBiNET (and FM, a peer of the peer-count sweep) "
               "with the profile's preset, one checkpoint per model and seed in the shared output folder; "
               "02-04 and the widget reuse them. The table sits next to the BARS published numbers "
               "(`ctrkit/bars.json`: real Criteo/Avazu, so only comparable under the `full` profile)."),
        ("code", "from ctrkit import experiments, reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Pretrain (skipped for checkpoints that already exist)"),
        ("code", "runs = experiments.pretrain_baselines(data, models=cfg.peers_k, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "                                      seeds=cfg.seeds, epochs=cfg.epochs, store=cfg.store,\n"
                 "                                      device=cfg.device, progress=cfg.progress)\n"
                 "runs[['peer', 'seed', 'epochs', 'valid_auc', 'test_auc', 'test_logloss', 'seconds']]"),
        ("md", "## Our baselines next to BARS"),
        ("code", "reproduce.export_results(cfg)\nreproduce.paper_table(cfg, 'baselines')"),
        ("md", "Source of the BARS numbers:"),
        ("code", "reproduce.bars_source()"),
    ],
    "02_scratch_vs_finetune": [
        ("md", "# 02 · Mutual learning from scratch vs mutual finetuning\nThe paper's main comparison per model: "
               "the pretrained baseline; the four models trained mutually from scratch; the pretrained models "
               "finetuned mutually; and the control, each pretrained model finetuned alone for the same epochs."),
        ("code", "from ctrkit import experiments, plots, reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Runs (each seed; runs already in the store are skipped)"),
        ("code", "experiments.run(data, [cfg.models], inits=['scratch'], modes=['mutual'], seeds=cfg.seeds, store=cfg.store,\n"
                 "                preset=cfg.preset, epochs=cfg.epochs, device=cfg.device, progress=cfg.progress)\n"
                 "# the alone control over every peer of 04 (FM too): its N = 1 point\n"
                 "experiments.run(data, [cfg.peers_k], inits=['pretrained'], modes=['alone'], seeds=cfg.seeds,\n"
                 "                store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "                finetune_epochs=cfg.finetune_epochs, device=cfg.device, progress=cfg.progress)\n"
                 "experiments.run(data, [cfg.models], inits=['pretrained'], modes=['mutual'], seeds=cfg.seeds,\n"
                 "                store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "                finetune_epochs=cfg.finetune_epochs, device=cfg.device, progress=cfg.progress)\n"
                 "reproduce.export_results(cfg)"),
        ("md", "## Mutual learning from scratch vs the baseline"),
        ("code", "reproduce.paper_table(cfg, 'scratch')"),
        ("md", "## Mutual finetuning vs the baseline and vs finetuning alone"),
        ("code", "reproduce.paper_table(cfg, 'finetune')"),
        ("md", "## Relative AUC change per model and setting (error bars: SD over seeds)"),
        ("code", "plots.show(plots.delta_auc_bar(reproduce.read_table(reproduce.figure_frame(cfg, 'settings')),\n"
                 "                               cfg.figure('scratch_vs_finetune'),\n"
                 "                               title=f'Scratch vs finetune: relative AUC change over the pretrained model ({dataset})'))"),
    ],
    "03_partners": [
        ("md", "# 03 · Which partner helps?\nEvery pair of pretrained models finetuned mutually (N = 2): the gain of "
               "each model with each partner, and whether stronger partners help more."),
        ("code", "from ctrkit import experiments, plots, reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Pairwise finetuning runs"),
        ("code", "experiments.run(data, cfg.pairs, inits=['pretrained'], modes=['mutual'], seeds=cfg.seeds, store=cfg.store,\n"
                 "                ckpt_dir=cfg.ckpt_dir, preset=cfg.preset, finetune_epochs=cfg.finetune_epochs,\n"
                 "                device=cfg.device, progress=cfg.progress)\n"
                 "reproduce.export_results(cfg)\n"
                 "reproduce.paper_table(cfg, 'partners')"),
        ("md", "## The partner matrix"),
        ("code", "pairs = reproduce.read_table(reproduce.figure_frame(cfg, 'partners'))\n"
                 "plots.show(plots.partner_heatmap(pairs, cfg.figure('partner_matrix'),\n"
                 "                                 title=f'Pairwise mutual finetuning: relative AUC gain of the row model ({dataset})'))"),
        ("md", "## Gain vs the partner's pretrained AUC"),
        ("code", "plots.show(plots.gain_vs_partner_auc(pairs, cfg.figure('gain_vs_partner_auc'),\n"
                 "                                     title=f'Finetuning gain vs the partner\\'s pretrained AUC ({dataset})'))"),
    ],
    "04_peer_count": [
        ("md", "# 04 · How many peers?\nMutual finetuning of N = 1..K pretrained peers (N = 1: finetuning alone; "
               "the peers are the first N of the profile's `peers_k`)."),
        ("code", "from ctrkit import experiments, plots, reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Runs for N = 2..K (N = 1 is the alone control of 02; N = 4 is its mutual run, reused from the store)"),
        ("code", "cfg.peer_sets_k"),
        ("code", "experiments.run(data, cfg.peer_sets_k, inits=['pretrained'], modes=['mutual'], seeds=cfg.seeds,\n"
                 "                store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "                finetune_epochs=cfg.finetune_epochs, device=cfg.device, progress=cfg.progress)\n"
                 "reproduce.export_results(cfg)\n"
                 "reproduce.paper_table(cfg, 'peer_count')"),
        ("md", "## AUC and relative AUC gain vs N (error bars: SD over seeds)"),
        ("code", "plots.show(plots.peer_count(reproduce.read_table(reproduce.figure_frame(cfg, 'peer_count')),\n"
                 "                            cfg.figure('peer_count'), title=f'Mutual finetuning with N peers ({dataset})'))"),
    ],
    "05_architectures": [
        ("md", "# 05 · Architectures\nThe paper's Figures 1 and 2, drawn from code (`ctrkit.plots`), written to "
               "`OUT/figures/` (a relative `out` is relative to the repository root)."),
        ("code", "from ctrkit import plots, reproduce"),
        ("params", PARAMETERS),
        ("code", "figures = reproduce.resolve_path(out) / 'figures'\nfigures"),
        ("md", "## Figure 1: knowledge distillation (teacher → student)"),
        ("code", "plots.show(plots.figure_kd(figures / 'fig1_knowledge_distillation'))"),
        ("md", "## Figure 2: mutual learning among N peers"),
        ("code", "plots.show(plots.figure_mutual(figures / 'fig2_mutual_learning', n=4))"),
    ],
    "06_explore": [
        ("md", "# 06 · Explore: the peer selector\nPick peers (models and/or pretrained checkpoints of 01), "
               "the initialisation, the mode, the mutual weight, epochs and seed, then press **Train**: the "
               "per-peer validation AUC is drawn live and the result table appears when done; **Stop** ends a "
               "run after the current step and keeps nothing of it. Runs land in the results store tagged "
               "`exploration`, which the paper's tables leave out.\n\n"
               "The parameters must match the data under `out` (made by `make reproduce`: profile `quick`); "
               "other settings stop with a message instead of regenerating that data."),
        ("code", "from ctrkit import reproduce, widgets"),
        ("params", EXPLORE_PARAMETERS),
        ("code", SETTINGS),
        ("code", "selector = widgets.PeerSelector(data, store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "                                device=cfg.device)\nselector"),
        ("md", "## Runs in the store so far (brought up to date after every run)"),
        ("code", "selector.refresh_store_view()"),
    ],
}


def build(name: str) -> nbformat.NotebookNode:
    cells = []
    for i, (kind, src) in enumerate(NOTEBOOKS[name]):
        if kind == "md":
            cells.append(new_markdown_cell(src))
        else:
            cell = new_code_cell(src)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            cells.append(cell)
        cells[-1].id = f"{name[:2]}-{i:02d}"  # stable ids: regenerating changes nothing
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    for name in NOTEBOOKS:
        nb = build(name)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
