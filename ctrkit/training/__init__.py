"""Training: the one loop for any number of peers and what it needs. `config` (the typed settings),
`protocol` (the BARS/FuxiCTR protocol's pieces: optimizer, plateau tracker, precision, evaluation,
RNG), `losses` (the mutual loss), `metrics` (AUC, logloss), `presets` (model + training presets and
the BARS numbers), `checkpoint` (best.pt/last.pt), `loop` (`train_peers`, `fit`), `mutual` (who
learns from whom), `distributed` (one peer per rank). Imports core, data, models and kernels.
"""
