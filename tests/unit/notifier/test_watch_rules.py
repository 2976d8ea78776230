"""The Python watcher's rules: notifier URLs, and what counts as a gap."""

import pytest

from errand.watch import is_contiguous, split_urls


def test_notifier_urls_come_comma_separated_or_as_a_list() -> None:
    assert split_urls("http://a:1, http://b:2") == ["http://a:1", "http://b:2"]
    assert split_urls(["http://a:1"]) == ["http://a:1"]
    with pytest.raises(ValueError, match="no notifier URL"):
        split_urls(" , ")


def test_coalesced_progress_is_not_a_gap_but_a_missing_seq_is() -> None:
    assert is_contiguous(4, {"seq": 5})
    assert not is_contiguous(4, {"seq": 7})
    assert is_contiguous(4, {"seq": 7, "prev_seq": 4})
    assert is_contiguous(6, {"seq": 7, "prev_seq": 4})
    assert not is_contiguous(3, {"seq": 7, "prev_seq": 4})
