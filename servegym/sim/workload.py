"""What arrives and when: arrival processes, tenants, intents, token lengths, trace replay.

Every attribute of a request is drawn at arrival, in numpy batches, from its own named
stream, and none depends on what any policy decides. Two policies run with the same
seed therefore see the same requests, in the same order, at the same times.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtri

from servegym.sim.config import TenantConfig, WorkloadConfig
from servegym.sim.random import Streams

__all__ = ["RequestBatch", "Trace", "TraceError", "Workload", "load_trace", "read_trace"]

BATCH = 4_096
TRACE_SCHEMAS = ("azure", "plain", "mooncake")
_INT64_MAX = 2**63 - 1


class TraceError(ValueError):
    """A trace file cannot be replayed; the message names the file and the line."""


@dataclass(frozen=True)
class Trace:
    """A replayable trace: arrival offsets in seconds from its first request, and tokens.

    A Mooncake trace also describes each prompt as blocks of tokens, by hash: two
    requests whose ``hash_ids`` start alike share that prompt prefix. The ids of all
    requests are concatenated in ``hash_ids``; request ``i``'s are
    ``hash_ids[hash_ids_start[i]:hash_ids_start[i + 1]]`` (:meth:`hash_ids_of`). The CSV
    schemas have none (both ``None``).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: np.ndarray | None = None
    hash_ids_start: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def last_arrival_s(self) -> float:
        """When the last request arrives, in seconds after the first (before any speed-up)."""
        return float(self.arrival_s[-1])

    def hash_ids_of(self, i: int) -> np.ndarray:
        """The prompt block hashes of request ``i`` (Mooncake traces only)."""
        if self.hash_ids is None or self.hash_ids_start is None:
            raise ValueError("this trace has no hash_ids: only the mooncake schema carries them")
        return self.hash_ids[self.hash_ids_start[i] : self.hash_ids_start[i + 1]]


MAX_TRACE_TOKENS = 10_000_000
"""The most tokens a trace row may give a prompt or an output: ten times the longest context
window of any model in service in 2026. A larger count is a corrupt row (2^31 is an overflow
elsewhere), which would otherwise sit in service past the run and be billed nothing."""


def _check_token_count(value: int, column: str, where: str) -> int:
    if value < 0:
        raise TraceError(f"{where}: {column} {value} is negative")
    if value > MAX_TRACE_TOKENS:
        raise TraceError(
            f"{where}: {column} {value:,} is more tokens than any model takes (at most {MAX_TRACE_TOKENS:,}); "
            "is the row corrupt?"
        )
    return value


def _parse_tokens(raw: str, column: str, where: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise TraceError(f"{where}: {column} {raw!r} is not an integer") from None
    return _check_token_count(value, column, where)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); a bad byte is reported by line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TraceError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; a trace must be UTF-8"
        ) from None


def read_trace(path: str | Path, schema: str = "azure") -> Trace:
    """Read a request trace: CSV in the ``azure`` or ``plain`` schema, or ``mooncake`` JSON Lines.

    ``azure``: the schema of the Azure LLM inference traces,
    ``TIMESTAMP,ContextTokens,GeneratedTokens`` with ISO timestamps.
    ``plain``: ``time_s,prompt_tokens,output_tokens`` with seconds since the start
    (a header line is optional).
    ``mooncake``: the schema of the Mooncake traces (Qin et al., FAST 2025), one JSON
    object per line: ``timestamp`` (milliseconds, an integer or a number),
    ``input_length`` and ``output_length`` (tokens), ``hash_ids`` (a list of integers:
    the prompt's blocks, shared ids marking a shared prefix); other keys are ignored.
    Requests must be in time order; times become offsets from the first request. A
    malformed row or line raises :class:`TraceError` naming the file and the line.
    """
    path = Path(path)
    if schema not in TRACE_SCHEMAS:
        raise TraceError(f"trace schema {schema!r} is unknown: must be {', '.join(TRACE_SCHEMAS[:-1])} or mooncake")
    if not path.exists():
        raise TraceError(f"trace file {path} does not exist")
    if not path.is_file():
        raise TraceError(f"trace {path} is a directory, not a trace file")
    text = _read_text(path)
    if schema == "mooncake":
        return _read_mooncake(path, text)
    return _read_csv(path, text, schema)


