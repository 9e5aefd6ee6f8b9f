"""ctrkit: mutual learning for click-through-rate models.

One subpackage per layer, bottom to top; a module imports only its own layer or lower ones, and
no module imports another in a circle (tests/test_layering.py reads the folders):
core -> data -> models -> kernels -> training -> experiments -> analysis -> notebook -> cli.
"""
import os

# Intel MKL (torch's CPU matrix products) splits some products' sums over its threads unless its
# "strict conditional numerical reproducibility" mode is on: measured on an AVX-512 Xeon, a
# [64, 5000] x [5000, 20] product gave other bits at 2 threads than at 1, and with it a training
# step's gradients; in strict mode they are the same bits at any thread count, at no measured cost.
# MKL reads this once, at its first product, so it is set here, before ctrkit runs any; a value the
# user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from ctrkit.core.errors import CtrkitError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CtrkitError", "__version__"]
