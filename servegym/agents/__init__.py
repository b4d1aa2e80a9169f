"""Learners that produce policies: SB3 algorithms (`sb3`) and scikit-learn models."""
