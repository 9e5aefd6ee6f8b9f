"""Training: the one loop for any number of peers and what it needs. `config` (the typed settings),
the BARS/FuxiCTR protocol's pieces by job (`optim`: optimizer and plateau tracker, `precision`,
`evaluation`, `rng`), `exchange` (where the peers live), `losses` (the mutual loss), `metrics` (AUC,
logloss), `presets` (model + training presets and the BARS numbers), `checkpoint` (best.pt/last.pt),
`loop` (`train_peers`, `fit`), `mutual` (who learns from whom), `distributed` (one peer per rank).
Imports core, data, models and kernels.
"""
