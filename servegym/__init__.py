"""servegym: reinforcement learning for operating an LLM agent-serving platform.

The simulator lives in :mod:`servegym.sim`; run a scenario with ``servegym simulate``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
