"""`python -m lmKAN.tune`: the tuning command line (lmKAN/tuning/cli.py), run on LMKAN2DLayer.

  python -m lmKAN.tune                      # the docs/performance.md cases (same as --cases)
  python -m lmKAN.tune --num-grids 8 --in 512 --out 512 --batch 65536 [--layout batch_first]
  python -m lmKAN.tune --cases --force      # re-time shapes already in the cache

The command lives in lmKAN.tuning.cli; this module gives it the layer class (the tuning
package does not import the layer modules). The function lmKAN.tune is lmKAN.tuning.tune;
this module is callable as that function too (see _CallableModule).
"""
import sys
import types

from . import tuning
from .lmkan2d import LMKAN2DLayer
from .tuning import cli
from .tuning.cli import format_table, nothing_to_tune, parse_args, shapes

__all__ = ["main", "parse_args", "shapes", "nothing_to_tune", "format_table"]


def main(argv=None):
    return cli.main(argv, LMKAN2DLayer)


class _CallableModule(types.ModuleType):
    """`import lmKAN.tune` makes the package attribute lmKAN.tune this module instead of
    the function; calling the module runs the function, so lmKAN.tune(model, x) works
    whether or not this module was imported."""

    def __call__(self, *args, **kwargs):
        return tuning.tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