@functools.lru_cache(maxsize=8)
def _cached_trace(resolved: str, mtime_ns: int, size: int, schema: str) -> Trace:
    trace = read_trace(resolved, schema)
    for f in dataclasses.fields(trace):
        array = getattr(trace, f.name)
        if array is not None:
            array.setflags(write=False)
    return trace


def load_trace(path: str | Path, schema: str = "azure") -> Trace:
    """:func:`read_trace`, read once per file version: cached by path, modification time, size and schema.

    Building a scenario that follows its trace (``duration_s: null``) and every platform
    of it (an environment builds one per episode) share one read. The arrays are read-only.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return read_trace(path, schema)  # the reader says what is wrong with the path
    return _cached_trace(str(path.resolve()), stat.st_mtime_ns, stat.st_size, schema)


_CSV_HEADERS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "plain": ("time_s", "prompt_tokens", "output_tokens"),
}


def _schema_hint(first_line: str, schema: str) -> str:
    """A hint naming the schema a trace's first line belongs to, when it is not ``schema``; else ``""``."""
    if schema != "mooncake" and first_line.lstrip().startswith("{"):
        return ": it is JSON Lines, set workload.trace_schema=mooncake"
    header = tuple(c.strip() for c in first_line.split(","))
    for other, columns in _CSV_HEADERS.items():
        if other != schema and header == columns:
            return f": it is the {'Azure' if other == 'azure' else 'plain'} schema, set workload.trace_schema={other}"
    return ""


def _csv_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The reader's rows; a row the csv module refuses (a field over its size limit) is a :class:`TraceError`."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise TraceError(f"{path}, line {reader.line_num}: {exc}; is this a CSV trace?") from None
        yield row


def _read_csv(path: Path, text: str, schema: str) -> Trace:
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    origin: datetime | None = None
    reader = csv.reader(io.StringIO(text, newline=""))
    for row in _csv_rows(reader, path):
        line = reader.line_num
        where = f"{path}, line {line}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1:
            if [c.strip() for c in row] == list(_CSV_HEADERS[schema]):
                continue
            hint = _schema_hint(",".join(row), schema)
            expected = ",".join(_CSV_HEADERS[schema])
            if schema == "azure":
                raise TraceError(f"{where}: header {row} is not the Azure schema {expected}{hint}")
            if hint:  # the plain schema's header is optional: only another schema's first line is refused here
                raise TraceError(f"{where}: {row} is not the plain schema {expected}{hint}")
        if len(row) != 3:
            raise TraceError(f"{where}: expected 3 fields, found {len(row)}: {row}")
        stamp, prompt, output = (cell.strip() for cell in row)
        if schema == "azure":
            try:
                moment = datetime.fromisoformat(stamp)
            except ValueError:
                raise TraceError(f"{where}: TIMESTAMP {stamp!r} is not an ISO date and time") from None
            if origin is None:
                origin = moment
            elif (moment.tzinfo is None) != (origin.tzinfo is None):
                raise TraceError(f"{where}: TIMESTAMP {stamp!r} mixes time zones with the first row's")
            t = (moment - origin).total_seconds()
            columns = ("ContextTokens", "GeneratedTokens")
        else:
            try:
                t = float(stamp)
            except ValueError:
                raise TraceError(f"{where}: time_s {stamp!r} is not a number") from None
            if not math.isfinite(t) or t < 0:
                raise TraceError(f"{where}: time_s {stamp!r} must be a finite number >= 0")
            columns = ("prompt_tokens", "output_tokens")
        if times and t < times[-1]:
            raise TraceError(f"{where}: time goes backwards ({t:.6f} s after {times[-1]:.6f} s); sort the trace")
        times.append(t)
        prompts.append(_parse_tokens(prompt, columns[0], where))
        outputs.append(_parse_tokens(output, columns[1], where))
    if not times:
        raise TraceError(f"{path}: the trace has no requests")
    arrival = np.asarray(times, dtype=np.float64)
    if schema == "plain":
        arrival -= arrival[0]
    return Trace(arrival, np.asarray(prompts, dtype=np.int64), np.asarray(outputs, dtype=np.int64))


