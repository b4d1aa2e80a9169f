"""Cache tiers: exact-match stores with pluggable eviction, and the semantic tier.

An exact tier maps an integer key (tenant, intent and phrasing packed together, so keys
of different tenants never collide) to a stored answer. Eviction policies are small
classes with the same four methods; each one is a plain, well-known algorithm:

* LRU and FIFO over an insertion-ordered dict;
* LFU with O(1) frequency buckets (ties broken by recency);
* S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023):
  a small FIFO (10%), a main FIFO with 2-bit reinsertion (90%), and a ghost FIFO of
  recently evicted keys.

The semantic tier stores unit embeddings per tenant and answers a lookup with the most
similar stored entry when its cosine similarity reaches the threshold.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from servegym.sim.config import CacheTierConfig, SemanticCacheConfig

__all__ = [
    "Entry",
    "EvictionStore",
    "ExactTier",
    "FIFOStore",
    "LFUStore",
    "LRUStore",
    "S3FIFOStore",
    "SemanticTier",
    "make_store",
]

# A stored answer: (tenant, intent, good_answer, expires_s).
Entry = tuple[int, int, bool, float]


class EvictionStore(Protocol):
    """A bounded key-value store that decides what to evict when full."""

    capacity: int
    evictions: int

    @property
    def entries(self) -> Mapping[int, Any]:
        """The stored values by key, for reading only: a membership test without get()'s bookkeeping."""

    def get(self, key: int) -> Any | None:
        """The value for ``key`` (recording the access), or ``None``."""

    def put(self, key: int, value: Any) -> None:
        """Insert or overwrite ``key``; evict first if the store is full."""

    def discard(self, key: int) -> None:
        """Remove ``key`` if present."""

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


