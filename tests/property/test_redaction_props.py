"""No secret in any output (ADR 0026): hypothesis makes secrets, plants them in every form
(DSNs, URLs, headers as dicts and raw ASGI tuples, nested tags, dataclasses and attrs
instances, exception messages and chained causes, constraint-violating rows), runs them
through the logger (StructlogLogger writing to a buffer), the HTTP edge (the ASGI
middleware around a tiny app), the database error mapping (SQLite here, PostgreSQL
on a real server) and a dead letter on a real NATS server, and finds no part of any
secret in what comes out."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
import string
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.asgi import DomainErrorMiddleware, RequestContextMiddleware
from adapters.memory import InMemoryConfig, SqliteDatabase
from adapters.redaction import redact_error_text, redact_headers, redact_text, redact_value
from adapters.structlog_logger import StructlogLogger
from domain_errors import Conflict, DomainError, to_problem_details
from ports.database import Database
from ports.events import Event

_ALNUM = string.ascii_letters + string.digits

# A secret: a fixed mark, then random characters. Each form below draws from the
# characters that form can carry unencoded.
_TOKEN = st.text(_ALNUM + "-_.~", min_size=8, max_size=24)
_URL_PASSWORD = st.text(_ALNUM + "-_.~!$&*+,;=@/'()", min_size=8, max_size=24)
_QUOTED = st.text(_ALNUM + " -_.~!$&*+,;=@/'\"#?%", min_size=8, max_size=24)
_BARE = st.text(_ALNUM + "-_.~!$*+/@", min_size=8, max_size=24)


def _secret(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A secret between two marks, so that each half carries one (see _assert_hidden)."""
    return body.map(lambda s: f"Zq9{s}Jx4")


def _dsn_quote(secret: str) -> str:
    return secret.replace("\\", "\\\\").replace("'", "\\'")


# (template, the characters its secret may hold). Templates take {s}.
_FORMS: list[tuple[str, st.SearchStrategy[str]]] = [
    ("postgresql://app:{s}@db.internal:5432/orders", _URL_PASSWORD),
    ("connect to postgres://app:{s}@db:5432/x?sslmode=require failed", _URL_PASSWORD),
    ("nats://{s}@nats.internal:4222", _TOKEN),
    ("nats://ops:{s}@nats-1:4222,nats://ops:{s}@nats-2:4222", _URL_PASSWORD),
    ("https://api.example/cb?password={s}&page=2", _TOKEN),
    ("https://api.example/cb?page=2&access_token={s}", _TOKEN),
    ("GET /hook?token={s} 200", _TOKEN),
    ("client api_key={s} rejected", _TOKEN),
    ("host=db port=5432 password={s} dbname=app", _BARE),
    ("host=db password='{q}' dbname=app", _QUOTED),
    ('{{"password": "{j}", "user": "app"}}', _QUOTED),
    ("Authorization: Bearer {s}", _TOKEN),
    ("upstream refused bearer {s} (expired)", _TOKEN),
    ("Authorization: Basic {s}", _TOKEN),
    ("x-api-key: {s}", _BARE),
    ("Cookie: theme=dark; session={s}", _BARE),
]


@st.composite
def planted(draw: st.DrawFn) -> tuple[str, str]:
    """(secret, a text that carries it in one of the forms)."""
    template, body = draw(st.sampled_from(_FORMS))
    secret = draw(_secret(body))
    text = template.format(
        s=secret,
        q=_dsn_quote(secret),
        j=secret.replace("\\", "\\\\").replace('"', '\\"'),
    )
    return secret, text


def _assert_hidden(secret: str, output: str) -> None:
    """Neither half of the secret is in the output: no part of it leaked (each half
    holds a mark no output has on its own, so a half found is a leak, not chance)."""
    half = len(secret) // 2
    for part in (secret[:half], secret[half:]):
        assert part not in output, f"{part!r} leaked in {output!r}"


@dataclasses.dataclass
class DbSettings:
    host: str
    password: str


@attrs.frozen
class ApiClient:
    base_url: str
    api_key: str
    settings: DbSettings


class Failure(Exception):
    """An exception whose message is the planted text."""


# -- the one module ----------------------------------------------------------------------


@given(planted())
def test_redact_text_hides_every_form(case: tuple[str, str]) -> None:
    secret, text = case
    _assert_hidden(secret, redact_text(text))
    _assert_hidden(secret, redact_error_text(text))
    assert redact_text(redact_text(text)) == redact_text(text)


