"""`python -m sparse_offline_rl.evaluate ...`: the generalization harness CLI (see evaluation/__main__.py)."""
import sys

from sparse_offline_rl.evaluation.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
