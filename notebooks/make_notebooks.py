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

PARAMETERS = '''# Parameters (papermill replaces this cell; None = the profile's value, see ctrkit.notebook.profiles.PROFILES)
dataset = "criteo"      # criteo | avazu
data_dir = None         # None: synthetic data; else a processed dataset dir or raw files (profile full)
profile = "quick"       # smoke | quick | paper | study | full (quick: what `make reproduce` wrote to results/)
device = "auto"         # auto | cpu | cuda
out = "results"         # shared output folder: data, checkpoints, store, tables, figures
rows = None             # synthetic rows
seeds = None            # e.g. [2021, 2022, 2023]
epochs = None           # pretraining epochs
amp = None              # precision. None: as the profile (fp32 on synthetic data) | off | bf16 | auto'''

# 06 meets the folder `make reproduce` made (profile quick); relative paths: to the repository root.
EXPLORE_PARAMETERS = '''# Parameters (papermill replaces this cell; None = the profile's value, see ctrkit.notebook.profiles.PROFILES)
dataset = "criteo"      # criteo | avazu
data_dir = None         # None: synthetic data; else a processed dataset dir or raw files (profile full)
profile = "quick"       # smoke | quick | paper | study | full: the profile that made the data under `out`
device = "auto"         # auto | cpu | cuda
out = "results"         # output folder of `make reproduce`, relative to the repository root
rows = None             # synthetic rows
seeds = None            # e.g. [2021, 2022, 2023]
epochs = None           # pretraining epochs
amp = None              # precision. None: as the profile (fp32 on synthetic data) | off | bf16 | auto'''

