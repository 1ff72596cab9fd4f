"""Subject wildcards: the compiled matcher agrees with the NATS token rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from adapters._event_rules import check_publish_subject, check_subscribe_subject, subject_pattern
from domain_errors import BadRequest
from testing.strategies import subject_filters, subjects


def reference_match(pattern: str, subject: str) -> bool:
    """NATS semantics token by token: '*' is one token, '>' one or more at the end."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


@settings(max_examples=200, deadline=None)
@given(pattern=subject_filters(), subject=subjects())
def test_wildcards_match_like_nats(pattern: str, subject: str) -> None:
    """subject_pattern(p) matches exactly the subjects the token rules select."""
    assert check_subscribe_subject(pattern) == pattern
    assert check_publish_subject(subject) == subject
    assert (subject_pattern(pattern).match(subject) is not None) == reference_match(
        pattern, subject
    )


def test_overlong_subject_is_refused() -> None:
    """Subjects beyond 1024 characters are a BadRequest."""
    with pytest.raises(BadRequest, match="too long"):
        check_publish_subject("a." * 600 + "b")
