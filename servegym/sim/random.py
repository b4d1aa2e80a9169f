"""Named, independent random streams spawned from one seed.

Each stream is keyed by its name, not by the order in which streams are created, so
adding a stream never shifts the numbers of another. Streams that describe requests are
consumed in arrival order only, which makes the request stream identical for every
policy run with the same seed (common random numbers).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["Streams"]


class Streams:
    """A family of independent ``numpy.random.Generator`` objects, one per name.

    >>> s = Streams(7)
    >>> a = s["arrivals"].random()
    >>> Streams(7)["arrivals"].random() == a
    True
    """

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} is invalid: must be an integer >= 0")
        self.seed = int(seed)
        self._streams: dict[str, np.random.Generator] = {}

    def __getitem__(self, name: str) -> np.random.Generator:
        stream = self._streams.get(name)
        if stream is None:
            # crc32 of the name is a stable spawn key: the same name gives the same stream
            # in every process and Python version (unlike hash()).
            seq = np.random.SeedSequence(self.seed, spawn_key=(zlib.crc32(name.encode()),))
            stream = np.random.Generator(np.random.PCG64(seq))
            self._streams[name] = stream
        return stream
