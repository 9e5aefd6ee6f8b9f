"""ctrkit: mutual learning for click-through-rate models.

One subpackage per layer, bottom to top; a module imports only its own layer or lower ones, and
no module imports another in a circle (tests/test_layering.py reads the folders):
core -> data -> models -> kernels -> training -> experiments -> analysis -> notebook -> cli.
"""
from ctrkit.core.errors import CtrkitError

__version__ = "0.1.0"
__all__ = ["CtrkitError", "__version__"]
