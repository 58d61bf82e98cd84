"""tllm_sched/traces.py: read Mooncake and Azure request traces

Two trace formats are understood, told apart by their content (see
``detect_format``):

* **mooncake** -- JSON Lines, one request per line::

      {"timestamp": ms, "input_length": tokens, "output_length": tokens,
       "hash_ids": [...]}

  ``timestamp`` is an int or float number of milliseconds; the lengths are
  ints.  Each hash id names one 512-token block of the prompt; equal ids mean
  equal block contents.  The last block may be partial (``input_length``
  decides), so a line must carry exactly ``ceil(input_length / 512)`` ids.
  Keys other than these four are ignored.

* **azure** -- CSV with the header ``TIMESTAMP,ContextTokens,GeneratedTokens``
  and rows like ``2023-11-16 18:15:46.6805900,374,44``.  Fields are split on
  commas (quoted fields are not supported; the format never needs them).
  There are no prompt contents, hence no prefix sharing.

Timestamps in the Azure trace carry 7 fractional digits (100 ns ticks).
``datetime.fromisoformat`` on Python 3.11+ accepts them (and silently drops
the digits past the 6th), but Python 3.10 accepts only 3 or 6 digits, so the
fraction is truncated to 6 digits (microseconds) before parsing on every
version.  Truncation, not rounding: a timestamp never moves forward past the
next one.  Naive timestamps are used as they are; time-zone-aware ones are
converted to UTC first.

Every problem with a file raises ``TraceError`` whose message is one line,
``"<file>:<line>: <what is wrong>"``, with 1-based physical line numbers (the
CSV header is line 1).  Blank lines are skipped but still counted.  A UTF-8
byte order mark at the start of the file is ignored, and so are CR characters
of CRLF line ends.

Only a regular file of at most ``files.TRACE_MAX_BYTES`` is read (a FIFO or a
device is refused before it is opened), each line within
``files.TRACE_MAX_LINE_BYTES``; a trace holds at most ``MAX_REQUESTS``
requests of at most ``MAX_REQUEST_TOKENS`` tokens each (a RequestTable's
limits), so whatever is read can be replayed.

``prompt_tokens`` turns a request back into synthetic prompt token ids: for
Mooncake, hash id ``h`` stands for the fixed run of token ids
``(h * 512 + j) mod (2**31 - 1)`` for ``j`` in ``0..511``, so equal hash ids
give equal blocks and requests share exactly the prefixes their hash ids
share.  The rule is injective while ``h * 512 + 511 < 2**31 - 1``, that is
``h < 4_194_303``; the real trace's largest id is 182,789.
For Azure, token ``j`` of request ``i`` is ``(i + j * N) mod (2**31 - 1)``
with ``N`` the number of requests: every (request, position) pair gets its
own token id while ``max_input_length * N < 2**31 - 1`` (the real trace:
14,050 * 19,366 ~ 2.7e8), so no two requests share even their first token.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from tllm_sched import _core
from tllm_sched.files import TRACE_MAX_BYTES, TRACE_MAX_LINE_BYTES, FileProblem, open_input

try:  # orjson is several times faster; json is the fallback.
    import orjson as _orjson

    _json_loads = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

__all__ = [
    "AZURE_HEADER",
    "MOONCAKE_BLOCK_TOKENS",
    "TOKEN_MODULUS",
    "Trace",
    "TraceError",
    "detect_format",
    "load_trace",
    "prompt_tokens",
]

MOONCAKE_BLOCK_TOKENS = 512  # tokens per Mooncake hash id (prompt block)
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"  # required CSV header
TOKEN_MODULUS = 2**31 - 1  # synthetic token ids lie in [0, TOKEN_MODULUS)
MAX_REQUESTS = _core.MAX_TABLE_CAPACITY  # requests of one trace: the most a RequestTable holds
MAX_REQUEST_TOKENS = _core.MAX_REQUEST_TOKENS  # input + output tokens of one request: a RequestTable's limit

_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_BOM = b"\xef\xbb\xbf"
_CSV_INT = re.compile(r"[+-]?[0-9]+")
_LONG_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")
_MICROSECOND = timedelta(microseconds=1)


class TraceError(ValueError):
    """A malformed trace file: ``"<file>:<line>: <what is wrong>"`` on one line."""

    def __init__(self, path: str | os.PathLike, line: int, what: str) -> None:
        self.path = os.fspath(path)
        self.line = int(line)
        self.what = " ".join(str(what).split())  # guarantee a single line
        super().__init__(f"{self.path}:{self.line}: {self.what}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.what))


@dataclass(frozen=True, eq=False, repr=False)
class Trace:
    """A request trace; request ``i`` is index ``i`` of every array.

    The arrays are read-only.  ``eq=False``: traces compare by identity
    (field-wise ``==`` on numpy arrays has no single truth value).  The repr
    is a short summary rather than every array.
    """

    path: str  # the file the trace was read from, as given to load_trace
    format: str  # "mooncake" or "azure"
    arrival_ms: np.ndarray  # float64 arrival times in ms after the first request (first is 0.0)
    input_length: np.ndarray  # int32 prompt lengths in tokens, all > 0
    output_length: np.ndarray  # int32 generated lengths in tokens, all > 0
    hash_ids: list[np.ndarray] | None  # per request int64 block hash ids (mooncake); None for azure
    block_tokens: int  # tokens per hash id block: 512 for mooncake, 0 for azure

    def __len__(self) -> int:
        return int(self.input_length.shape[0])

    def __repr__(self) -> str:
        return f"Trace(path={self.path!r}, format={self.format!r}, {len(self)} requests)"


# --------------------------------------------------------------- small helpers


def _show(value: Any, limit: int = 40) -> str:
    """A short one-line rendering of a (JSON) value for error messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode(raw: bytes, path: str, lineno: int) -> str:
    """One raw line as text, without BOM (line 1) and without the line end."""
    if lineno == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise TraceError(path, lineno, f"not valid UTF-8 (byte {exc.start})") from None


