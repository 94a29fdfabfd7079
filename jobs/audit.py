"""Entry point for `ray job submit -- python jobs/audit.py --model M --natural PHOTOS --out DIR --ray ...`.

Thin on purpose: argv goes to `raylab audit`, which validates it, runs the audit (its UAPs as Ray tasks with --ray)
and writes the report.
"""

import sys

from raylab.cli import main

if __name__ == "__main__":
    sys.exit(main(["audit", *sys.argv[1:]]))
