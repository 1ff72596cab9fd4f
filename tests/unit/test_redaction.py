"""adapters.redaction, the one redaction, and the places that use it: the logger (values,
messages, error stacks), dead-letter descriptions, the HTTP edge's bodies and headers,
and the database error mapping (SQLite here; PostgreSQL in tests/integration)."""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import json
import time
from typing import Any

import attrs
import pytest

from adapters._event_rules import describe
from adapters.asgi import DomainErrorMiddleware, RequestContextMiddleware
from adapters.memory import SqliteDatabase
from adapters.redaction import (
    CUT,
    MAX_TEXT,
    REDACTED,
    TRUNCATED,
    USERINFO_WINDOW,
    ValueBudget,
    is_secret_name,
    redact_error_text,
    redact_headers,
    redact_text,
    redact_value,
    safe_str,
)
from adapters.structlog_logger import StructlogLogger
from domain_errors import Conflict, DomainError, InternalServerError, to_problem_details
from testing.fakes import RecordingLogger

S = "s3cr3t-V4lue"  # the secret every case plants; it must never come out


class TestText:
    """redact_text hides every form of secret written in text, and nothing else."""

    @pytest.mark.parametrize(
        "text",
        [
            f"postgresql://app:{S}@db:5432/orders",
            f"postgresql://app:{S}@x/y@db:5432/orders",  # unencoded '@' and '/'
            f"nats://{S}@nats:4222",
            f"nats://{S}@with@at@nats:4222",
            f"https://api/x?password={S}&page=2",
            f"https://api/x?page=2&access_token={S}",
            f"https://api/x?token={S}",
            f"call api_key={S} now",
            f"host=db password={S} dbname=orders",
            f"host=db password='{S} with spaces' dbname=orders",
            f"host=db password='it\\'s {S}' dbname=orders",
            f'{{"password": "{S}", "user": "app"}}',
            f"{{'client_secret': '{S}'}}",
            f"Authorization: Bearer {S}",
            f"failed: upstream said bearer {S}",
            f"Bearer {S}",
            f"authorization: basic {S}",
            f"Basic {S}",
            f"x-api-key: {S}",
            f"private-key={S}",
            f"Cookie: session={S}; theme=dark",
            f"set-cookie: sid={S}; Path=/",
        ],
    )
    def test_secret_forms(self, text: str) -> None:
        """Each form is redacted, no part of it left; the text around it stays readable."""
        out = redact_text(text)
        assert "s3cr3t" not in out
        assert "V4lue" not in out
        assert REDACTED in out

    @pytest.mark.parametrize(
        "text",
        [
            "order o-1 placed",
            "2030-01-01T12:00:00Z",
            "http://host:8080/path?page=2",
            "amount=12.50 currency=EUR",
            "basic validation failed",
            "",
        ],
    )
    def test_plain_text_is_untouched(self, text: str) -> None:
        assert redact_text(text) == text

    def test_user_name_and_host_stay(self) -> None:
        assert redact_text(f"postgresql://app:{S}@db:5432/x") == (
            "postgresql://app:[REDACTED]@db:5432/x"
        )

    def test_idempotent(self) -> None:
        once = redact_text(f"url postgresql://a:{S}@h password={S} Bearer {S}")
        assert redact_text(once) == once

    @pytest.mark.parametrize(
        "name",
        ["password", "DB_PASSWORD", "x-api-key", "X-Api-Key", "private-key", "authorization"],
    )
    def test_secret_names(self, name: str) -> None:
        assert is_secret_name(name)

    @pytest.mark.parametrize(
        "name", ["cookie", "set-cookie", "access_token", "client_secret", "pwd"]
    )
    def test_more_secret_names(self, name: str) -> None:
        assert is_secret_name(name)

    @pytest.mark.parametrize("name", ["order_id", "path", "content-type", "user"])
    def test_plain_names(self, name: str) -> None:
        assert not is_secret_name(name)