def _open(path: str) -> Any:
    """The trace file opened for binary reading: a regular file within TRACE_MAX_BYTES."""
    try:
        return open_input(path, TRACE_MAX_BYTES, "trace")
    except FileProblem as exc:
        raise TraceError(path, 1, exc.what) from None


def _lines(f: Any, path: str):
    """(line number, raw line) of `f`, each line read within TRACE_MAX_LINE_BYTES."""
    lineno = 0
    while True:
        raw = f.readline(TRACE_MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > TRACE_MAX_LINE_BYTES:
            raise TraceError(path, lineno, f"line longer than the limit of {TRACE_MAX_LINE_BYTES:,} bytes")
        yield lineno, raw


def _check_request(n_requests: int, n_in: int, n_out: int, path: str, lineno: int) -> None:
    """One more request fits a RequestTable: the request count and the request's tokens."""
    if n_requests >= MAX_REQUESTS:
        raise TraceError(path, lineno, f"more than {MAX_REQUESTS:,} requests, the most a RequestTable holds "
                                       f"(read fewer: a limit, or bench --trace-limit)")
    if n_in + n_out > MAX_REQUEST_TOKENS:
        raise TraceError(path, lineno, f"input + output length {n_in + n_out:,} exceeds the limit of "
                                       f"{MAX_REQUEST_TOKENS:,} tokens per request")


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool):
        raise TypeError("limit must be an int or None, not bool")
    limit = operator.index(limit)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of requests, got {limit}")
    return limit


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# ------------------------------------------------------------- format sniffing


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"mooncake"`` or ``"azure"`` judging by the file's content.

    The first non-empty line decides: starting with ``{`` means Mooncake JSON
    Lines; being the Azure CSV header (surrounding whitespace and a BOM
    ignored) means Azure.  Anything else, or a file with no non-empty line,
    raises ``TraceError``.
    """
    path = os.fspath(path)
    with _open(path) as f:
        for lineno, raw in _lines(f, path):
            text = _decode(raw, path, lineno).strip()
            if not text:
                continue
            if text.startswith("{"):
                return "mooncake"
            if text == AZURE_HEADER:
                return "azure"
            if "," in text:
                raise TraceError(
                    path, lineno,
                    f"wrong CSV header {_show(text)}, expected {AZURE_HEADER!r}")
            raise TraceError(
                path, lineno,
                f"unknown trace format: {_show(text)} is neither a JSON object "
                f"(Mooncake) nor the CSV header {AZURE_HEADER!r} (Azure)")
    raise TraceError(path, 1, "empty file: no requests")


def load_trace(path: str | os.PathLike, *, limit: int | None = None) -> Trace:
    """Read a Mooncake or Azure trace; ``limit`` keeps only the first N requests."""
    limit = _check_limit(limit)
    try:
        fmt = detect_format(path)
        if fmt == "mooncake":
            return _load_mooncake(os.fspath(path), limit)
        return _load_azure(os.fspath(path), limit)
    except OSError as exc:  # missing, a directory, unreadable: still one line naming the file
        raise TraceError(os.fspath(path), 1, f"cannot read the file: {exc.strerror or exc}") from None


# -------------------------------------------------------------------- Mooncake


def _parse_json(text: str, path: str, lineno: int) -> Any:
    try:
        return _json_loads(text)
    except (ValueError, RecursionError) as exc:
        what = getattr(exc, "msg", None) or type(exc).__name__
        col = getattr(exc, "colno", None)
        where = f" at column {col}" if col else ""
        raise TraceError(path, lineno, f"invalid JSON: {what}{where}") from None


def _timestamp(value: Any, path: str, lineno: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceError(path, lineno, f"timestamp must be a number of ms, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise TraceError(path, lineno, f"timestamp must be finite, got {value}")
    if value < 0:
        raise TraceError(path, lineno, f"timestamp is negative ({value})")
    return value


def _length(value: Any, key: str, path: str, lineno: int) -> int:
    """A token count: a JSON integer (not bool, not float), 0 < value < 2**31."""
    if type(value) is not int:
        raise TraceError(path, lineno, f"{key} must be an integer, got {_show(value)}")
    return _positive_count(value, key, path, lineno)


def _positive_count(value: int, key: str, path: str, lineno: int) -> int:
    if value < 0:
        raise TraceError(path, lineno, f"{key} is negative ({value})")
    if value == 0:
        raise TraceError(path, lineno, f"{key} is 0; it must be > 0 (at least one token)")
    if value > _INT32_MAX:
        raise TraceError(path, lineno, f"{key} {value} is too large (max {_INT32_MAX})")
    return value


def _hash_ids(value: Any, input_length: int, path: str, lineno: int) -> list[int]:
    if not isinstance(value, list):
        raise TraceError(path, lineno, f"hash_ids must be a list, got {_show(value)}")
    if not all(type(h) is int and 0 <= h <= _INT64_MAX for h in value):
        k, bad = next((k, h) for k, h in enumerate(value)
                      if not (type(h) is int and 0 <= h <= _INT64_MAX))
        kind = "negative" if type(bad) is int and bad < 0 else "not an int64 >= 0"
        raise TraceError(path, lineno, f"hash_ids[{k}] is {kind}: {_show(bad)}")
    need = -(-input_length // MOONCAKE_BLOCK_TOKENS)
    if len(value) != need:
        raise TraceError(
            path, lineno,
            f"hash_ids has {len(value)} ids but input_length {input_length} needs "
            f"exactly {need} (one per {MOONCAKE_BLOCK_TOKENS}-token block)")
    return value


def _mooncake_record(obj: Any, path: str, lineno: int) -> tuple[float, int, int, list[int]]:
    if not isinstance(obj, dict):
        raise TraceError(path, lineno, f"expected a JSON object, got {_show(obj)}")
    for key in _MOONCAKE_KEYS:
        if key not in obj:
            raise TraceError(path, lineno, f"missing key {key!r}")
    ts = _timestamp(obj["timestamp"], path, lineno)
    n_in = _length(obj["input_length"], "input_length", path, lineno)
    n_out = _length(obj["output_length"], "output_length", path, lineno)
    ids = _hash_ids(obj["hash_ids"], n_in, path, lineno)
    return ts, n_in, n_out, ids


def _load_mooncake(path: str, limit: int | None) -> Trace:
    stamps: list[float] = []
    n_in: list[int] = []
    n_out: list[int] = []
    counts: list[int] = []
    flat: list[int] = []
    lineno = 0
    with _open(path) as f:
        for lineno, raw in _lines(f, path):
            text = _decode(raw, path, lineno)
            if not text.strip():
                continue
            ts, a, b, ids = _mooncake_record(_parse_json(text, path, lineno), path, lineno)
            _check_request(len(n_in), a, b, path, lineno)
            if stamps and ts < stamps[-1]:
                raise TraceError(
                    path, lineno,
                    f"timestamp {ts} is earlier than the previous request's "
                    f"{stamps[-1]} (timestamps must not decrease)")
            stamps.append(ts)
            n_in.append(a)
            n_out.append(b)
            counts.append(len(ids))
            flat.extend(ids)
            if limit is not None and len(n_in) >= limit:
                break
    if not n_in:
        raise TraceError(path, lineno + 1, "no requests in the file")
    flat_ids = _frozen(np.array(flat, dtype=np.int64))
    per_request = np.split(flat_ids, np.cumsum(counts[:-1], dtype=np.int64))
    return _make_trace(path, "mooncake", np.array(stamps, dtype=np.float64),
                       n_in, n_out, per_request, MOONCAKE_BLOCK_TOKENS)


def _make_trace(path: str, fmt: str, stamps: np.ndarray, n_in: list[int],
                n_out: list[int], hash_ids: list[np.ndarray] | None,
                block_tokens: int) -> Trace:
    return Trace(
        path=path,
        format=fmt,
        arrival_ms=_frozen(stamps - stamps[0]),
        input_length=_frozen(np.array(n_in, dtype=np.int32)),
        output_length=_frozen(np.array(n_out, dtype=np.int32)),
        hash_ids=hash_ids,
        block_tokens=block_tokens,
    )


# ----------------------------------------------------------------------- Azure


def _azure_time(text: str, path: str, lineno: int) -> datetime:
    """Parse an ISO timestamp, first truncating the fraction to 6 digits."""
    try:
        stamp = datetime.fromisoformat(_LONG_FRACTION.sub(r"\1", text, count=1))
    except ValueError:
        raise TraceError(path, lineno, f"unparseable TIMESTAMP {_show(text)}") from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(timezone.utc).replace(tzinfo=None)
    return stamp


def _csv_count(text: str, column: str, path: str, lineno: int) -> int:
    if not _CSV_INT.fullmatch(text):
        raise TraceError(path, lineno, f"{column} is not an integer: {_show(text)}")
    return _positive_count(int(text), column, path, lineno)


def _azure_row(text: str, path: str, lineno: int) -> tuple[datetime, int, int]:
    fields = [field.strip() for field in text.split(",")]
    if len(fields) != 3:
        raise TraceError(
            path, lineno,
            f"expected 3 fields ({AZURE_HEADER}), got {len(fields)}: {_show(text)}")
    stamp = _azure_time(fields[0], path, lineno)
    context = _csv_count(fields[1], "ContextTokens", path, lineno)
    generated = _csv_count(fields[2], "GeneratedTokens", path, lineno)
    return stamp, context, generated


def _load_azure(path: str, limit: int | None) -> Trace:
    stamps: list[datetime] = []
    n_in: list[int] = []
    n_out: list[int] = []
    lineno = 0
    header_seen = False
    with _open(path) as f:
        for lineno, raw in _lines(f, path):
            text = _decode(raw, path, lineno)
            if not text.strip():
                continue
            if not header_seen:
                if text.strip() != AZURE_HEADER:
                    raise TraceError(path, lineno, f"wrong CSV header {_show(text.strip())}, "
                                                   f"expected {AZURE_HEADER!r}")
                header_seen = True
                continue
            stamp, a, b = _azure_row(text, path, lineno)
            _check_request(len(n_in), a, b, path, lineno)
            if stamps and stamp < stamps[-1]:
                raise TraceError(
                    path, lineno,
                    f"TIMESTAMP {stamp.isoformat(sep=' ')} is earlier than the previous "
                    f"row's {stamps[-1].isoformat(sep=' ')} (timestamps must not decrease)")
            stamps.append(stamp)
            n_in.append(a)
            n_out.append(b)
            if limit is not None and len(n_in) >= limit:
                break
    if not n_in:
        raise TraceError(path, lineno + 1, "no requests in the file (only a header)")
    first = stamps[0]
    micros = [(s - first) // _MICROSECOND for s in stamps]
    arrival = np.array(micros, dtype=np.float64) / 1000.0
    return _make_trace(path, "azure", arrival, n_in, n_out, None, 0)


# ------------------------------------------------------------- prompt content


def prompt_tokens(trace: Trace, i: int) -> np.ndarray:
    """Synthetic prompt token ids (int32, length ``input_length[i]``) of request ``i``.

    Mooncake: hash id ``h`` maps to ``(h * 512 + arange(512)) mod (2**31 - 1)``;
    the runs of the request's ids are concatenated and cut to ``input_length``,
    so requests with a common leading run of hash ids share exactly that
    prefix.  Azure: ``(i + arange(n) * len(trace)) mod (2**31 - 1)``, unique
    to request ``i``.  Negative ``i`` counts from the end.
    """
    count = len(trace)
    i = operator.index(i)
    if not -count <= i < count:
        raise IndexError(f"request {i} out of range for a trace of {count} requests")
    i %= count
    n = int(trace.input_length[i])
    if trace.hash_ids is not None:
        block = trace.block_tokens
        ids = trace.hash_ids[i] % TOKEN_MODULUS  # keeps ids * block inside int64
        runs = (ids[:, None] * block + np.arange(block, dtype=np.int64)) % TOKEN_MODULUS
        return runs.reshape(-1)[:n].astype(np.int32)
    positions = np.arange(n, dtype=np.int64)
    return ((i + positions * count) % TOKEN_MODULUS).astype(np.int32)
