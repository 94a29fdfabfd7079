"""Entry point for `ray job submit -- python jobs/generate_uap.py ...` and plain `python jobs/generate_uap.py ...`.

Thin on purpose: argv goes to `raylab generate` (the distributed engine), which
validates it and does the work. Under `ray job submit` the driver joins the
job's cluster (RAY_ADDRESS is set by Ray); under plain python it starts a local Ray.
"""

import sys

from raylab.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
