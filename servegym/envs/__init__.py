"""Gymnasium environments over the simulator's decision points (registered on import)."""
