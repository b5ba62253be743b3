"""When a worker's group membership counts as lost (indexer/topic_source.py): the rule
that starts a fresh membership instead of waiting forever on a stalled client."""

from __future__ import annotations

from kafka.structs import MemberState

from indexer.topic_source import membership_stalled

SESSION, REBALANCE = 6.0, 20.0


def test_a_stable_member_with_answered_heartbeats_is_kept() -> None:
    assert membership_stalled(MemberState.STABLE, 2.0, 400.0, SESSION, REBALANCE) is None


def test_a_stable_member_unanswered_for_two_sessions_is_lost() -> None:
    assert membership_stalled(MemberState.STABLE, 11.0, 11.0, SESSION, REBALANCE) is None
    why = membership_stalled(MemberState.STABLE, 13.0, 13.0, SESSION, REBALANCE)
    assert why is not None and "heartbeat" in why


def test_a_rebalance_may_take_the_rebalance_timeout_but_no_longer() -> None:
    for state in (MemberState.REBALANCING, MemberState.UNJOINED):
        assert membership_stalled(state, 25.0, 25.0, SESSION, REBALANCE) is None
        why = membership_stalled(state, 27.0, 27.0, SESSION, REBALANCE)
        assert why is not None and "rebalancing" in why
