"""`python -m sparse_offline_rl.report SWEEP_DIR`: the sweep report (see reports/__main__.py)."""
import sys

from sparse_offline_rl.reports.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