@given(_secret(_BARE), st.sampled_from(["authorization", "x-api-key", "private-key", "cookie"]))
def test_headers_hide_secret_names(secret: str, name: str) -> None:
    raw = [(name.encode(), secret.encode()), (b"accept", b"application/json")]
    _assert_hidden(secret, repr(redact_headers(raw)))
    _assert_hidden(secret, repr(redact_headers({name.title(): secret})))
    _assert_hidden(secret, json.dumps(redact_value({"headers": raw}), default=str))


# -- the logger --------------------------------------------------------------------------


@given(planted(), planted(), _secret(_QUOTED))
def test_logger_writes_no_secret(
    message: tuple[str, str], tag: tuple[str, str], field_secret: str
) -> None:
    (s1, t1), (s2, t2), s3 = message, tag, field_secret
    stream = io.BytesIO()
    log = StructlogLogger(service="props", level="debug", stream=stream)
    bound = log.bind(dsn=t2, request={"headers": {"X-Api-Key": s3}})
    try:
        try:
            raise KeyError(t2)
        except KeyError as inner:
            raise Failure(t1) from inner
    except Failure as exc:
        bound.error(
            t1,
            exc=exc,
            text=t2,
            nested={"a": [{"b": t1}, (t2,)], "password": s3, "deeper": {"token": s3}},
            asgi_headers=[(b"x-api-key", s3.encode()), (b"authorization", f"Bearer {s3}".encode())],
            settings=DbSettings(host="db", password=s3),
            client=ApiClient(base_url=t1, api_key=s3, settings=DbSettings("h", s3)),
            err=Failure(t2),
        )
    bound.info(t2, private_key=s3)
    output = stream.getvalue().decode()
    for secret in (s1, s2, s3):
        _assert_hidden(secret, output)
    for line in output.splitlines():
        json.loads(line)


# -- the HTTP edge -----------------------------------------------------------------------


async def _request(app: Any, headers: list[tuple[bytes, bytes]]) -> bytes:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/orders", "headers": headers}
    await app(scope, receive, send)
    assert sent
    assert sent[0]["type"] == "http.response.start"
    return repr(sent).encode()


@settings(max_examples=60)
@given(planted(), _secret(_BARE), st.sampled_from(["crash", "conflict", "problem"]))
def test_http_edge_sends_and_logs_no_secret(
    case: tuple[str, str], header_secret: str, kind: str
) -> None:
    secret, text = case
    stream = io.BytesIO()
    log = StructlogLogger(service="props", stream=stream)

    async def tiny_app(scope: Any, receive: Any, send: Any) -> None:
        log.info("handling", headers=scope["headers"], dsn=text)
        if kind == "crash":
            raise Failure(text)
        raise Conflict(text, details={"callback": text, "token": header_secret})

    headers = [
        (b"x-api-key", header_secret.encode()),
        (b"authorization", f"Bearer {header_secret}".encode()),
        (b"cookie", f"sid={header_secret}".encode()),
        (b"private-key", header_secret.encode()),
    ]
    if kind == "problem":
        headers.append((b"accept", b"application/problem+json"))
    app = RequestContextMiddleware(DomainErrorMiddleware(tiny_app, logger=log), logger=log)
    sent = asyncio.run(_request(app, headers))
    output = sent.decode("latin-1") + stream.getvalue().decode()
    for s in (secret, header_secret):
        _assert_hidden(s, output)


# -- rows that break constraints -----------------------------------------------------------

_tables = itertools.count(1)


async def _violations(db: Database, secret: str, *, postgres: bool) -> list[DomainError]:
    table = f"props_{next(_tables)}"
    await db.execute(
        f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, token TEXT NOT NULL UNIQUE,"
        " amount BIGINT CHECK (amount >= 0), note TEXT)"
    )
    insert = f"INSERT INTO {table} (id, token, amount, note) VALUES (%s, %s, %s, %s)"
    await db.execute(insert, (1, secret, 1, secret))
    attempts: list[tuple[str, tuple[Any, ...]]] = [
        (insert, (2, secret, 1, secret)),
        (insert, (3, secret + "x", -1, secret)),
        (insert, (4, None, 1, secret)),
    ]
    if postgres:
        attempts.append((f"SELECT * FROM {table} WHERE id = %s::bigint", (secret,)))
        attempts.append((insert, (5, "t5", secret, secret)))
    errors: list[DomainError] = []
    try:
        for sql, params in attempts:
            try:
                await db.execute(sql, params)
            except DomainError as exc:
                errors.append(exc)
    finally:
        if postgres:
            await db.execute(f"DROP TABLE IF EXISTS {table}")
    assert len(errors) == len(attempts)
    return errors


