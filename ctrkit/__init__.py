"""ctrkit: mutual learning for click-through-rate models.

Layers, bottom to top; a module imports only its own layer or lower ones (tests/test_layering.py):
utils (errors, utils, cpublas) -> data (ctrkit.data, synth) -> models (layers, models, metrics)
-> training (presets, losses, protocol, checkpoint, train, mutual, distributed)
-> results (store, runs, experiments, designs, tables) -> notebooks (plots, widgets, reproduce) -> cli.
"""
from ctrkit.errors import CtrkitError

__version__ = "0.1.0"
__all__ = ["CtrkitError", "__version__"]
