"""The old home of the behaviour SAC, now `sparse_offline_rl.generation.behavior`.

A file rather than a line in `compat.MOVED`: `python -m sparse_offline_rl.data.behavior ...` is the
command that the shipped policies.json and train logs record, and `python -m` needs a file to run.
Imported, it warns once and gives the new module, as `compat` does.
"""
from __future__ import annotations

import sys
import warnings

from sparse_offline_rl.generation import behavior

if __name__ == "__main__":
    behavior.main()
else:
    warnings.warn(f"{__name__} moved to {behavior.__name__}; the old path will go in a later release",
                  FutureWarning, stacklevel=2)
    sys.modules[__name__] = behavior