async def _through_every_output(errors: list[DomainError]) -> str:
    stream = io.BytesIO()
    log = StructlogLogger(service="props", stream=stream)
    bodies: list[bytes] = []
    for error in errors:
        log.error("query failed", exc=error)

        async def app(scope: Any, receive: Any, send: Any, error: DomainError = error) -> None:
            raise error

        bodies.append(await _request(DomainErrorMiddleware(app, logger=log), []))
        bodies.append(json.dumps(to_problem_details(error), default=str).encode())
    messages = [f"{e.message} {e} {e.__cause__}" for e in errors]
    return stream.getvalue().decode() + b"".join(bodies).decode("latin-1") + "".join(messages)


@settings(max_examples=40, deadline=None)
@given(_secret(_QUOTED))
def test_sqlite_rows_never_leave(secret: str) -> None:
    async def run() -> str:
        db = SqliteDatabase()
        await db.connect()
        try:
            return await _through_every_output(await _violations(db, secret, postgres=False))
        finally:
            await db.close()

    _assert_hidden(secret, asyncio.run(run()))


@pytest.mark.integration
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=_secret(_QUOTED))
def test_postgres_rows_never_leave(postgres_url: str, secret: str) -> None:
    from adapters.postgres import PostgresDatabase, PostgresSettings

    async def run() -> str:
        db = PostgresDatabase(
            PostgresSettings(url=postgres_url, pool_min_size=1, pool_max_size=1),
            StructlogLogger(service="props", stream=io.BytesIO()),
        )
        await db.connect()
        try:
            return await _through_every_output(await _violations(db, secret, postgres=True))
        finally:
            await db.close()

    _assert_hidden(secret, asyncio.run(run()))


# -- a dead letter on a real NATS server ---------------------------------------------------

_streams = itertools.count(1)


@pytest.mark.integration
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=planted())
def test_dead_letter_headers_hold_no_secret(nats_url: str, case: tuple[str, str]) -> None:
    from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber

    secret, text = case
    name = f"REDACT{next(_streams)}"
    stream = io.BytesIO()
    log = StructlogLogger(service="props", level="debug", stream=stream)

    async def run() -> str:
        config = InMemoryConfig(
            {
                "NATS_URL": nats_url,
                "SERVICE_NAME": "props",
                "EVENTS_STREAM": name,
                "EVENTS_PREFIX": name.lower(),
                "EVENTS_DEAD_PREFIX": f"{name.lower()}-dead",
                "EVENTS_STORAGE": "memory",
                "EVENTS_PULL_EXPIRES_S": "1",
            }
        )
        conn = NatsConnection.from_config(config, logger=log)
        await conn.connect()
        try:

            async def handler(event: Event) -> None:
                try:
                    raise KeyError(text)
                except KeyError as inner:
                    raise Failure(f"handler failed: {text}") from inner

            subscriber = NatsSubscriber(conn)
            sub = await subscriber.subscribe("orders.>", handler, durable="d", max_deliver=1)
            event = Event(type="orders.placed", source="props", organization_id="o", data={})
            await NatsPublisher(conn).publish(event)
            letters: list[Any] = []
            for _ in range(200):
                letters = await subscriber.dead_letters(timeout=2)
                if letters:
                    break
                await asyncio.sleep(0.02)
            await sub.stop()
            assert letters, "no dead letter"
            [letter] = letters
            return json.dumps(
                {"headers": dict(letter.headers), "error": letter.error, "reason": letter.reason}
            )
        finally:
            js = conn.jetstream
            for stream_name in (conn.settings.stream, conn.settings.dead_stream):
                try:
                    await js.delete_stream(stream_name)
                except Exception:
                    continue
            await conn.close()

    headers = asyncio.run(run())
    assert "Failure" in headers  # the error text is there, redacted
    _assert_hidden(secret, headers + stream.getvalue().decode())