_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def _json_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mooncake_count(record: dict[str, Any], key: str, where: str) -> int:
    value = record[key]
    if not _json_int(value):
        raise TraceError(f"{where}: {key} {value!r} is not an integer number of tokens")
    return _check_token_count(int(value), key, where)


def _read_mooncake(path: Path, text: str) -> Trace:
    """The ``mooncake`` schema: JSON Lines of ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``."""
    stamps_ms: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    hash_ids: list[int] = []
    starts = [0]
    # Lines end at "\n" only (str.splitlines would also split at characters JSON strings may hold).
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}, line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if line_no == 1:
                csv_like = "," in line and not line.startswith(("{", "["))
                hint = _schema_hint(line, "mooncake") or (
                    ": it looks like CSV, set workload.trace_schema=azure or plain" if csv_like else ""
                )
            raise TraceError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}){hint}") from None
        if not isinstance(record, dict):
            raise TraceError(
                f"{where}: expected a JSON object with keys {', '.join(_MOONCAKE_KEYS)}, "
                f"found {type(record).__name__} {line[:60]}"
            )
        missing = [key for key in _MOONCAKE_KEYS if key not in record]
        if missing:
            raise TraceError(f"{where}: missing key {missing[0]!r}; a Mooncake line has {', '.join(_MOONCAKE_KEYS)}")
        stamp = record["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
            raise TraceError(f"{where}: timestamp {stamp!r} is not a finite number of milliseconds")
        if stamp < 0:
            raise TraceError(f"{where}: timestamp {stamp} is negative")
        if stamps_ms and stamp < stamps_ms[-1]:
            raise TraceError(
                f"{where}: time goes backwards (timestamp {stamp} ms after {stamps_ms[-1]} ms); sort the trace"
            )
        blocks = record["hash_ids"]
        if not isinstance(blocks, list):
            raise TraceError(f"{where}: hash_ids {blocks!r} is not a list of integers")
        for block in blocks:
            if not _json_int(block) or not -_INT64_MAX - 1 <= block <= _INT64_MAX:
                raise TraceError(f"{where}: hash_ids holds {block!r}, not a 64-bit integer")
        stamps_ms.append(stamp)
        prompts.append(_mooncake_count(record, "input_length", where))
        outputs.append(_mooncake_count(record, "output_length", where))
        hash_ids.extend(blocks)
        starts.append(len(hash_ids))
    if not stamps_ms:
        raise TraceError(f"{path}: the trace has no requests")
    arrival = np.asarray(stamps_ms, dtype=np.float64) / 1000.0
    arrival -= arrival[0]
    return Trace(
        arrival,
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        np.asarray(hash_ids, dtype=np.int64),
        np.asarray(starts, dtype=np.int64),
    )


@dataclass
class RequestBatch:
    """Consecutive requests as columns. ``intent`` is the tenant-local intent index."""

    arrival_s: np.ndarray
    tenant: np.ndarray
    intent: np.ndarray
    variant: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    difficulty: np.ndarray
    u_service: np.ndarray
    z_service: np.ndarray
    u_quality: np.ndarray
    u_failure: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)


