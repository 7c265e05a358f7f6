"""Training utilities: epoch metrics (REFERENCE §8) and evaluation records (§10)."""
