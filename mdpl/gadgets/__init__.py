"""Training utilities: epoch metrics (REFERENCE §8)."""
