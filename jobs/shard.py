"""Entry point for `ray job submit -- python jobs/shard.py SOURCE OUT ...` and plain `python jobs/shard.py ...`.

Thin on purpose: argv goes to `raylab shard --ray`, which writes each shard as a Ray task over the cluster's CPUs
(same shards and manifest as the one-process `raylab shard`). Under `ray job submit` the driver joins the job's
cluster (RAY_ADDRESS is set by Ray); OUT must then be writable from every node (s3://, gs:// or a shared file system).
"""

import sys

from raylab.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", "--ray", *sys.argv[1:]]))
