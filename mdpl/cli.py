"""The command line (`run.py`): sacred's, with the commands of every layer and refusals as one line.

    python run.py with <task config> ...            fit (test_only=True: evaluate load_path)
    python run.py sweep with ...                    checkpoints over a grid of missing settings
    python run.py protocol with ...                 the paper's train-case x test-case matrix
    python run.py compare with ...                  backbones x methods x seeds, trained and swept

A refusal (mdpl.errors.UserError, or one of sacred's configuration errors) prints `error: <message>` on stderr
and exits with status 2; `-d` / `--debug` (or MDPL_DEBUG=1) raises it with its traceback instead. A run stopped
by SIGTERM says so and exits with 143. Any other exception keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from docopt import docopt
from sacred.arg_parser import get_config_updates
from sacred.utils import SacredError

from mdpl.config import command_line_keys, ex
from mdpl.errors import Interrupted, UserError
from mdpl.sweep.compare import compare as run_compare
from mdpl.sweep.grid import sweep as run_sweep
from mdpl.sweep.protocol import protocol as run_protocol
from mdpl.train.run import main as run_main


@ex.main
def main(_config, _run):
    run_main(_config, command_line_keys(_run))


@ex.command
def sweep(_config, _run):
    """Evaluate sweep_paths (or load_path) over sweep_types x sweep_ratios; writes CSV, Markdown and plots."""
    run_sweep(_config, command_line_keys(_run))


@ex.command
def protocol(_config, _run):
    """Train one model per training missing case (protocol_types) and test each on every case: the matrix."""
    run_protocol(_config, command_line_keys(_run))


@ex.command
def compare(_config, _run):
    """Train compare_methods x compare_backbones with compare_seeds, then sweep them into one table and plot."""
    run_compare(_config, command_line_keys(_run))


def cli(argv: list[str]) -> int:
    """sacred's command line (`run.py`), with refusals as one line: a UserError or one of sacred's configuration
    errors prints `error: <message>` on stderr and returns 2 (`-d` / `--debug` or MDPL_DEBUG=1: raised, with its
    traceback); a run stopped by SIGTERM says so and returns 143. Help and usage errors are sacred's own."""
    _, _, internal_usage = ex.get_usage()
    args = docopt(internal_usage, [str(a) for a in argv[1:]], default_help=False)
    command = args.get("COMMAND") or ex.default_command
    if args["help"] or command not in dict(ex.gather_commands()):
        ex.run_commandline(argv)
        return 0
    updates, named = get_config_updates(args["UPDATE"])
    try:
        ex.run(command, updates, named, info={}, meta_info={}, options=args)
    except (UserError, SacredError) as e:
        if args.get("--debug") or os.environ.get("MDPL_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        return 128 + 15  # as a process ended by SIGTERM
    return 0
