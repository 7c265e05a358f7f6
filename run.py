"""Entry point: `python run.py with <task config> data_root=... per_gpu_batchsize=...` trains (or tests with
test_only=True); `python run.py sweep|protocol|compare with ...` (see mdpl/cli.py and README)."""

import sys

from mdpl.cli import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv))