SETTINGS = ("cfg = reproduce.settings(dataset=dataset, profile=profile, out=out, data_dir=data_dir, device=device,\n"
            "                         rows=rows, seeds=seeds, epochs=epochs, amp=amp)\n"
            "data = reproduce.dataset(cfg)\ncfg")

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "00_data": [
        ("md", "# 00 · Data\nPrepare the dataset (synthetic rows for the smoke/quick profiles, your processed or raw "
               "files for full) and look at it: rows and CTR per split, vocabulary sizes, value frequencies."),
        ("code", "from ctrkit.analysis import plots\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Rows and click-through rate per split"),
        ("code", "paths = reproduce.data_tables(data, cfg)\nsplits = reproduce.read_table(paths['splits'])\nsplits"),
        ("code", "plots.show(plots.split_ctr(splits, cfg.figure('data_ctr'), caption=reproduce.caption(cfg, figure=False, runs=False),\n"
                 "                           title=f'Click-through rate per split ({cfg.dataset}, {profile} profile)'))"),
        ("md", "## Vocabulary sizes per field (the 15 largest; every field in `tables/<dataset>_data_vocab`)"),
        ("code", "reproduce.read_table(paths['vocab']).sort_values('vocab_size', ascending=False).head(15)"),
        ("md", "## Value frequencies of the largest fields (rank-frequency, log-log)\nValues seen fewer times in "
               "train than the dataset's min-count (BARS: Criteo 10, Avazu 2) share the one OOV index and are not "
               "drawn, so the curves end there."),
        ("code", "plots.show(plots.rank_frequency(reproduce.read_table(paths['frequency']), cfg.figure('data_frequency'),\n"
                 "                                caption=reproduce.caption(cfg, figure=False, runs=False),\n"
                 "                                title=f'Categorical value frequency in train ({cfg.dataset}, log-log)'))"),
    ],
    "01_baselines": [
        ("md", "# 01 · Baselines\nPretrain DeepFM, DCN, PNN and FiBiNET with the profile's preset under the BARS "
               "protocol: early stopping on validation with the profile's patience, LR decay on plateau, the "
               "profile's epoch cap (a baseline that reaches it is flagged). One checkpoint per model and seed in "
               "the shared output folder; 02-04 and the widget reuse them. BARS published numbers "
               "(`ctrkit/training/bars.json`) are real Criteo/Avazu results, comparable only under the `full` profile."),
        ("code", "from ctrkit import experiments\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Pretrain (skipped for checkpoints that already exist)\nUnder the `study` profile each model's "
               "hyperparameters are first chosen on validation only from a small search (the tuning table); "
               "the other profiles use the preset."),
        ("code", "tuned = reproduce.tune(cfg, data)\n"
                 "baselines = experiments.pretrain_baselines(  # the runs' records; the table below reads them back\n"
                 "    data, models=cfg.models, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset, seeds=cfg.seeds, epochs=cfg.epochs,\n"
                 "    overrides=cfg.overrides, per_model=tuned, store=cfg.store, device=cfg.device, threads=cfg.threads,\n"
                 "    workers=cfg.workers, amp=cfg.amp, graph=cfg.graph, progress=cfg.progress)"),
        ("md", "## Our baselines next to BARS (`flag`: seeds that stopped at the epoch cap)"),
        ("code", "reproduce.export_results(cfg)  # the store as the tidy CSV every table reads\n"
                 "reproduce.paper_table(cfg, 'baselines')"),
    ],
    "02_scratch_vs_finetune": [
        ("md", "# 02 · Mutual learning from scratch vs mutual finetuning\nEvery number is a paired difference "
               "against its control, by seed. From scratch: the four models trained mutually vs the same four "
               "trained alone under the identical schedule and stopping. Finetuning: the pretrained models "
               "finetuned mutually vs each finetuned alone (same steps and batches, weight 0), at the setting "
               "the sweep (weight x finetuning lr scale) chose on validation. Controls: KD from the best model, "
               "and the ensembles."),
        ("code", "from ctrkit import experiments\nfrom ctrkit.analysis import plots\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Runs: from scratch (mutual and alone), then the finetuning sweep (runs in the store are skipped)"),
        ("code", "common = dict(seeds=cfg.seeds, store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "              device=cfg.device, threads=cfg.threads, workers=cfg.workers, amp=cfg.amp,\n"
                 "              graph=cfg.graph, progress=cfg.progress)\n"
                 "experiments.run(data, [cfg.models], inits=['scratch'], modes=['mutual', 'alone'], epochs=cfg.epochs,\n"
                 "                overrides=cfg.overrides, **common)  # the baselines' patience\n"
                 "experiments.run(data, [cfg.models], inits=['pretrained'], modes=['alone', 'mutual'],\n"
                 "                weight=cfg.sweep_weights, finetune_lr_scale=cfg.sweep_lr_scales,\n"
                 "                finetune_epochs=cfg.finetune_epochs, **common)\n"
                 "reproduce.export_results(cfg)\n"
                 "reproduce.paper_table(cfg, 'scratch')"),
        ("md", "## The sweep: the setting is chosen on validation only; its test numbers are reported"),
        ("code", "reproduce.paper_table(cfg, 'sweep')"),
        ("code", "plots.show(plots.sweep_gain(reproduce.figure_data(cfg, 'sweep'), cfg.figure('sweep_gain'),\n"
                 "                            caption=reproduce.caption(cfg),\n"
                 "                            title=f'Finetuning sweep: mutual - alone vs the weight ({cfg.dataset})'))"),
        ("md", "## Mutual finetuning vs finetuning alone, at the chosen setting"),
        ("code", "best = reproduce.chosen(cfg)\n"
                 "print(f\"chosen on validation: weight {best['weight']:g}, lr scale {best['finetune_lr_scale']:g}\")\n"
                 "reproduce.paper_table(cfg, 'finetune')  # every column, written to tables/; shown: the headline\n"
                 "reproduce.paper_table(cfg, 'headline')"),
        ("md", "## Paired gains per model (95% paired t-intervals)"),
        ("code", "plots.show(plots.paired_gains(reproduce.figure_data(cfg, 'gains'), cfg.figure('paired_gains'),\n"
                 "                              caption=reproduce.caption(cfg),\n"
                 "                              title=f'Each comparison against its control, per model ({cfg.dataset})'))"),
        ("md", "## What the null results rule out\n"
               "Per model: the smallest gain these seeds would find (MDE, also at the SD's upper bound), whether the "
               "paper's claimed gain lies outside the interval, and the seeds the claim would need."),
        ("code", "reproduce.paper_table(cfg, 'power')"),
        ("md", "## Controls: KD from the best pretrained model, the ensembles (at the chosen setting)"),
        ("code", "experiments.run(data, [reproduce.kd_peers(cfg)], inits=['pretrained'], modes=['kd'], weight=best['weight'],\n"
                 "                finetune_lr_scale=best['finetune_lr_scale'], finetune_epochs=cfg.finetune_epochs, **common)\n"
                 "experiments.run(data, [cfg.models], inits=['pretrained'], modes=['ensemble'], **common)\n"
                 "reproduce.export_results(cfg)\n"
                 "reproduce.paper_table(cfg, 'controls')"),
        ("md", "## The practical alternative: one mutual model vs the pretrained ensemble (no training)"),
        ("code", "reproduce.paper_table(cfg, 'alternatives')"),
        ("md", "## Gain vs the baseline's strength (profiles `quick` and `study`: their `sizes`; the others run nothing here)\n"
               "The headline at each model size side by side (the profile's own preset from the runs above, each other "
               "size pretrained and finetuned over the sweep in its own store, at the setting its own validation chose), each model's gain against the "
               "pretrained test AUC it started from, and the paired test of whether the gain changes with strength: "
               "per model, the gain at one size minus the other, seed by seed (`tables/<dataset>_strength_contrast`)."),
        ("code", "shown, paths = reproduce.strength(cfg, data)  # without `sizes`: a sentence saying so\n"
                 "display(shown)\n"
                 "if paths:\n    display(plots.show(paths))"),
    ],
    "03_partners": [
        ("md", "# 03 · Which partner helps?\nEvery pair of pretrained models finetuned mutually (N = 2) at the "
               "setting chosen in 02: each model's gain over finetuning alone with each partner, and per model "
               "the slope of that gain against the partner's pretrained AUC (no line pooled across models)."),
        ("code", "from ctrkit import experiments\nfrom ctrkit.analysis import plots\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Pairwise finetuning runs"),
        ("code", "best = reproduce.chosen(cfg)\n"
                 "experiments.run(data, cfg.pairs, inits=['pretrained'], modes=['mutual'], seeds=cfg.seeds, store=cfg.store,\n"
                 "                ckpt_dir=cfg.ckpt_dir, preset=cfg.preset, weight=best['weight'],\n"
                 "                finetune_lr_scale=best['finetune_lr_scale'], finetune_epochs=cfg.finetune_epochs,\n"
                 "                device=cfg.device, threads=cfg.threads, workers=cfg.workers, amp=cfg.amp,\n"
                 "                graph=cfg.graph, progress=cfg.progress)\n"
                 "reproduce.export_results(cfg)\n"
                 "reproduce.paper_table(cfg, 'partners')"),
        ("md", "## The partner matrix (mutual - alone, * Holm p < 0.05)"),
        ("code", "plots.show(plots.partner_heatmap(reproduce.figure_data(cfg, 'partners'), cfg.figure('partner_matrix'),\n"
                 "                                 caption=reproduce.caption(cfg, figure=False),  # intervals: in the cells\n"
                 "                                 title=f'Pairs: mutual - alone of the row model with each partner ({cfg.dataset})'))"),
        ("md", "## Gain vs the partner's pretrained AUC: one slope per model, with its 95% CI"),
        ("code", "reproduce.paper_table(cfg, 'partner_slopes')"),
        ("code", "plots.show(plots.partner_slopes(reproduce.figure_data(cfg, 'partner_points'),\n"
                 "                                reproduce.figure_data(cfg, 'partner_slopes'), cfg.figure('partner_slopes'),\n"
                 "                                caption=reproduce.caption(cfg)))"),
    ],
    "04_peer_count": [
        ("md", "# 04 · How many peers?\nFor each target model and N = 1..4 (N = 1: finetuning alone), the mean "
               "over ALL partner subsets of size N - 1 drawn from the other three paper models, so N is not "
               "confounded with which model joins. Runs at the setting chosen in 02; pairs and the 4-model run "
               "come from 02/03 (the store), the triples are run here. Only measured points are drawn."),
        ("code", "from ctrkit import experiments\nfrom ctrkit.analysis import plots\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Runs: every subset of the four models (those already in the store are skipped)"),
        ("code", "best = reproduce.chosen(cfg)\n"
                 "experiments.run(data, cfg.peer_sets, inits=['pretrained'], modes=['mutual'], seeds=cfg.seeds,\n"
                 "                store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset, weight=best['weight'],\n"
                 "                finetune_lr_scale=best['finetune_lr_scale'], finetune_epochs=cfg.finetune_epochs,\n"
                 "                device=cfg.device, threads=cfg.threads, workers=cfg.workers, amp=cfg.amp,\n"
                 "                graph=cfg.graph, progress=cfg.progress)\n"
                 "reproduce.export_results(cfg)\n"
                 "reproduce.paper_table(cfg, 'peer_count')"),
        ("md", "## Gain vs N (95% paired t-intervals over seeds)"),
        ("code", "plots.show(plots.peer_count(reproduce.figure_data(cfg, 'peer_count'), cfg.figure('peer_count'),\n"
                 "                            caption=reproduce.caption(cfg),\n"
                 "                            title=f'Mutual finetuning with N peers, mean over partner subsets ({cfg.dataset})'))"),
    ],
    "07_variants": [
        ("md", "# 07 · Beyond the paper: the relatives of mutual learning, and prediction churn\n"
               "Each variant minus its `alone` control (same batches, steps, schedule and stopping, weight 0), paired "
               "by seed: mutual learning with the paper's MSE and with KL (deep mutual learning), the ensemble of "
               "the peers as the teacher, EKTF (ensemble teacher + peers weighted by their examination scores, "
               "arXiv 2411.16122), KD from the best pretrained model; finetuning (at the setting 02 chose) and from "
               "scratch, with separate embedding tables and with one shared table. Churn: how much predictions "
               "disagree, between a run's peers and between consecutive seeds of the same configuration."),
        ("code", "from ctrkit import experiments\nfrom ctrkit.analysis import plots\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", SETTINGS),
        ("md", "## Runs (tagged `variants`, left out of the paper's tables; those in the store are skipped)"),
        ("code", "grid = reproduce.variant_grid(cfg)\n"
                 "for settings in grid:\n"
                 "    experiments.run(data, **settings)"),
        ("md", "## Each variant minus alone, per model (95% paired t-intervals, Holm across the table), with churn"),
        ("code", "reproduce.export_results(cfg)\nreproduce.variants_table(cfg)"),
        ("md", "The figure's labels: MSE / KL = mutual learning with that divergence, ens = the ensemble teacher, "
               "EKTF, KD = from the best pretrained model, table = the shared table alone (shared alone - separate "
               "alone); FT = finetuning, scratch = from scratch, shared = one embedding table."),
        ("code", "plots.show(plots.paired_gains(reproduce.read_table(cfg.table('fig_variants')), cfg.figure('variants'),\n"
                 "                              x='comparison', hue='model', panel='init', width=9.0, height=3.2,\n"
                 "                              caption=reproduce.caption(reproduce.for_variants(cfg)),\n"
                 "                              title=f'Relatives of mutual learning minus alone, per model ({cfg.dataset})'))"),
        ("md", "## Across datasets: interquartile mean and probability of improvement (95% CIs: bootstrap of seeds within each dataset, a seed's models together)"),
        ("code", "reproduce.variants_summary(cfg)"),
    ],
    "05_architectures": [
        ("md", "# 05 · Architectures\nThe paper's Figures 1 and 2, drawn from code (`ctrkit.analysis.plots`), written to "
               "`OUT/figures/` (a relative `out` is relative to the repository root)."),
        ("code", "from ctrkit.analysis import plots\nfrom ctrkit.notebook import reproduce"),
        ("params", PARAMETERS),
        ("code", "figures = reproduce.resolve_path(out) / 'figures'\nprint(f'written to {figures}')"),
        ("md", "## Figure 1: knowledge distillation (teacher → student)"),
        ("code", "plots.show(plots.figure_kd(figures / 'fig1_knowledge_distillation'))"),
        ("md", "## Figure 2: mutual learning among N peers"),
        ("code", "plots.show(plots.figure_mutual(figures / 'fig2_mutual_learning', n=4))"),
    ],
    "06_explore": [
        ("md", "# 06 · Explore: the peer selector\nPick peers (models and/or pretrained checkpoints of 01), "
               "the initialisation, the mode (for KD: its teacher), the mutual weight, the finetuning lr scale, "
               "epochs and seed, then press **Train**: the per-peer validation AUC is drawn live and the result "
               "table appears when done; **Stop** ends a run after the current step and keeps nothing of it. Runs "
               "land in the results store tagged `exploration`, which the paper's tables leave out. Runs take the "
               "profile's precision and threads; pretrained finetuning starts at the weight and lr scale 02's "
               "sweep chose on validation, and a selection equal to a run of the paper's tables shows that run.\n\n"
               "The parameters must match the data under `out` (made by `make reproduce`: profile `quick`); "
               "other settings stop with a message instead of regenerating that data."),
        ("code", "from ctrkit.notebook import reproduce, widgets"),
        ("params", EXPLORE_PARAMETERS),
        ("code", SETTINGS),
        # the profile's compute settings: a widget run is computed as the notebooks' runs are (amp "auto"
        # would be bf16 on a CUDA/AMX machine where the profile's tables are fp32)
        ("code", "selector = widgets.PeerSelector(data, store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,\n"
                 "                                device=cfg.device, amp=cfg.amp, threads=cfg.threads, graph=cfg.graph)\n"
                 "selector"),
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
