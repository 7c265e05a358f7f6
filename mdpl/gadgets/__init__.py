"""Training utilities: epoch metrics and evaluation records (docs/official-behaviour.md#heads-losses-and-metrics)."""
