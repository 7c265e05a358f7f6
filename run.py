"""Entry point: `python run.py with <task config> data_root=... per_gpu_batchsize=...` trains (or tests
with test_only=True); `python run.py sweep with ...` runs the missing-modality sweep. See README."""

from mdpl.config import command_line_keys, ex
from mdpl.sweep import sweep as run_sweep
from mdpl.train import main as run_main


@ex.main
def main(_config, _run):
    run_main(_config, command_line_keys(_run))


@ex.command
def sweep(_config, _run):
    """Evaluate sweep_paths (or load_path) over sweep_types x sweep_ratios; writes CSV, Markdown and PNG."""
    run_sweep(_config, command_line_keys(_run))


if __name__ == "__main__":
    ex.run_commandline()