class TestDriverTexts:
    """redact_error_text withholds the row values database drivers quote."""

    @pytest.mark.parametrize(
        "text",
        [
            f'duplicate key value violates unique constraint "u_email"\n'
            f"DETAIL:  Key (email)=({S}) already exists.",
            f'new row for relation "t" violates check constraint "c"\n'
            f"DETAIL:  Failing row contains (3, {S}, -1).",
            f'null value in column "n" of relation "t" violates not-null constraint\n'
            f"DETAIL:  Failing row contains (3, {S}, null).",
            f'invalid input syntax for type bigint: "{S}"',
            f'invalid input syntax for type bigint: "{S}"\nCONTEXT:  unnamed portal '
            f"parameter $1 = '{S}'",
            f'invalid input value for enum mood: "{S}"',
            f'insert or update on table "o" violates foreign key constraint "o_u"\n'
            f'DETAIL:  Key (user_id)=({S}) is not present in table "u".',
        ],
    )
    def test_row_values_withheld(self, text: str) -> None:
        out = redact_error_text(text)
        assert S not in out

    def test_names_are_kept(self) -> None:
        out = redact_error_text(
            'duplicate key value violates unique constraint "u_email"\n'
            f"DETAIL:  Key (email)=({S}) already exists."
        )
        assert "u_email" in out
        assert "Key (email)=" in out


@dataclasses.dataclass
class Login:
    user: str
    password: str


@attrs.define
class ApiClient:
    base_url: str
    api_key: str
    nested: Login


class TestValues:
    """redact_value: structures of every kind."""

    def test_nested_structures(self) -> None:
        value = {
            "db": {"url": f"postgresql://a:{S}@h/d", "password": S},
            "list": [f"Bearer {S}", ("token", S)],
            "login": Login("bob", S),
            "client": ApiClient(f"https://u:{S}@api", S, Login("al", S)),
            "asgi": [(b"x-api-key", S.encode()), (b"accept", b"json")],
            "error": ValueError(f"password={S}"),
        }
        out = redact_value(value)
        assert S not in json.dumps(out, default=str)
        assert out["login"] == {"user": "bob", "password": REDACTED}
        assert out["client"]["nested"]["user"] == "al"
        assert out["asgi"][0] == ["x-api-key", REDACTED]

    def test_headers_keep_their_shape(self) -> None:
        raw = [(b"authorization", f"Bearer {S}".encode()), (b"x-api-key", S.encode())]
        assert redact_headers(raw) == [
            (b"authorization", REDACTED.encode()),
            (b"x-api-key", REDACTED.encode()),
        ]
        assert redact_headers({"Cookie": S, "Accept": "json"}) == {
            "Cookie": REDACTED,
            "Accept": "json",
        }
        assert redact_headers([("private-key", S)]) == [("private-key", REDACTED)]
        assert redact_headers([("referer", f"https://a:{S}@h")]) == [
            ("referer", "https://a:[REDACTED]@h")
        ]

    def test_safe_str(self) -> None:
        class Bad:
            def __str__(self) -> str:
                raise RuntimeError(S)

        assert safe_str(Bad()) == "<Bad: str() failed>"


