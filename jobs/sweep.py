"""Entry point for `ray job submit -- python jobs/sweep.py ...` and plain `python jobs/sweep.py ...`.

Thin on purpose: argv goes to `raylab sweep`, which validates it and runs the Ray Tune grid.
"""

import sys

from raylab.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
