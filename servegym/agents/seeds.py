"""Training's seed space, kept apart from evaluation's.

``env.reset(seed=s)`` simulates platform seed ``s``: the same requests ``servegym evaluate
--seeds s``, compare's seeds and training's ``eval_seeds`` simulate. Evaluations use small
seeds, so every learner trains on :func:`training_seed` instead: training with ``seed=0``
never sees the requests it is later evaluated on.
"""

from __future__ import annotations

__all__ = ["TRAINING_SEEDS", "training_seed"]

TRAINING_SEEDS = 2**40
"""Where training's platform seeds start, far above any evaluation seed anyone types."""


def training_seed(seed: int) -> int:
    """The platform seed of training seed ``seed``'s first episode (vector env ``i`` adds ``i``)."""
    return TRAINING_SEEDS + seed * 2**16
