"""An LRU tier inside the platform behaves exactly like a textbook LRU fed the same key stream.

The key stream is rebuilt from the request records alone: every request looks its key up
when it arrives, and every completed miss writes its key when it completes (the builtin
controller admits everything). Replayed in time order through an independent LRU, that
stream must give exactly the hits the platform recorded.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest

from servegym.sim.config import CacheConfig, CacheTierConfig, ScenarioConfig, SemanticCacheConfig
from servegym.sim.platform import Platform
from servegym.sim.telemetry import COMPLETED

LOOKUP, INSERT = 0, 1


class ReferenceLRU:
    """The plain LRU: a get hit and a put of a present key both make it most recent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[int, None] = OrderedDict()

    def get(self, key: int) -> bool:
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        return False

    def put(self, key: int) -> None:
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        if len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)
        self.entries[key] = None


@pytest.mark.parametrize(("capacity", "latency_s"), [(30, 0.0), (80, 0.004)])
def test_lru_tier_matches_replayed_key_stream(small_scenario: ScenarioConfig, capacity: int, latency_s: float) -> None:
    scenario = dataclasses.replace(
        small_scenario,
        duration_s=90.0,
        cache=CacheConfig(
            tiers=(CacheTierConfig(name="only", capacity=capacity, latency_s=latency_s, eviction="lru"),),
            semantic=SemanticCacheConfig(enabled=False),
            warm_top_intents=0,
        ),
    )
    platform = Platform(scenario)
    platform.run()
    cols = platform.requests.frame()
    hit = cols["hit_level"] == 0
    assert set(np.unique(cols["hit_level"]).tolist()) == {-1, 0}

    # Events: (time, request, kind). Lookups happen at arrival, inserts when a miss completes;
    # a hit answered after the tier's latency was still looked up at its arrival.
    inserted = (cols["outcome"] == COMPLETED) & ~hit
    ids = np.arange(len(cols["key"]))
    times = np.concatenate([cols["arrival_s"], cols["end_s"][inserted]])
    kinds = np.concatenate([np.full(len(ids), LOOKUP), np.full(int(inserted.sum()), INSERT)])
    requests = np.concatenate([ids, ids[inserted]])
    order = np.lexsort((requests, kinds, times))  # by time; ties (none in practice) by kind, then request

    lru = ReferenceLRU(capacity)
    replay_hits = np.zeros(len(ids), dtype=bool)
    for event in order:
        i = requests[event]
        if kinds[event] == LOOKUP:
            replay_hits[i] = lru.get(int(cols["key"][i]))
        else:
            lru.put(int(cols["key"][i]))

    assert int(replay_hits.sum()) == int(hit.sum())
    assert np.array_equal(replay_hits, hit)  # not just the count: the same requests hit
    assert sorted(lru.entries) == sorted(k for k in set(cols["key"].tolist()) if k in platform.tiers[0].store)
    # The test only means something if the cache both hit and evicted often.
    assert 0.1 < hit.mean() < 0.9
    assert platform.tiers[0].store.evictions > 100
