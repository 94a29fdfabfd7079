"""Entry point for `ray job submit -- python jobs/generate_uap.py ...` and plain `python jobs/generate_uap.py ...`.

Thin on purpose: argv goes to `raylab uap`, which validates it and does the work.
"""

import sys

from raylab.cli import main

if __name__ == "__main__":
    sys.exit(main(["uap", *sys.argv[1:]]))