class LRUStore:
    """Least recently used: a hit moves the key to the back; evict from the front."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evictions = 0
        self._data: OrderedDict[int, Any] = OrderedDict()
        self.entries = self._data

    def get(self, key: int) -> Any | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: int, value: Any) -> None:
        data = self._data
        if key in data:
            data.move_to_end(key)
        elif len(data) >= self.capacity:
            data.popitem(last=False)
            self.evictions += 1
        data[key] = value

    def discard(self, key: int) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class FIFOStore:
    """First in, first out: hits and overwrites do not change the eviction order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evictions = 0
        self._data: dict[int, Any] = {}
        self.entries = self._data

    def get(self, key: int) -> Any | None:
        return self._data.get(key)

    def put(self, key: int, value: Any) -> None:
        data = self._data
        if key not in data and len(data) >= self.capacity:
            del data[next(iter(data))]
            self.evictions += 1
        data[key] = value

    def discard(self, key: int) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class LFUStore:
    """Least frequently used, in O(1): keys bucketed by access count, LRU within a bucket."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evictions = 0
        self._value: dict[int, Any] = {}
        self.entries = self._value
        self._freq: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._min_freq = 0

    def _touch(self, key: int) -> None:
        f = self._freq[key]
        bucket = self._buckets[f]
        del bucket[key]
        if not bucket:
            del self._buckets[f]
            if self._min_freq == f:
                self._min_freq = f + 1
        self._freq[key] = f + 1
        self._buckets.setdefault(f + 1, OrderedDict())[key] = None

    def get(self, key: int) -> Any | None:
        value = self._value.get(key)
        if value is not None:
            self._touch(key)
        return value

    def put(self, key: int, value: Any) -> None:
        if key in self._value:
            self._value[key] = value
            self._touch(key)
            return
        if len(self._value) >= self.capacity:
            bucket = self._buckets[self._min_freq]
            victim, _ = bucket.popitem(last=False)
            if not bucket:
                del self._buckets[self._min_freq]
            del self._value[victim], self._freq[victim]
            self.evictions += 1
        self._value[key] = value
        self._freq[key] = 1
        self._buckets.setdefault(1, OrderedDict())[key] = None
        self._min_freq = 1

    def discard(self, key: int) -> None:
        if key not in self._value:
            return
        f = self._freq.pop(key)
        del self._value[key]
        bucket = self._buckets[f]
        del bucket[key]
        if not bucket:
            del self._buckets[f]
            if self._min_freq == f:
                self._min_freq = min(self._buckets, default=0)

    def __len__(self) -> int:
        return len(self._value)

    def __contains__(self, key: object) -> bool:
        return key in self._value


class S3FIFOStore:
    """S3-FIFO (SOSP 2023): small FIFO for new keys, main FIFO with reinsertion, ghost FIFO.

    A new key enters the small queue unless the ghost remembers it, in which case it
    enters the main queue. Evicting from the small queue promotes a key that was hit
    while there and sends the others to the ghost; evicting from the main queue
    reinserts a key with a non-zero counter (decrementing it) and drops the first with
    a zero counter. Counters saturate at 3 (two bits).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evictions = 0
        self._small_cap = max(1, capacity // 10)
        self._small: OrderedDict[int, None] = OrderedDict()
        self._main: OrderedDict[int, None] = OrderedDict()
        self._ghost: OrderedDict[int, None] = OrderedDict()
        self._ghost_cap = max(1, capacity - self._small_cap)
        self._value: dict[int, Any] = {}
        self.entries = self._value
        self._freq: dict[int, int] = {}

    def get(self, key: int) -> Any | None:
        value = self._value.get(key)
        if value is not None:
            f = self._freq[key]
            if f < 3:
                self._freq[key] = f + 1
        return value

    def put(self, key: int, value: Any) -> None:
        if key in self._value:
            self._value[key] = value
            return
        if len(self._value) >= self.capacity:
            self._evict()
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = None
        else:
            self._small[key] = None
        self._value[key] = value
        self._freq[key] = 0

    def _evict(self) -> None:
        if len(self._small) >= self._small_cap or not self._main:
            while self._small:
                key, _ = self._small.popitem(last=False)
                if self._freq[key] > 0:
                    self._freq[key] = 0
                    self._main[key] = None
                    if (len(self._main) > self.capacity - self._small_cap or not self._small) and self._evict_main():
                        return
                else:
                    self._drop(key)
                    self._ghost[key] = None
                    if len(self._ghost) > self._ghost_cap:
                        self._ghost.popitem(last=False)
                    return
        self._evict_main()

    def _evict_main(self) -> bool:
        while self._main:
            key, _ = self._main.popitem(last=False)
            f = self._freq[key]
            if f > 0:
                self._freq[key] = f - 1
                self._main[key] = None
            else:
                self._drop(key)
                return True
        return False

    def _drop(self, key: int) -> None:
        del self._value[key], self._freq[key]
        self.evictions += 1

    def discard(self, key: int) -> None:
        if key in self._value:
            del self._value[key], self._freq[key]
            self._small.pop(key, None)
            self._main.pop(key, None)

    def __len__(self) -> int:
        return len(self._value)

    def __contains__(self, key: object) -> bool:
        return key in self._value


_STORES: dict[str, type[LRUStore] | type[FIFOStore] | type[LFUStore] | type[S3FIFOStore]] = {
    "lru": LRUStore,
    "fifo": FIFOStore,
    "lfu": LFUStore,
    "s3fifo": S3FIFOStore,
}


def make_store(eviction: str, capacity: int) -> EvictionStore:
    """A store with the named eviction policy (``lru``, ``lfu``, ``fifo``, ``s3fifo``)."""
    try:
        return _STORES[eviction](capacity)
    except KeyError:
        raise ValueError(f"eviction = {eviction!r} is unknown: must be one of {', '.join(_STORES)}") from None


class ExactTier:
    """An exact-match tier: a store plus TTL, outage state and storage accounting.

    Expired entries are removed lazily when looked up (as Redis does on access) and
    still count towards capacity until then. ``entry_seconds`` integrates occupancy
    over time for storage billing.
    """

    def __init__(self, cfg: CacheTierConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.latency_s = cfg.latency_s
        self.ttl_s = cfg.ttl_s if cfg.ttl_s is not None else float("inf")
        self.store = make_store(cfg.eviction, cfg.capacity)
        self.down = 0  # active outages (they may overlap)
        self.billed = cfg.usd_per_entry_hour > 0
        self.entry_seconds = 0.0
        self._last_t = 0.0

    def get(self, key: int, now: float) -> Entry | None:
        """The live entry for ``key``, or ``None``; an expired entry is removed on the way."""
        entry: Entry | None = self.store.get(key)
        if entry is not None and entry[3] <= now:
            self.expire(key, now)
            return None
        return entry

    def expire(self, key: int, now: float) -> None:
        """Remove an entry whose TTL has passed."""
        if self.billed:
            self.account(now)
        self.store.discard(key)

    def put(self, key: int, entry: Entry, now: float) -> None:
        """Store ``entry`` (its expiry already set by the caller)."""
        if self.billed:
            self.account(now)
        self.store.put(key, entry)

    def account(self, now: float) -> None:
        """Integrate occupancy up to ``now`` (call before every change in size)."""
        self.entry_seconds += len(self.store.entries) * (now - self._last_t)
        self._last_t = now

    def storage_usd(self, now: float) -> float:
        """Storage billed up to ``now`` (reads the integral; changes nothing)."""
        # What account(now) would add, without adding it: environments ask at every step,
        # and a read must not change how the integral is summed.
        entry_seconds = self.entry_seconds + len(self.store.entries) * (now - self._last_t)
        return entry_seconds * self.cfg.usd_per_entry_hour / 3600.0

    def __len__(self) -> int:
        return len(self.store.entries)


# A float32 similarity this close to 1 is an identical phrasing (a unit vector's product
# with itself rounds to either side of 1): it meets any threshold, 1.0 included.
_IDENTICAL = 1.0 - 1e-6


class SemanticTier:
    """Embedding-similarity cache, partitioned by tenant in proportion to traffic weight.

    Each tenant owns a float32 matrix of unit embeddings; a lookup is one matrix-vector
    product over that tenant's rows, so an answer can never cross tenants. Empty rows
    are zero vectors (similarity 0), and the threshold is kept positive so they never
    match. Eviction is LRU (an ordered dict of rows per tenant).
    """

    def __init__(self, cfg: SemanticCacheConfig, tenant_weights: list[float], dim: int) -> None:
        self.cfg = cfg
        self.latency_s = cfg.latency_s
        self.ttl_s = cfg.ttl_s if cfg.ttl_s is not None else float("inf")
        self.threshold = cfg.threshold
        self.down = 0  # active outages (they may overlap)
        total = sum(tenant_weights)
        caps = [max(1, int(cfg.capacity * w / total)) for w in tenant_weights]
        while sum(caps) > cfg.capacity and max(caps) > 1:
            caps[caps.index(max(caps))] -= 1
        self.capacities = caps
        # Entry ``row`` is column ``row`` of a (dim, capacity) matrix: the lookup q @ emb
        # runs as BLAS's non-transposed gemv, markedly faster than emb @ q over rows.
        self.emb = [np.zeros((dim, c), dtype=np.float32) for c in caps]
        self.intent = [[-1] * c for c in caps]
        self.good = [[False] * c for c in caps]
        self.expires = [[math.inf] * c for c in caps]
        self.row_of: list[dict[int, int]] = [{} for _ in caps]
        self.key_of: list[list[int]] = [[-1] * c for c in caps]
        self.recency: list[OrderedDict[int, None]] = [OrderedDict() for _ in caps]
        self.free: list[list[int]] = [list(range(c - 1, -1, -1)) for c in caps]
        self._sims = [np.empty(c, dtype=np.float32) for c in caps]
        self.billed = cfg.usd_per_entry_hour > 0
        self.size = 0
        self.evictions = 0
        self.entry_seconds = 0.0
        self._last_t = 0.0

    def __len__(self) -> int:
        return self.size

    @property
    def threshold(self) -> float:
        """The cosine similarity a hit needs, in (0, 1]."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = value
        self._cut = min(value, _IDENTICAL)  # what lookup() compares with

    def lookup(self, tenant: int, query: np.ndarray, now: float) -> int:
        """Row of the best stored match for ``query`` at or above the threshold, or -1."""
        emb = self.emb[tenant]
        sims = self._sims[tenant]
        while True:
            # ndarray.dot is np.dot's C function without the __array_function__ dispatch
            # (a Python call per lookup); the same BLAS gemv, bit for bit.
            query.dot(emb, out=sims)
            # ndarray.argmax is a C method (max() goes through a Python wrapper): one
            # reduction answers both "any match?" and "which row?".
            row = int(sims.argmax())
            if sims[row] < self._cut:  # most lookups miss
                return -1
            if self.expires[tenant][row] > now:
                self.recency[tenant].move_to_end(row)
                return row
            self._remove(tenant, row, now)

    def put(self, tenant: int, key: int, query: np.ndarray, intent: int, good: bool, now: float) -> None:
        """Store an answer; a phrasing already present is refreshed, not duplicated."""
        rows = self.row_of[tenant]
        row = rows.get(key)
        if row is None:
            free = self.free[tenant]
            if self.billed:
                self.account(now)
            if free:
                row = free.pop()
                self.size += 1
            else:  # evict the least recently used row and reuse it in place
                row, _ = self.recency[tenant].popitem(last=False)
                del rows[self.key_of[tenant][row]]
                self.evictions += 1
            rows[key] = row
            self.key_of[tenant][row] = key
            self.emb[tenant][:, row] = query
            self.recency[tenant][row] = None
        else:
            self.recency[tenant].move_to_end(row)
        self.intent[tenant][row] = intent
        self.good[tenant][row] = good
        self.expires[tenant][row] = now + self.ttl_s

    def _remove(self, tenant: int, row: int, now: float) -> None:
        if self.billed:
            self.account(now)
        self.size -= 1
        del self.row_of[tenant][self.key_of[tenant][row]]
        del self.recency[tenant][row]
        self.key_of[tenant][row] = -1
        self.emb[tenant][:, row] = 0.0
        self.intent[tenant][row] = -1
        self.expires[tenant][row] = math.inf
        self.free[tenant].append(row)

    def account(self, now: float) -> None:
        """Integrate occupancy up to ``now`` (call before every change in size)."""
        self.entry_seconds += self.size * (now - self._last_t)
        self._last_t = now

    def storage_usd(self, now: float) -> float:
        """Storage billed up to ``now`` (reads the integral; changes nothing)."""
        entry_seconds = self.entry_seconds + self.size * (now - self._last_t)
        return entry_seconds * self.cfg.usd_per_entry_hour / 3600.0
