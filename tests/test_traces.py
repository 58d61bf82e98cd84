"""tests/test_traces.py: tests of tllm_sched/traces.py on the real traces and on malformed files."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from tllm_sched.traces import (
    AZURE_HEADER,
    TOKEN_MODULUS,
    Trace,
    TraceError,
    detect_format,
    load_trace,
    prompt_tokens,
)
from utils import SHARED

DATA = SHARED / "data"
MOONCAKE = DATA / "mooncake_conversation_trace.jsonl"
AZURE = DATA / "azure_llm_inference_2023_conv.csv"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real trace {path} is missing (tests read it in place; it is not in the repo)")
    return path


@pytest.fixture(scope="module")
def mooncake() -> Trace:
    return load_trace(_require(MOONCAKE))


@pytest.fixture(scope="module")
def azure() -> Trace:
    return load_trace(_require(AZURE))


# ------------------------------------------------------------------ real data


def test_mooncake_full_trace_matches_readme_figures(mooncake: Trace) -> None:
    t = mooncake
    assert t.format == "mooncake" and t.block_tokens == 512 and t.path == str(MOONCAKE)
    assert len(t) == 12_031
    assert t.arrival_ms.dtype == np.float64
    assert t.input_length.dtype == np.int32 and t.output_length.dtype == np.int32
    assert np.median(t.input_length) == 6_909 and t.input_length.max() == 126_195
    assert np.median(t.output_length) == 350 and t.output_length.max() == 2_000
    assert t.input_length.min() > 0 and t.output_length.min() > 0
    assert t.hash_ids is not None and len(t.hash_ids) == len(t)
    assert all(h.dtype == np.int64 for h in t.hash_ids)
    counts = np.array([h.size for h in t.hash_ids])
    assert np.array_equal(counts, -(-t.input_length.astype(np.int64) // 512))
    blocks = np.concatenate(t.hash_ids)
    assert blocks.size == 288_500
    assert np.unique(blocks).size == 182_790


def test_mooncake_arrivals(mooncake: Trace) -> None:
    a = mooncake.arrival_ms
    assert a[0] == 0.0
    assert np.all(np.diff(a) >= 0)
    assert a[-1] == 3_536_999.0  # about 59 minutes, as the README says


def test_trace_repr_is_short(mooncake: Trace) -> None:
    text = repr(mooncake)
    assert "12031 requests" in text and "mooncake" in text and len(text) < 300


def test_azure_full_trace(azure: Trace) -> None:
    t = azure
    assert t.format == "azure" and t.block_tokens == 0 and t.hash_ids is None
    assert len(t) == 19_366
    assert t.arrival_ms.dtype == np.float64
    assert t.input_length.dtype == np.int32 and t.output_length.dtype == np.int32
    assert t.arrival_ms[0] == 0.0
    assert np.all(np.diff(t.arrival_ms) >= 0)
    # 18:15:46.6805900 to 19:14:08.4025270 is 3,501,721.937 ms (7th digit dropped)
    assert 3_501_721.9 <= t.arrival_ms[-1] <= 3_501_722.0
    assert t.input_length.min() > 0 and t.output_length.min() > 0
    assert t.input_length.max() == 14_050 and t.output_length.max() == 1_000


def test_detect_format_on_real_files() -> None:
    assert detect_format(_require(MOONCAKE)) == "mooncake"
    assert detect_format(_require(AZURE)) == "azure"


@pytest.mark.parametrize("which", ["mooncake", "azure"])
def test_limit_reads_a_prefix(which: str, request: pytest.FixtureRequest) -> None:
    full: Trace = request.getfixturevalue(which)
    part = load_trace(full.path, limit=7)
    assert len(part) == 7
    assert np.array_equal(part.arrival_ms, full.arrival_ms[:7])
    assert np.array_equal(part.input_length, full.input_length[:7])
    assert np.array_equal(part.output_length, full.output_length[:7])
    if full.hash_ids is not None:
        assert all(np.array_equal(a, b) for a, b in zip(part.hash_ids, full.hash_ids[:7]))
    assert len(load_trace(full.path, limit=10**9)) == len(full)


def test_limit_must_be_positive(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.jsonl", _line(0, 10, 1, [0]) + "\n")
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"limit must be a positive number of requests, got {bad}"):
            load_trace(path, limit=bad)
    with pytest.raises(TypeError, match="limit must be an int or None, not bool"):
        load_trace(path, limit=True)


def test_arrays_are_read_only(mooncake: Trace) -> None:
    with pytest.raises(ValueError, match="read-only"):
        mooncake.input_length[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        mooncake.hash_ids[0][0] = 1


# -------------------------------------------------------------- prompt_tokens


def test_prompt_tokens_first_two_mooncake_requests(mooncake: Trace) -> None:
    # the first two lines both start with hash id 0, then differ (1 vs 14)
    assert mooncake.hash_ids[0][0] == mooncake.hash_ids[1][0] == 0
    assert mooncake.hash_ids[0][1] != mooncake.hash_ids[1][1]
    a, b = prompt_tokens(mooncake, 0), prompt_tokens(mooncake, 1)
    assert a.dtype == np.int32 and b.dtype == np.int32
    assert a.size == mooncake.input_length[0] == 6_758  # not a multiple of 512
    assert b.size == mooncake.input_length[1] == 7_322
    assert np.array_equal(a[:512], b[:512])
    n = min(a.size, b.size)
    assert np.all(a[512:n] != b[512:n])
    assert np.array_equal(prompt_tokens(mooncake, 0), a)  # deterministic
    assert np.array_equal(prompt_tokens(mooncake, -len(mooncake)), a)


def _common_prefix(x: np.ndarray, y: np.ndarray) -> int:
    n = min(x.size, y.size)
    diff = np.nonzero(x[:n] != y[:n])[0]
    return int(diff[0]) if diff.size else n


def test_prompt_tokens_share_exactly_the_common_hash_prefix(mooncake: Trace) -> None:
    # neighbours in lexicographic order of hash ids have the longest common prefixes
    ids = mooncake.hash_ids
    order = sorted(range(len(mooncake)), key=lambda r: tuple(ids[r].tolist()))
    longest = whole = 0
    for i, j in zip(order, order[1:]):
        k = _common_prefix(ids[i], ids[j])
        n_i, n_j = int(mooncake.input_length[i]), int(mooncake.input_length[j])
        expected = min(k * 512, n_i, n_j)
        assert _common_prefix(prompt_tokens(mooncake, i), prompt_tokens(mooncake, j)) == expected
        longest = max(longest, k)
        whole += k == min(ids[i].size, ids[j].size)
    assert longest == 240  # the real data holds long shared prefixes...
    assert whole > 0  # ...and requests whose ids are all a prefix of another's


def test_prompt_tokens_in_range(mooncake: Trace, azure: Trace) -> None:
    for trace in (mooncake, azure):
        for i in (0, len(trace) // 2, len(trace) - 1):
            tokens = prompt_tokens(trace, i)
            assert tokens.size == trace.input_length[i]
            assert tokens.min() >= 0 and tokens.max() < TOKEN_MODULUS


def test_prompt_tokens_azure_no_sharing(azure: Trace) -> None:
    firsts = {int(prompt_tokens(azure, i)[0]) for i in range(len(azure))}
    assert len(firsts) == len(azure)  # no two requests share even one token of prefix
    a, b = prompt_tokens(azure, 0), prompt_tokens(azure, 1)
    assert a.size == azure.input_length[0] and b.size == azure.input_length[1]
    assert not set(a.tolist()) & set(b.tolist())
    assert np.array_equal(prompt_tokens(azure, 5), prompt_tokens(azure, 5))


def test_prompt_tokens_index_errors(azure: Trace) -> None:
    n = len(azure)
    with pytest.raises(IndexError, match=f"request {n} out of range for a trace of {n} requests"):
        prompt_tokens(azure, n)
    with pytest.raises(IndexError, match=f"request {-n - 1} out of range for a trace of {n} requests"):
        prompt_tokens(azure, -n - 1)
    assert np.array_equal(prompt_tokens(azure, np.int64(3)), prompt_tokens(azure, 3))


# ----------------------------------------------------------- synthetic files


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _line(ts, n_in, n_out, ids, **extra) -> str:
    return json.dumps({"timestamp": ts, "input_length": n_in, "output_length": n_out,
                       "hash_ids": ids, **extra})


GOOD = _line(0, 1000, 10, [0, 1])
OK_AZ = "2023-11-16 18:15:46.6805900,374,44"


def test_small_mooncake_file(tmp_path: Path) -> None:
    text = "\n".join([
        _line(100, 512, 3, [7], note="extra keys are ignored"),
        "",
        _line(100.5, 513, 4, [7, 8]),
        "   ",
        _line(250, 1, 1, [9]),
    ]) + "\n\n"
    t = load_trace(_write(tmp_path, "ok.jsonl", text))
    assert len(t) == 3 and t.format == "mooncake"
    assert t.arrival_ms.tolist() == [0.0, 0.5, 150.0]
    assert t.input_length.tolist() == [512, 513, 1]
    assert [h.tolist() for h in t.hash_ids] == [[7], [7, 8], [9]]
    assert np.array_equal(prompt_tokens(t, 1)[:512], prompt_tokens(t, 0))
    assert prompt_tokens(t, 1)[512] == 8 * 512
    assert prompt_tokens(t, 2).tolist() == [9 * 512]


def test_small_azure_file_with_bom_and_crlf(tmp_path: Path) -> None:
    text = ("\ufeff" + AZURE_HEADER + "\r\n" + OK_AZ + "\r\n"
            + "2023-11-16 18:15:47.6805909,10,2\r\n"
            + "2023-11-16 18:15:47.680590,11,3\r\n\r\n")
    path = _write(tmp_path, "ok.csv", text)
    assert detect_format(path) == "azure"
    t = load_trace(path)
    assert len(t) == 3
    assert t.arrival_ms.tolist() == [0.0, 1000.0, 1000.0]  # 7th digit truncated, not rounded
    assert t.input_length.tolist() == [374, 10, 11]
    assert t.output_length.tolist() == [44, 2, 3]


def test_trace_error_is_value_error_and_pickles() -> None:
    err = TraceError("some/file.jsonl", 3, "bad\nthing")
    assert isinstance(err, ValueError)
    assert str(err) == "some/file.jsonl:3: bad thing"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 3


CSV_HEAD = AZURE_HEADER + "\n" + OK_AZ + "\n"
LATER = "2023-11-16 18:15:47.0"

# (file name, content, expected line, fragment the message must contain or None)
MALFORMED = [
    ("bad_json.jsonl", GOOD + '\n{"timestamp": 0, "input_length": \n', 2, "invalid JSON"),
    ("not_object.jsonl", GOOD + "\n[1, 2]\n", 2, "expected a JSON object"),
    ("missing_key.jsonl", GOOD + '\n{"timestamp": 1, "input_length": 5, "output_length": 1}\n',
     2, "missing key 'hash_ids'"),
    ("bool_length.jsonl", _line(0, True, 1, [0]) + "\n", 1, "input_length must be an integer"),
    ("float_length.jsonl", _line(0, 5, 2.0, [0]) + "\n", 1, "output_length must be an integer"),
    ("str_length.jsonl", _line(0, "5", 2, [0]) + "\n", 1, "input_length must be an integer"),
    ("negative_output.jsonl", GOOD + "\n" + _line(1, 5, -3, [0]) + "\n", 2, "output_length is negative"),
    ("zero_input.jsonl", _line(0, 0, 3, []) + "\n", 1, "input_length is 0; it must be > 0"),
    ("zero_output.jsonl", _line(0, 5, 0, [0]) + "\n", 1, "output_length is 0; it must be > 0"),
    ("huge_length.jsonl", _line(0, 2**31, 1, [0]) + "\n", 1, "too large"),
    ("too_few_ids.jsonl", _line(0, 1025, 1, [0, 1]) + "\n", 1,
     "hash_ids has 2 ids but input_length 1025 needs exactly 3"),
    ("too_many_ids.jsonl", _line(0, 512, 1, [0, 1]) + "\n", 1,
     "hash_ids has 2 ids but input_length 512 needs exactly 1"),
    ("float_id.jsonl", _line(0, 600, 1, [0, 1.5]) + "\n", 1, "hash_ids[1] is not an int64"),
    ("bool_id.jsonl", _line(0, 600, 1, [True, 1]) + "\n", 1, "hash_ids[0] is not an int64"),
    ("negative_id.jsonl", _line(0, 600, 1, [0, -4]) + "\n", 1, "hash_ids[1] is negative"),
    ("ids_not_list.jsonl", _line(0, 600, 1, "0,1") + "\n", 1, "hash_ids must be a list"),
    ("decreasing.jsonl", _line(5, 10, 1, [0]) + "\n\n" + _line(4.5, 10, 1, [0]) + "\n", 3,
     "earlier than the previous"),
    ("str_timestamp.jsonl", _line("0", 10, 1, [0]) + "\n", 1, "timestamp must be a number"),
    ("bool_timestamp.jsonl", _line(False, 10, 1, [0]) + "\n", 1, "timestamp must be a number"),
    ("negative_timestamp.jsonl", _line(-1, 10, 1, [0]) + "\n", 1, "timestamp is negative"),
    ("nan_timestamp.jsonl", '{"timestamp": NaN, "input_length": 1, "output_length": 1, "hash_ids": [0]}\n',
     1, None),  # json: "must be finite"; orjson: invalid JSON
    ("bad_utf8.jsonl", GOOD.encode() + b"\n" + b'{"timestamp": 1\xff}\n', 2, "not valid UTF-8"),
    ("empty.jsonl", "", 1, "empty file"),
    ("blank.jsonl", "\n  \n\n", 1, "empty file"),
    ("header_only.csv", AZURE_HEADER + "\n", 2, "no requests"),
    ("wrong_header.csv", "TIMESTAMP,Context,Generated\n" + OK_AZ + "\n", 1, "wrong CSV header"),
    ("short_row.csv", CSV_HEAD + LATER + ",12\n", 3, "expected 3 fields"),
    ("long_row.csv", CSV_HEAD + LATER + ",12,3,4\n", 3, "expected 3 fields"),
    ("float_tokens.csv", CSV_HEAD + LATER + ",12.5,3\n", 3, "ContextTokens is not an integer"),
    ("word_tokens.csv", CSV_HEAD + LATER + ",12,many\n", 3, "GeneratedTokens is not an integer"),
    ("negative_tokens.csv", CSV_HEAD + LATER + ",-12,3\n", 3, "ContextTokens is negative"),
    ("zero_tokens.csv", CSV_HEAD + LATER + ",12,0\n", 3, "GeneratedTokens is 0; it must be > 0"),
    ("bad_timestamp.csv", CSV_HEAD + "yesterday noon,12,3\n", 3, "unparseable TIMESTAMP"),
    ("bad_date.csv", CSV_HEAD + "2023-13-45 18:15:47.0,12,3\n", 3, "unparseable TIMESTAMP"),
    ("csv_decreasing.csv", CSV_HEAD + "2023-11-16 18:15:46.6805899,12,3\n", 3, "earlier than the previous"),
    ("unknown.txt", "hello world\n", 1, "unknown trace format"),
    ("unknown_after_blank.txt", "\n\nhello world\n", 3, "unknown trace format"),
]


@pytest.mark.parametrize(("name", "content", "line", "fragment"), MALFORMED,
                         ids=[case[0] for case in MALFORMED])
def test_malformed_file(tmp_path: Path, name: str, content: str | bytes, line: int,
                        fragment: str | None) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(TraceError, match="^" + re.escape(f"{path}:{line}: ")) as info:
        load_trace(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert info.value.line == line and info.value.path == str(path)
    if fragment is not None:
        assert fragment in message, message


def test_detect_format_errors_name_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.dat", "not,a,trace\n")
    with pytest.raises(TraceError, match=r":1: wrong CSV header"):
        detect_format(path)
    assert detect_format(_write(tmp_path, "y.jsonl", "\n" + GOOD + "\n")) == "mooncake"


# ------------------------------------------------------------------ replays


def test_mooncake_replay_decides_alike_on_every_step(mooncake: Trace) -> None:
    """The first 60 requests of the real trace, KV reuse on, on every backend: each step's
    decisions (a checksum of its output slot arrays) are compared as the run goes (a difference
    raises DecisionMismatch), and shared hash-id prefixes become reused blocks."""
    from tllm_sched import bench_workloads as wl
    from tllm_sched.scheduler import BACKENDS
    from tllm_sched.traces import prompt_tokens as tokens_of

    part = load_trace(mooncake.path, limit=60)
    backends = wl.probe_backends(BACKENDS)[0]
    run = wl.run_trace(part, backends, wl.TraceOptions())
    assert [r["backend"] for r in run["results"]] == backends
    steps = {r["steps"] for r in run["results"]}
    assert len(steps) == 1  # the same decisions every step: the same number of steps
    for r in run["results"]:
        assert r["requests_done"] == 60 and not r["truncated"]
        assert r["decisions_match"] is (True if len(backends) > 1 else None)
        assert r["reuse_hit_rate"] > 0 and r["reused_blocks"] > 0
    # The blocks a request could reuse (64-token blocks that hold some of its longest common
    # prefix with an earlier prompt; reuse keeps at least one prompt token to compute) bound the
    # hits from above.
    seen: list[np.ndarray] = []
    bound = 0
    for i in range(len(part)):
        p = tokens_of(part, i)
        best = max((_common_prefix(p, q) for q in seen), default=0)
        bound += -(-min(best, p.size - 1) // 64)
        seen.append(p)
    assert 0 < run["results"][0]["reused_blocks"] <= bound
