"""Entry point for `ray job submit -- python jobs/reproduce.py --preset paper ...` and plain `python jobs/reproduce.py`.

Thin on purpose: argv goes to `raylab reproduce`, which validates it, runs the study and renders the report.
"""

import sys

from raylab.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
