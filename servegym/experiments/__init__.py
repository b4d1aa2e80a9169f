"""Entry points that run experiments: evaluation (and, next, training and comparison)."""