class _TenantCatalogue:
    """A tenant's intents: Zipf popularity, difficulty and embeddings of every phrasing.

    A catalogue is a pure function of its configuration and the seed, and read-only, so
    :func:`_catalogue` shares it between platforms (an environment resets many times).
    """

    def __init__(self, cfg: TenantConfig, index: int, wl: WorkloadConfig, streams: Streams) -> None:
        self.cfg = cfg
        ranks = np.arange(1, cfg.n_intents + 1, dtype=np.float64)
        weights = ranks ** (-cfg.zipf_s)
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0
        catalogue = streams[f"catalogue/{index}"]
        self.difficulty = catalogue.beta(cfg.difficulty_a, cfg.difficulty_b, cfg.n_intents)
        d = wl.embedding_dim
        n_topics = -(-cfg.n_intents // wl.intents_per_topic)
        topics = _unit(catalogue.standard_normal((n_topics, d)))
        topic_of = np.arange(cfg.n_intents) // wl.intents_per_topic
        centroids = _unit(
            topics[topic_of] + wl.intent_spread * catalogue.standard_normal((cfg.n_intents, d)) / math.sqrt(d)
        )
        noise = catalogue.standard_normal((cfg.n_intents, cfg.n_variants, d)) / math.sqrt(d)
        self.embeddings = _unit(centroids[:, None, :] + wl.phrasing_noise * noise).astype(np.float32)
        for array in (self.cdf, self.difficulty, self.embeddings):
            array.setflags(write=False)

    def intents(self, u: np.ndarray, arrival_s: np.ndarray) -> np.ndarray:
        """Map uniforms to intents through the Zipf law, rotated by popularity drift."""
        rank = np.searchsorted(self.cdf, u, side="right")
        np.minimum(rank, self.cfg.n_intents - 1, out=rank)
        if self.cfg.drift_every_s is not None:
            epoch = np.floor(arrival_s / self.cfg.drift_every_s).astype(np.int64)
            rank = (rank + epoch * self.cfg.drift_shift) % self.cfg.n_intents
        return rank


@functools.lru_cache(maxsize=16)
def _catalogue(cfg: TenantConfig, index: int, wl: WorkloadConfig, seed: int) -> _TenantCatalogue:
    return _TenantCatalogue(cfg, index, wl, Streams(seed))


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return unit


class Workload:
    """The request stream of a scenario, generated lazily in batches.

    ``batches(duration_s)`` yields :class:`RequestBatch` objects whose arrival times are
    increasing and below ``duration_s``; ``embeddings[tenant][intent, variant]`` is the
    unit embedding of a phrasing. The intent catalogues (popularity, difficulty,
    embeddings: the "world") come from ``catalogue_seed`` (default: the streams' seed),
    so runs with different request seeds can share one world.
    """

    def __init__(
        self, cfg: WorkloadConfig, streams: Streams, trace: Trace | None = None, catalogue_seed: int | None = None
    ) -> None:
        self.cfg = cfg
        self.streams = streams
        # Only the embedding parameters matter to a catalogue; keying on them shares it across rates.
        key = dataclasses.replace(cfg, kind="poisson", trace_path=None, flash_crowds=(), rate_rps=1.0)
        world = streams.seed if catalogue_seed is None else catalogue_seed
        self.catalogues = [_catalogue(t, i, key, world) for i, t in enumerate(cfg.tenants)]
        self.embeddings = [c.embeddings for c in self.catalogues]
        shares = np.array([t.weight for t in cfg.tenants], dtype=np.float64)
        self.tenant_cdf = np.cumsum(shares / shares.sum())
        self.tenant_cdf[-1] = 1.0
        if cfg.kind == "trace" and trace is None:
            assert cfg.trace_path is not None
            trace = load_trace(cfg.trace_path, cfg.trace_schema)
        self.trace = trace
        self._mmpp_switch_s: np.ndarray | None = None

    # -- arrival times ---------------------------------------------------------------
    def rate_at(self, t: np.ndarray) -> np.ndarray:
        """The instantaneous arrival rate (requests/s) of the Poisson-family processes."""
        cfg = self.cfg
        if cfg.kind == "diurnal":
            rate = cfg.rate_rps * (1 + cfg.amplitude * np.cos(2 * np.pi * (t - cfg.peak_s) / cfg.period_s))
        elif cfg.kind == "mmpp":
            assert self._mmpp_switch_s is not None
            bursting = np.searchsorted(self._mmpp_switch_s, t, side="right") % 2 == 1
            rate = np.where(bursting, cfg.burst_rate_rps, cfg.rate_rps)
        else:
            rate = np.full_like(t, cfg.rate_rps, dtype=np.float64)
        for flash in cfg.flash_crowds:
            inside = (t >= flash.start_s) & (t < flash.start_s + flash.duration_s)
            rate = np.where(inside, rate * flash.multiplier, rate)
        return np.asarray(rate, dtype=np.float64)

    def _mmpp_switches(self, duration_s: float) -> np.ndarray:
        """Times at which the two-state chain switches (calm first)."""
        rng = self.streams["mmpp"]
        switches: list[float] = []
        t, bursting = 0.0, False
        while t < duration_s:
            t += rng.exponential(self.cfg.mean_burst_s if bursting else self.cfg.mean_calm_s)
            switches.append(t)
            bursting = not bursting
        return np.asarray(switches)

    def _arrival_times(self, duration_s: float) -> Iterator[np.ndarray]:
        cfg = self.cfg
        if cfg.kind == "trace":
            assert self.trace is not None
            times = self.trace.arrival_s / cfg.trace_speedup
            times = times[times < duration_s]
            for start in range(0, len(times), BATCH):
                yield times[start : start + BATCH]
            return
        rng = self.streams["arrivals"]
        t = 0.0
        if cfg.kind == "gamma":
            shape = 1.0 / cfg.cv**2
            scale = 1.0 / (cfg.rate_rps * shape)
            while t < duration_s:
                times = t + np.cumsum(rng.gamma(shape, scale, BATCH))
                t = float(times[-1])
                yield times[times < duration_s]
            return
        if cfg.kind == "mmpp":
            self._mmpp_switch_s = self._mmpp_switches(duration_s)
        homogeneous = cfg.kind == "poisson" and not cfg.flash_crowds
        peak = cfg.peak_rate_rps()
        while t < duration_s:
            # Lewis-Shedler thinning: candidates at the peak rate, kept with prob rate(t)/peak.
            times = t + np.cumsum(rng.exponential(1.0 / peak, BATCH))
            t = float(times[-1])
            if not homogeneous:
                keep = rng.random(BATCH) * peak < self.rate_at(times)
                times = times[keep]
            yield times[times < duration_s]

    # -- request attributes ------------------------------------------------------------
    def batches(self, duration_s: float) -> Iterator[RequestBatch]:
        """Yield the scenario's requests in arrival order, in batches."""
        s = self.streams
        offset = 0
        for arrival in self._arrival_times(duration_s):
            n = len(arrival)
            if n == 0:
                continue
            tenant = np.searchsorted(self.tenant_cdf, s["tenant"].random(n), side="right")
            np.minimum(tenant, len(self.catalogues) - 1, out=tenant)
            u_intent = s["intent"].random(n)
            u_variant = s["variant"].random(n)
            z_prompt = s["prompt_tokens"].standard_normal(n)
            z_output = s["output_tokens"].standard_normal(n)
            intent = np.empty(n, dtype=np.int64)
            variant = np.empty(n, dtype=np.int64)
            prompt = np.empty(n, dtype=np.int64)
            output = np.empty(n, dtype=np.int64)
            difficulty = np.empty(n, dtype=np.float64)
            for k, cat in enumerate(self.catalogues):
                m = tenant == k
                if not m.any():
                    continue
                tok = cat.cfg.tokens
                intent[m] = cat.intents(u_intent[m], arrival[m])
                variant[m] = np.minimum((u_variant[m] * cat.cfg.n_variants).astype(np.int64), cat.cfg.n_variants - 1)
                prompt[m] = np.clip(
                    np.rint(np.exp(tok.prompt_mu + tok.prompt_sigma * z_prompt[m])), 1, tok.max_prompt_tokens
                )
                output[m] = np.clip(
                    np.rint(np.exp(tok.output_mu + tok.output_sigma * z_output[m])), 1, tok.max_output_tokens
                )
                difficulty[m] = cat.difficulty[intent[m]]
            if self.trace is not None:
                idx = slice(offset, offset + n)
                prompt = self.trace.prompt_tokens[idx].copy()
                output = np.maximum(self.trace.output_tokens[idx], 1)
            offset += n
            u_service = s["service"].random(n)
            yield RequestBatch(
                arrival_s=arrival,
                tenant=tenant,
                intent=intent,
                variant=variant,
                prompt_tokens=prompt,
                output_tokens=output,
                difficulty=difficulty,
                u_service=u_service,
                z_service=ndtri(u_service),
                u_quality=s["quality"].random(n),
                u_failure=s["failure"].random(n),
            )
