"""What `python run.py with ...` does: test_only=True with a load_path evaluates it, anything else fits."""

from __future__ import annotations

from mdpl.train.evaluate import test_only
from mdpl.train.trainer import train


def main(config: dict, command_line: set[str] = frozenset()) -> list[dict] | None:
    """Evaluate (returns [the test metrics]) or fit. `command_line` names the keys the user typed: evaluation
    refuses a model key that disagrees with the checkpoint."""
    if config.get("test_only") and config.get("load_path"):  # model keys come from the checkpoint
        return test_only(config, command_line)
    train(config)
    return None