# Adversarial texts of about 10 kB, one or more per pattern family: each once took
# seconds to hours (exponential or quadratic backtracking).
_N = 10_000
ADVERSARIAL = {
    "quoted value, backslashes": 'password="' + "\\" * _N,
    "quoted value, escaped backslashes in a repr": "password=\\'" + "\\" * _N,
    "quoted value, escaped quotes": 'secret="' + '\\"' * (_N // 2),
    "quoted value, opening quotes": 'password="' + "password='" * (_N // 10),
    "names": "password" * (_N // 8) + " =",
    "names and spaces": "passwordx " * (_N // 10) + "=",
    "name, spaces": "token:" + " " * _N + '"',
    "url passwords": "http://u:" * (_N // 9),
    "url, no @": "x http://u:" + "a" * _N,
    "url, @s": "http://u:" + "@" * _N,
    "url tokens": "nats://a" * (_N // 8),
    "url token run": "nats://" + "a" * _N,
    "scheme run": "a" * _N + "://",
    "cookie": "cookie:" * (_N // 7),
    "cookie, spaces": "cookie=" + " " * _N + "'",
    "bearer": "bearer " * (_N // 7),
    "bearer, spaces": "bearer" + " " * _N + ":",
    "basic": "basic " + "a" * _N + " :",
    "detail, newlines": "DETAIL:" + "\n" * _N + "x",
    "detail, spaces": "\n" + " " * _N + "DETAILx",
    "key equals": "Key (" * (_N // 5),
    "key equals, open": "Key (a)=" * (_N // 8),
    "invalid input": "invalid input syntax for type x " * (_N // 32),
    "quoted input": 'value "' * (_N // 7),
    "parameter": "$1 = '" + "a" * _N,
    "parameters": "$1 = " * (_N // 5) + "'",
}


class TestLinearTime:
    """Every pattern is linear: adversarial input cannot stall a request (ADR 0026)."""

    @pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
    def test_adversarial_text_is_redacted_fast(self, text: str) -> None:
        for redact in (redact_text, redact_error_text):
            start = time.perf_counter()
            redact(text)
            assert time.perf_counter() - start < 0.5  # about 1 ms each here

    def test_a_megabyte_of_minified_json_with_urls(self) -> None:
        """Many URLs in one whitespace-free run (16k URLs took 52 s)."""
        blob = json.dumps(
            [
                {"id": i, "url": f"http://svc:8080/items/{i}", "db": f"postgresql://a:{S}@h/{i}"}
                for i in range(20_000)
            ],
            separators=(",", ":"),
        )
        assert len(blob) > 1_000_000
        start = time.perf_counter()
        out = redact_text(blob)
        assert time.perf_counter() - start < 1.0
        assert S not in out
        assert out.endswith(CUT)
        assert len(out) <= MAX_TEXT

    def test_a_long_text_is_cut_after_redaction(self) -> None:
        """A secret crossing the cut is hidden whole, not left half."""
        url = f"postgresql://app:{S}@db/x"
        for at in range(MAX_TEXT - 80, MAX_TEXT + 20, 7):
            text = "x" * at + " " + url + " " + "y" * 2000
            out = redact_text(text)
            assert out.endswith(CUT), at
            assert "s3cr3t" not in out, at
            assert "V4lue" not in out, at
        assert redact_text("y" * (MAX_TEXT + 5)) == "y" * (MAX_TEXT + 5)  # nothing to hide

    def test_url_passwords_with_at_and_slash(self) -> None:
        """A password holding '@' or '/' is hidden whole, however long (past the window
        too), and the password search stops at whitespace."""
        for password in (f"p@ss/{S}", f"{S}" * 40, f"{S}/" * 40 + "@x"):
            out = redact_text(f"dsn postgresql://app:{password}@db:5432/x and more")
            assert out == "dsn postgresql://app:[REDACTED]@db:5432/x and more", password
        assert len(S * 40) > USERINFO_WINDOW
        assert redact_text("http://h:8080/x mail a@b") == "http://h:8080/x mail a@b"


class Dsn(str):
    """A typed settings value: orjson writes str subclasses untouched."""


class Target(enum.StrEnum):
    PRIMARY = f"postgresql://app:{S}@db/prod"


class Hosts(list[str]):
    pass


class TestSubclassesAndCycles:
    """str / list subclasses are redacted; cycles and repeated sharing stay small."""

    def test_str_and_list_subclasses_in_tags(self) -> None:
        stream = io.BytesIO()
        log = StructlogLogger(service="t", stream=stream)
        pair = collections.namedtuple("pair", "user password")
        log.info(
            "connecting",
            dsn=Dsn(f"postgresql://app:{S}@db/prod"),
            target=Target.PRIMARY,
            hosts=Hosts([f"postgresql://app:{S}@db/prod"]),
            nested={"dsn": Dsn(f"password={S}"), "queue": collections.deque([f"token={S}"])},
            login=pair("app", S),
        )
        log.info(Dsn(f"password={S}"))
        text = stream.getvalue().decode()
        assert S not in text
        line = json.loads(text.splitlines()[0])
        assert line["dsn"] == "postgresql://app:[REDACTED]@db/prod"
        assert line["target"] == "postgresql://app:[REDACTED]@db/prod"
        assert line["login"] == {"user": "app", "password": REDACTED}
        assert type(redact_value(Dsn("x"))) is str
        assert type(redact_value(Hosts(["x"]))) is list

    def test_cycles_are_cut_where_they_close(self) -> None:
        """A dict holding itself three times (137 s and a 710 MB line before)."""
        state: dict[str, Any] = {}
        for i in range(3):
            state[f"k{i}"] = state
        stream = io.BytesIO()
        start = time.perf_counter()
        StructlogLogger(service="t", stream=stream).info("x", state=state)
        assert time.perf_counter() - start < 0.5
        line = json.loads(stream.getvalue())
        assert line["state"] == {"k0": TRUNCATED, "k1": TRUNCATED, "k2": TRUNCATED}

    def test_shared_structures_stay_within_the_budget(self) -> None:
        """No cycle, but 3**30 paths: the budget cuts it, and is shared by the tags."""
        shared: list[Any] = [S]
        for _ in range(30):
            shared = [shared, shared, shared]
        stream = io.BytesIO()
        start = time.perf_counter()
        StructlogLogger(service="t", stream=stream).info("x", a=shared, b=shared)
        assert time.perf_counter() - start < 0.5
        assert len(stream.getvalue()) < 200_000
        assert TRUNCATED in json.loads(stream.getvalue())["b"]
        budget = ValueBudget(nodes=10, chars=100)
        assert redact_value(list(range(50)), budget)[-1] == TRUNCATED
        assert redact_value(["x" * 60, "y" * 60], ValueBudget(chars=100)) == ["x" * 60, TRUNCATED]


class Unprintable(Exception):
    """An exception whose str() and repr() raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class SecretMessage(Exception):
    pass


def json_logger() -> tuple[StructlogLogger, io.BytesIO]:
    stream = io.BytesIO()
    return StructlogLogger(service="t", level="debug", stream=stream), stream


class TestLogger:
    """The logger redacts values, messages and stacks, and a log call never raises."""

    def test_everything_redacted_in_a_json_line(self) -> None:
        log, stream = json_logger()
        try:
            try:
                raise KeyError(f"dsn host=db password={S}")
            except KeyError as inner:
                raise SecretMessage(f"Authorization: Bearer {S}") from inner
        except SecretMessage as exc:
            log.error(
                f"connect to nats://{S}@nats failed",
                exc=exc,
                url=f"postgresql://a:{S}@h/d",
                dsn=f"host=h password='{S} x'",
                headers=[(b"x-api-key", S.encode())],
                login=Login("bob", S),
                client=ApiClient("https://api", S, Login("x", S)),
                tags={"deep": [{"token": S}]},
                err=ValueError(f"?access_token={S}"),
            )
        text = stream.getvalue().decode()
        assert S not in text
        line = json.loads(text)
        assert line["login"] == {"user": "bob", "password": REDACTED}
        assert "SecretMessage" in line["error"]["stack"]

    @pytest.mark.parametrize("logger_kind", ["structlog", "recording"])
    def test_a_log_call_never_raises(self, logger_kind: str) -> None:
        """Whatever str()/repr() of the exception (or of a tag, or the message) do."""
        stream = io.BytesIO()
        log: Any = (
            StructlogLogger(service="t", stream=stream)
            if logger_kind == "structlog"
            else RecordingLogger()
        )
        exc = Unprintable()
        exc.__cause__ = Unprintable()
        log.error("boom", exc=exc, value=Unprintable())
        log.error(Unprintable())  # not even a str message
        log.info("x", mapping=BrokenMapping())
        try:
            raise Unprintable()
        except Unprintable:
            log.error("inside except")
        if logger_kind == "structlog":
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            assert len(lines) == 4
            assert lines[0]["error"]["type"] == "Unprintable"
        else:
            assert len(log.records) == 4

    def test_a_raising_processor_still_writes_a_line(self) -> None:
        def broken(logger: Any, name: str, event: Any) -> Any:
            raise RuntimeError(S)

        stream = io.BytesIO()
        log = StructlogLogger(service="t", stream=stream, processors=[broken])
        log.info("hello", password=S)
        line = json.loads(stream.getvalue())
        assert (line["message"], line["log_error"]) == ("log call failed", "RuntimeError")
        assert S not in stream.getvalue().decode()


class BrokenMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("no items")


class TestDeadLetterText:
    def test_describe_redacts_and_never_raises(self) -> None:
        assert S not in describe(RuntimeError(f"token={S} nats://{S}@h Bearer {S}"))
        assert describe(Unprintable()) == "Unprintable: <Unprintable: str() failed>"


async def _call(app: Any, *, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": headers or []}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": start["headers"], "body": body}


class RaisingLogger(RecordingLogger):
    def error(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> None:
        raise RuntimeError("logger down")

    def info(self, msg: str, /, **tags: Any) -> None:
        raise RuntimeError("logger down")


class TestHttpEdge:
    """The middleware always answers, and what it sends or logs holds no secret."""

    @pytest.mark.parametrize("logger", [RecordingLogger(), RaisingLogger(), None])
    async def test_always_responds(self, logger: RecordingLogger | None) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise Unprintable()

        wrapped = RequestContextMiddleware(DomainErrorMiddleware(app, logger=logger), logger=logger)
        response = await _call(wrapped)
        assert response["status"] == 500
        assert json.loads(response["body"])["error_code"] == "INTERNAL_SERVER_ERROR"

    async def test_undumpable_details_still_respond(self) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise Conflict("taken", details={"odd": object(), "bad": Unprintable()})

        response = await _call(DomainErrorMiddleware(app))
        assert response["status"] in (409, 500)

    async def test_bodies_and_logs_hold_no_secret(self) -> None:
        log = RecordingLogger()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/x":
                raise Conflict(f"callback https://u:{S}@h?token={S} refused")

        response = await _call(
            DomainErrorMiddleware(app, logger=log),
            headers=[(b"x-api-key", S.encode()), (b"accept", b"application/problem+json")],
        )
        assert response["status"] == 409
        assert S not in response["body"].decode()

        async def crash(scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError(f"password={S}")

        response = await _call(
            DomainErrorMiddleware(crash, logger=log),
            headers=[(b"x-api-key", S.encode()), (b"cookie", f"sid={S}".encode())],
        )
        assert S not in response["body"].decode()
        assert S not in json.dumps([r.to_dict() for r in log.records], default=str)
        record = log.assert_logged("request failed", level="error")
        assert ["x-api-key", REDACTED] in [list(h) for h in record.tags["headers"]]


class TestDomainErrors:
    def test_private_details_stay_out_of_problem_details(self) -> None:
        err = Conflict("taken", details={"constraint": "u_email"}, public_details=False)
        assert "errors" not in to_problem_details(err)
        assert to_problem_details(Conflict("taken", details={"field": "email"}))["errors"] == {
            "field": "email"
        }

    def test_public_details_survive_pickling_and_wrap(self) -> None:
        import pickle

        from domain_errors import wrap

        err = Conflict("taken", details={"constraint": "c"}, public_details=False)
        assert pickle.loads(pickle.dumps(err)).public_details is False
        assert wrap(err, "again").public_details is False


class TestSqliteErrors:
    """SqliteDatabase: no row value and no table or constraint in what a client sees."""

    async def test_conflict_body_names_no_table_or_constraint(self) -> None:
        db = SqliteDatabase()
        await db.connect()
        try:
            await db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
            await db.execute("INSERT INTO users VALUES (1, %s)", (S,))
            with pytest.raises(Conflict) as caught:
                await db.execute("INSERT INTO users VALUES (2, %s)", (S,))
        finally:
            await db.close()
        error = caught.value
        assert error.details["sqlstate"] == "23505"
        assert error.details["constraint"] == "users_email_key"  # as PostgreSQL names it
        for body in (
            to_problem_details(error),
            {"message": error.message},
        ):
            text = json.dumps(body)
            assert "users" not in text
            assert "email" not in text
            assert S not in text

    async def test_messages_and_stacks_hold_no_row_value(self) -> None:
        db = SqliteDatabase()
        await db.connect()
        log = RecordingLogger()
        errors: list[DomainError] = []
        try:
            await db.execute(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v <> ''))"
            )
            await db.execute("INSERT INTO t VALUES (1, %s)", (S,))
            for sql, params in (
                ("INSERT INTO t VALUES (1, %s)", (S,)),
                ("INSERT INTO t VALUES (2, NULL)", ()),
                ("INSERT INTO t VALUES (3, '')", ()),
            ):
                try:
                    await db.execute(sql, params)
                except DomainError as exc:
                    errors.append(exc)
                    log.error("failed", exc=exc)
        finally:
            await db.close()
        assert [type(e) for e in errors] == [Conflict, InternalServerError, InternalServerError]
        assert S not in json.dumps([r.to_dict() for r in log.records], default=str)
        assert all(S not in str(e) for e in errors)
