"""ctrkit: mutual learning for click-through-rate models.

Layers, bottom to top (nothing imports upward):
utils -> data/synth -> layers/models -> presets/metrics/train -> losses/mutual -> store/experiments/tables
-> plots/widgets/reproduce -> cli.
"""
from ctrkit.utils import CtrkitError

__version__ = "0.1.0"
__all__ = ["CtrkitError", "__version__"]
