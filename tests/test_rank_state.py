"""tests/test_rank_state.py: the attention-DP state record: layout, packing, parsing, refusals."""

import numpy as np
import pytest

from tllm_sched.attention_dp.rank_state import (
    HEADER_LEN,
    RECORD_VERSION,
    Field,
    RankFailure,
    RankStateError,
    failed_record,
    pack_record,
    parse_records,
    queue_digest,
    record_length,
    stack_records,
)

COUNTS = dict(active_requests=3, active_tokens=900, uncached_tokens=400, free_blocks=77, waiting=1, context=1,
              generation=1, scheduled_tokens=65, last_tokens=12)


def record(rank, step=4, slots=3, queue=(10, 11), matches=None, **over):
    fields = {**COUNTS, **over}
    out = np.zeros(record_length(slots), dtype=np.int64)
    return pack_record(out, rank=rank, step=step, queue_ids=np.array(queue, dtype=np.int64),
                       matches=None if matches is None else np.array(matches, dtype=np.int64), **fields)


def test_layout_is_fixed_and_versioned():
    assert RECORD_VERSION == 1
    assert HEADER_LEN == 16 and record_length(0) == 16 and record_length(256) == 272
    r = record(2, matches=[512, 0])
    assert r.tolist() == [1, 19, 2, 4, 0, 3, 900, 400, 77, 1, 1, 1, 65, 12, 2, queue_digest(np.array([10, 11])),
                          512, 0, 0]
    assert r[Field.QUEUE_DIGEST] == __import__("zlib").crc32(np.array([10, 11], dtype=np.int64).tobytes())
    with pytest.raises(ValueError, match="match_slots"):
        record_length(-1)


def test_round_trip():
    g = stack_records([record(0, matches=[5, 6]), record(1, matches=[7, 8], active_requests=9)])
    s = parse_records(g, length=record_length(3), step=4)
    assert s.world_size == 2 and s.queue_len == 2 and s.step == 4
    assert s.active_requests.tolist() == [3, 9]
    assert s.active_tokens.tolist() == [900, 900] and s.uncached_tokens.tolist() == [400, 400]
    assert s.context.tolist() == [1, 1] and s.generation.tolist() == [1, 1] and s.last_tokens.tolist() == [12, 12]
    assert s.matches.tolist() == [[5, 6], [7, 8]]
    assert s.column(Field.FREE_BLOCKS).tolist() == [77, 77]


def test_record_without_match_slots_still_checks_the_queue():
    g = stack_records([record(0, slots=0), record(1, slots=0)])
    s = parse_records(g, length=HEADER_LEN, step=4)
    assert s.queue_len == 2 and s.matches.tolist() == [[0, 0], [0, 0]]
    g = stack_records([record(0, slots=0), record(1, slots=0, queue=(10, 12))])
    with pytest.raises(RankStateError, match="rank 1 sees another waiting queue"):
        parse_records(g, length=HEADER_LEN, step=4)


def test_pack_refuses_a_head_larger_than_the_slots_and_bad_matches():
    with pytest.raises(ValueError, match="does not fit"):
        record(0, slots=1, queue=(1, 2))
    with pytest.raises(ValueError, match="expected 2 match lengths"):
        record(0, matches=[1, 2, 3])
    with pytest.raises(ValueError, match="with match slots"):
        record(0, slots=0, matches=[1, 2])


@pytest.mark.parametrize("field, value, message", [
    (Field.VERSION, 2, "rank 1's state record has version 2, this rank reads version 1"),
    (Field.LENGTH, 20, "rank 1's state record says it has 20 values, expected 19"),
    (Field.RANK, 0, "state record 1 comes from rank 0"),
    (Field.STEP, 5, "rank 1 is at step 5, this rank at step 4"),
    (Field.QUEUE_LEN, 3, "rank 1 sees another waiting queue"),
    (Field.QUEUE_DIGEST, 1, "rank 1 sees another waiting queue"),
    (Field.ACTIVE_TOKENS, -1, "rank 1's state record holds a negative count"),
])
def test_a_record_that_does_not_parse_is_refused(field, value, message):
    bad = record(1)
    bad[field] = value
    with pytest.raises(RankStateError, match=message):
        parse_records(stack_records([record(0), bad]), length=record_length(3), step=4)


def test_wrong_length_and_dtype_are_refused_before_parsing():
    with pytest.raises(RankStateError, match="rank 1's state record has 18 values, rank 0's 19"):
        stack_records([record(0), record(1, slots=2)])
    with pytest.raises(RankStateError, match="not a 1-D int64"):
        stack_records([record(0), record(1).astype(np.int32)])
    with pytest.raises(RankStateError, match=r"expected an int64 \(world_size, 20\) array"):
        parse_records(stack_records([record(0)]), length=20, step=4)
    with pytest.raises(RankStateError, match="queue length 5 does not fit"):
        bad = record(0)
        bad[Field.QUEUE_LEN] = 5
        parse_records(stack_records([bad]), length=record_length(3), step=4)


def test_a_failed_rank_stops_every_other_rank():
    g = stack_records([record(0), failed_record(record_length(3), 1, 4), record(2)])
    with pytest.raises(RankFailure, match="attention-DP rank 1 failed at step 4"):
        parse_records(g, length=record_length(3), step=4)
    # another version is reported first: its layout may differ
    bad = failed_record(record_length(3), 1, 4)
    bad[Field.VERSION] = 9
    with pytest.raises(RankStateError, match="version 9"):
        parse_records(stack_records([record(0), bad]), length=record_length(3), step=4)
