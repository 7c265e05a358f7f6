"""Entry point: `python run.py with <task config> data_root=... per_gpu_batchsize=...` trains (or tests
with test_only=True); `python run.py sweep with ...` runs the missing-modality sweep. See README."""

from mdpl.config import ex
from mdpl.sweep import sweep as run_sweep
from mdpl.train import main as run_main


@ex.main
def main(_config):
    run_main(_config)


@ex.command
def sweep(_config):
    """Evaluate sweep_paths (or load_path) over sweep_types x sweep_ratios; writes CSV, Markdown and PNG."""
    run_sweep(_config)


if __name__ == "__main__":
    ex.run_commandline()
