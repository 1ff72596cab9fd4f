"""domain_errors: classes, constructors, wrap, HTTP and problem-details mapping."""

from __future__ import annotations

import pickle

import pytest

import domain_errors as de
from domain_errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    DomainError,
    ErrorCode,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
)

ALL_CLASSES = [
    (de.BadRequest, 400, ErrorCode.BAD_REQUEST),
    (de.Unauthorized, 401, ErrorCode.UNAUTHORIZED),
    (de.Forbidden, 403, ErrorCode.FORBIDDEN),
    (de.NotFound, 404, ErrorCode.NOT_FOUND),
    (de.Conflict, 409, ErrorCode.CONFLICT),
    (de.UnprocessableEntity, 422, ErrorCode.UNPROCESSABLE_ENTITY),
    (de.TooManyRequests, 429, ErrorCode.TOO_MANY_REQUESTS),
    (de.InternalServerError, 500, ErrorCode.INTERNAL_SERVER_ERROR),
    (de.ServiceUnavailable, 503, ErrorCode.SERVICE_UNAVAILABLE),
    (de.ConfigurationError, 500, ErrorCode.CONFIGURATION_ERROR),
]


class TestClasses:
    @pytest.mark.parametrize(("cls", "status", "code"), ALL_CLASSES)
    def test_status_and_code(self, cls: type[DomainError], status: int, code: str) -> None:
        """Each class carries the status and default code the design names."""
        err = cls("boom")
        assert (err.status, err.code, err.message, str(err)) == (status, code, "boom", "boom")

    def test_code_and_details_override(self) -> None:
        """An instance may override its code and attach read-only details."""
        err = Conflict("order exists", code=ErrorCode.DUPLICATE, details={"order_id": "o1"})
        assert err.code == ErrorCode.DUPLICATE
        assert err.details == {"order_id": "o1"}
        with pytest.raises(TypeError):
            err.details["x"] = 1  # type: ignore[index]

    def test_pickle_round_trip(self) -> None:
        """Errors survive pickling (process pools, multiprocessing test runners)."""
        err = NotFound("gone", details={"key": "k"})
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), back.message, back.code, dict(back.details)) == (
            NotFound,
            "gone",
            ErrorCode.NOT_FOUND,
            {"key": "k"},
        )

    def test_repr_names_class_and_code(self) -> None:
        """repr shows the class, message and code for logs and debuggers."""
        assert repr(BadRequest("x")) == "BadRequest('x', code='BAD_REQUEST')"


class TestConstructors:
    def test_not_found_with_and_without_key(self) -> None:
        """not_found names the resource and, when given, its key."""
        assert de.not_found("order", "o1").message == "order o1 not found"
        assert de.not_found("order").message == "order not found"
        assert de.not_found("order", "o1").details == {"resource": "order", "key": "o1"}

    @pytest.mark.parametrize(
        ("factory", "cls"),
        [
            (lambda: de.bad_request("m", field="f"), de.BadRequest),
            (de.unauthorized, de.Unauthorized),
            (de.forbidden, de.Forbidden),
            (lambda: de.conflict("m"), de.Conflict),
            (lambda: de.unprocessable("m"), de.UnprocessableEntity),
            (de.too_many_requests, de.TooManyRequests),
            (de.internal, de.InternalServerError),
            (de.unavailable, de.ServiceUnavailable),
        ],
    )
    def test_constructor_builds_its_class(self, factory: object, cls: type) -> None:
        """Each lower-case constructor returns an instance of its class."""
        assert type(factory()) is cls  # type: ignore[operator]


class TestWrap:
    def test_wrap_foreign_exception_keeps_cause(self) -> None:
        """wrap makes the chosen class and keeps the original as __cause__."""
        cause = KeyError("k")
        err = de.wrap(cause, "lookup failed", error=ServiceUnavailable)
        assert isinstance(err, ServiceUnavailable)
        assert err.__cause__ is cause

    def test_wrap_domain_error_keeps_its_status(self) -> None:
        """Wrapping a DomainError never downgrades it (a 404 stays a 404)."""
        cause = NotFound("order o1 not found", details={"key": "o1"})
        err = de.wrap(cause, "could not load order", error=InternalServerError)
        assert (type(err), err.status, err.details) == (NotFound, 404, {"key": "o1"})
        assert err.message == "could not load order"


class TestHttpMapping:
    def test_domain_error_maps_to_its_status(self) -> None:
        """A 4xx keeps its status, code and message."""
        resp = de.to_http_response(Conflict("order exists"))
        assert resp.to_dict() == {
            "status_code": 409,
            "error_code": "CONFLICT",
            "message": "order exists",
        }

    def test_foreign_exception_is_generic_500(self) -> None:
        """A non-domain exception becomes a generic 500 with nothing of its message."""
        resp = de.to_http_response(RuntimeError("password=hunter2 in SELECT *"))
        assert resp.status_code == 500
        assert resp.message == de.GENERIC_MESSAGE
        assert "hunter2" not in str(resp.to_dict())

    def test_internal_error_message_is_not_echoed(self) -> None:
        """Even an InternalServerError's own message stays out of the body."""
        resp = de.to_http_response(InternalServerError("db at 10.0.0.3 failed"))
        assert resp.message == de.GENERIC_MESSAGE

    def test_configuration_error_keeps_code_but_hides_message(self) -> None:
        """A 5xx ConfigurationError keeps its code; its message is not shown."""
        resp = de.to_http_response(ConfigurationError("DATABASE_URL missing"))
        assert (resp.status_code, resp.error_code, resp.message) == (
            500,
            "CONFIGURATION_ERROR",
            de.GENERIC_MESSAGE,
        )

    def test_service_unavailable_gets_its_own_generic_text(self) -> None:
        """A 503 says "service unavailable", never the host that was down."""
        resp = de.to_http_response(ServiceUnavailable("db 10.1.2.3:5432 refused"))
        assert (resp.status_code, resp.message) == (503, "service unavailable")


class TestProblemDetails:
    def test_problem_details_members(self) -> None:
        """RFC 9457 members: type, title, status, detail, plus code and errors."""
        body = de.to_problem_details(
            BadRequest("name is empty", details={"field": "name"}), instance="/orders"
        )
        assert body == {
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "name is empty",
            "code": "BAD_REQUEST",
            "instance": "/orders",
            "errors": {"field": "name"},
        }

    def test_problem_details_for_foreign_exception(self) -> None:
        """A foreign exception gives a generic 500 problem without details."""
        body = de.to_problem_details(ValueError("secret"))
        assert body["status"] == 500
        assert body["detail"] == de.GENERIC_MESSAGE
        assert "errors" not in body
        assert "secret" not in str(body)
