"""Properties of the error mapping over every class and arbitrary messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import domain_errors as de
from domain_errors import DomainError

DOMAIN_CLASSES = [
    de.BadRequest,
    de.Unauthorized,
    de.Forbidden,
    de.NotFound,
    de.Conflict,
    de.UnprocessableEntity,
    de.TooManyRequests,
    de.InternalServerError,
    de.ServiceUnavailable,
    de.ConfigurationError,
]
FOREIGN = [ValueError, RuntimeError, KeyError, OSError, TypeError, ZeroDivisionError]
messages = st.text(min_size=1, max_size=60).filter(lambda m: m.strip() and len(m.strip()) > 3)


@given(cls=st.sampled_from(DOMAIN_CLASSES), message=messages)
def test_every_domain_error_maps_to_its_status_and_code(
    cls: type[DomainError], message: str
) -> None:
    """Every DomainError subclass maps to its own status and code in both formats."""
    err = cls(message)
    resp = de.to_http_response(err)
    problem = de.to_problem_details(err)
    assert (resp.status_code, resp.error_code) == (cls.status, cls.default_code)
    assert (problem["status"], problem["code"]) == (cls.status, cls.default_code)
    if cls.status < 500:
        assert resp.message == message == problem["detail"]


# A marker no generic body contains, so "not in the body" cannot pass by accident.
secrets = st.text(max_size=40).map(lambda m: f"xyzzy-{m}")


@given(cls=st.sampled_from(FOREIGN), message=secrets)
def test_foreign_exceptions_map_to_generic_500(cls: type[Exception], message: str) -> None:
    """Any other exception is a 500 whose body holds nothing of the original message."""
    resp = de.to_http_response(cls(message))
    problem = de.to_problem_details(cls(message))
    assert resp.status_code == problem["status"] == 500
    assert resp.message == problem["detail"] == de.GENERIC_MESSAGE
    assert "xyzzy" not in str(resp.to_dict())
    assert "xyzzy" not in str(problem)


@given(cls=st.sampled_from([c for c in DOMAIN_CLASSES if c.status >= 500]), message=secrets)
def test_5xx_messages_never_reach_the_body(cls: type[DomainError], message: str) -> None:
    """A 5xx DomainError's own message never reaches a response body."""
    assert "xyzzy" not in str(de.to_http_response(cls(message)).to_dict())
    assert "xyzzy" not in str(de.to_problem_details(cls(message)))


@given(
    cause_cls=st.sampled_from(DOMAIN_CLASSES + FOREIGN),
    target=st.sampled_from(DOMAIN_CLASSES),
    message=messages,
)
def test_wrap_keeps_cause_and_domain_status(
    cause_cls: type[Exception], target: type[DomainError], message: str
) -> None:
    """wrap keeps __cause__; a DomainError cause keeps its own status and class."""
    cause = cause_cls("inner")
    err = de.wrap(cause, message, error=target)
    assert err.__cause__ is cause
    assert err.message == message
    if isinstance(cause, DomainError):
        assert type(err) is type(cause)
        assert err.status == cause.status
    else:
        assert type(err) is target
