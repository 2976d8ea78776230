"""Per-client lanes: seq dedupe, progress coalescing at a rate, ``prev_seq`` markers."""

from typing import Any

from errand_notifier.lanes import JobLane, LanePolicy, Verdict


def _payload(seq: int) -> dict[str, Any]:
    return {"seq": seq}


def test_progress_within_the_burst_goes_out_at_once_and_the_rest_is_held() -> None:
    lane = JobLane(LanePolicy(rate_hz=10, burst=2), now=0.0)
    assert lane.offer(1, True, 0.0, _payload(1)).verdict is Verdict.SEND
    assert lane.offer(2, True, 0.0, _payload(2)).verdict is Verdict.SEND
    held = lane.offer(3, True, 0.0, _payload(3))
    assert held.verdict is Verdict.HOLD
    assert held.superseded == 0
    # the newest held tick replaces the older one
    newer = lane.offer(4, True, 0.01, _payload(4))
    assert newer.verdict is Verdict.HOLD
    assert newer.superseded == 1
    assert lane.take_due(0.05) is None  # half a token: not yet
    payload, prev_seq = lane.take_due(0.11) or ({}, None)
    assert payload == _payload(4)
    assert prev_seq == 2  # 3 was superseded: not a gap
    assert lane.pending is None


def test_a_state_change_is_never_held_and_supersedes_held_progress() -> None:
    lane = JobLane(LanePolicy(rate_hz=1, burst=1), now=0.0)
    assert lane.offer(1, True, 0.0, _payload(1)).verdict is Verdict.SEND
    assert lane.offer(2, True, 0.0, _payload(2)).verdict is Verdict.HOLD
    change = lane.offer(3, False, 0.0, _payload(3))
    assert change.verdict is Verdict.SEND
    assert change.prev_seq == 1
    assert change.superseded == 1
    assert lane.pending is None
    assert lane.offer(4, False, 0.0, _payload(4)) == type(change)(Verdict.SEND, None, 0)


def test_repeats_and_older_ticks_are_dropped() -> None:
    lane = JobLane(LanePolicy(rate_hz=1, burst=1), now=0.0)
    lane.offer(5, False, 0.0, _payload(5))
    assert lane.offer(5, False, 0.0, _payload(5)).verdict is Verdict.DROP
    assert lane.offer(4, True, 0.0, _payload(4)).verdict is Verdict.DROP
    lane.offer(6, True, 0.0, _payload(6))  # spends the token
    lane.offer(8, True, 0.0, _payload(8))  # held
    assert lane.offer(7, True, 0.0, _payload(7)).verdict is Verdict.DROP


def test_a_gap_the_notifier_saw_itself_is_not_papered_over() -> None:
    lane = JobLane(LanePolicy(rate_hz=1, burst=1), now=0.0)
    lane.offer(1, True, 0.0, _payload(1))
    lane.offer(2, True, 0.0, _payload(2))  # held
    # 3 never reached this replica
    decision = lane.offer(4, False, 0.0, _payload(4))
    assert decision.verdict is Verdict.SEND
    assert decision.prev_seq is None  # the client sees the gap and resubscribes


def test_a_subscribe_ack_moves_the_lane_past_what_it_carried() -> None:
    lane = JobLane(LanePolicy(rate_hz=1, burst=1), now=0.0)
    lane.acked(10)
    assert lane.offer(9, False, 0.0, _payload(9)).verdict is Verdict.DROP
    assert lane.offer(11, True, 0.0, _payload(11)).prev_seq is None
    lane.offer(12, True, 0.0, _payload(12))  # held
    lane.acked(12)
    assert lane.pending is None
