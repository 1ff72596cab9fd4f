"""The SQL the SQLite fake accepts: checked against the subset, rewritten, typed.

Every statement is tokenized (after placeholder translation) and:

- ``CREATE TABLE`` column types must be in the subset (``_sqlite_types``); each column
  gets a declared type that names its converter, a collation where text order is not
  value order, a ``CHECK`` that raises PostgreSQL's data error for a value PostgreSQL
  rejects, and the table gets triggers that store each value in its canonical form.
  Constraints get PostgreSQL's default names (``<table>_pkey``, ``<table>_<cols>_key``,
  ``<table>_<cols>_fkey``, ``<table>_<col>_check``), kept in :class:`Schema` for the
  error mapping.
- The outermost select list (and ``RETURNING``) gets PostgreSQL's column names
  (``count``, ``?column?``...) and a type per column where SQLite would return the
  wrong Python type: boolean expressions, ``sum``/``min``/``max`` over BIGINT,
  NUMERIC and TIMESTAMPTZ columns, casts, ``now()``.
- ``::type`` and ``CAST(x AS type)`` to a subset type become PostgreSQL's conversion;
  ``now()`` and ``CURRENT_TIMESTAMP`` the current UTC time; ``FOR UPDATE`` / ``SKIP
  LOCKED`` are dropped (the fake serializes transactions). Constructs that SQLite would
  answer differently raise :class:`~adapters.memory._sqlite_types.Unsupported`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import attrs

from domain_errors import DomainError

from ._sqlite_params import TypedPlaceholder
from ._sqlite_types import ColumnType, Kind, data_error, register_numeric, unsupported

__all__ = ["Prepared", "Schema", "Table", "prepare"]


# --- tokens ------------------------------------------------------------------------


@attrs.frozen
class Tok:
    kind: str  # ws, str, qid, num, id, op, ph
    text: str

    @property
    def up(self) -> str:
        return self.text.upper() if self.kind == "id" else self.text


_TOKEN: Final = re.compile(
    r"""(?P<ws>\s+|--[^\n]*|/\*.*?\*/)
    |(?P<str>[EeBbXx]?'(?:[^']|'')*')
    |(?P<qid>"(?:[^"]|"")*")
    |(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<id>[A-Za-z_][A-Za-z0-9_$]*)
    |(?P<ph>\?)
    |(?P<op>::|<=|>=|<>|!=|\|\||->>|->|\#>>|\#>|@>|<@|!?~~?\*?|[-+*/%<>=!@\#^&|(),.;\[\]:$])
    """,
    re.X | re.S,
)


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise unsupported(f"the SQL text {text[pos : pos + 2]!r} (dollar quoting...)")
        kind = match.lastgroup or "op"
        out.append(Tok(kind, match.group()))
        pos = match.end()
    return out


def render(tokens: Sequence[Tok]) -> str:
    return "".join(t.text for t in tokens)


def _sig(tokens: Sequence[Tok]) -> list[Tok]:
    return [t for t in tokens if t.kind != "ws"]


def ident(tok: Tok) -> str:
    """An identifier as PostgreSQL folds it (unquoted: lower case)."""
    return tok.text[1:-1].replace('""', '"') if tok.kind == "qid" else tok.text.lower()


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _id(text: str) -> Tok:
    return Tok("id", text)


_SP: Final = Tok("ws", " ")
_LP: Final = Tok("op", "(")
_RP: Final = Tok("op", ")")
_COMMA: Final = Tok("op", ",")


def _match_paren(tokens: Sequence[Tok], start: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].text == "(":
            depth += 1
        elif tokens[i].text == ")":
            depth -= 1
            if depth == 0:
                return i
    raise unsupported("unbalanced parentheses")


def _split(tokens: Sequence[Tok], sep: str = ",") -> list[list[Tok]]:
    """``tokens`` split on ``sep`` outside parentheses."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        if depth == 0 and tok.text == sep and tok.kind == "op":
            parts.append([])
        else:
            parts[-1].append(tok)
    return parts


# --- schema ------------------------------------------------------------------------


@attrs.define
class Table:
    name: str
    columns: dict[str, ColumnType] = attrs.field(factory=dict)
    uniques: dict[frozenset[str], str] = attrs.field(factory=dict)
    foreign_keys: dict[tuple[str, ...], str] = attrs.field(factory=dict)
    checks: set[str] = attrs.field(factory=set)


@attrs.define
class Schema:
    """What the fake knows of the tables it created (for typing and error names)."""

    tables: dict[str, Table] = attrs.field(factory=dict)
    generation: int = 0
    cache: dict[str, Prepared] = attrs.field(factory=dict)

    def changed(self) -> None:
        self.generation += 1
        self.cache.clear()

    def table_of_check(self, name: str) -> str | None:
        return next((t.name for t in self.tables.values() if name in t.checks), None)


@attrs.frozen
class Prepared:
    """A statement ready for SQLite: its text, statements to run after it, the
    converters of its result columns by position and the table it writes."""

    text: str
    after: tuple[str, ...] = ()
    hints: tuple[tuple[int, str], ...] = ()
    target: str | None = None
    table: Table | None = None
    dropped: tuple[str, ...] = ()
    noop: bool = False
    parameters: tuple[TypedPlaceholder, ...] = ()


# --- types -------------------------------------------------------------------------

_SIMPLE_TYPES: Final[dict[str, Kind]] = {
    "INTEGER": "int4",
    "INT": "int4",
    "INT4": "int4",
    "BIGINT": "int8",
    "INT8": "int8",
    "BOOLEAN": "bool",
    "BOOL": "bool",
    "TEXT": "text",
    "TIMESTAMPTZ": "timestamptz",
    "JSONB": "jsonb",
    "UUID": "uuid",
    "BYTEA": "bytea",
}
_CAST_NAMES: Final[dict[Kind, str]] = {
    "int4": "int4",
    "int8": "int8",
    "numeric": "numeric",
    "bool": "bool",
    "text": "text",
    "timestamptz": "timestamptz",
    "jsonb": "jsonb",
    "uuid": "uuid",
    "bytea": "bytea",
}


def parse_type(tokens: Sequence[Tok], i: int) -> tuple[ColumnType, int]:
    """The type starting at significant token ``i``; returns it and the next index."""
    if i >= len(tokens) or tokens[i].kind != "id":
        raise unsupported("a column without a type")
    words = [tokens[i].up]
    i += 1
    while (
        i < len(tokens)
        and tokens[i].kind == "id"
        and tokens[i].up
        in (
            "WITH",
            "WITHOUT",
            "TIME",
            "ZONE",
            "PRECISION",
            "VARYING",
        )
    ):
        words.append(tokens[i].up)
        i += 1
    args: list[int] = []
    if i < len(tokens) and tokens[i].text == "(":
        end = _match_paren(tokens, i)
        for part in _split(tokens[i + 1 : end]):
            text = render(part).strip()
            if not text.isdigit():
                raise unsupported(f"the type modifier ({text}) on {' '.join(words)}")
            args.append(int(text))
        i = end + 1
    name = " ".join(words)
    if i < len(tokens) and tokens[i].text == "[":
        raise unsupported("array types")
    if name in ("NUMERIC", "DECIMAL"):
        if len(args) > 2 or (args and not 1 <= args[0] <= 1000):
            raise unsupported(f"the type {name}{tuple(args)}")
        if not args:
            return ColumnType("numeric"), i
        precision, scale = args[0], args[1] if len(args) == 2 else 0
        if not 0 <= scale <= precision:
            raise unsupported(f"the type {name}({precision}, {scale})")
        register_numeric(precision, scale)
        return ColumnType("numeric", precision, scale), i
    if name == "TIMESTAMP WITH TIME ZONE":
        name = "TIMESTAMPTZ"
    if name in _SIMPLE_TYPES and not args:
        return ColumnType(_SIMPLE_TYPES[name]), i
    raise unsupported(f"the column type {name}")


# --- checks and rewrites every statement gets ----------------------------------------

_JSON_OPS: Final = frozenset({"->", "->>", "#>", "#>>", "@>", "<@"})
_UNSUPPORTED_WORDS: Final = {
    "ILIKE": "ILIKE",
    "SIMILAR": "SIMILAR TO",
    "ARRAY": "arrays",
    "INTERVAL": "INTERVAL values",
    "CURRENT_DATE": "CURRENT_DATE",
    "CURRENT_TIME": "CURRENT_TIME",
    "LOCALTIME": "LOCALTIME",
    "LOCALTIMESTAMP": "LOCALTIMESTAMP",
    "LATERAL": "LATERAL",
}
_UNSUPPORTED_FUNCTIONS: Final = frozenset(
    # SQLite-only functions PostgreSQL does not have:
    "ifnull iif instr printf format group_concat total strftime datetime date time "  # noqa: SIM905
    "julianday unixepoch typeof randomblob zeroblob hex unhex glob likely unlikely "
    "likelihood changes total_changes last_insert_rowid sqlite_version char unicode "
    "quote soundex json json_extract json_object json_array json_group_array "
    "json_group_object json_each json_tree json_type json_valid json_quote json_insert "
    "json_replace json_set json_remove json_patch "
    # PostgreSQL functions the fake would answer differently or not at all:
    "avg round random greatest least date_trunc date_part extract to_char to_date "
    "to_timestamp age generate_series string_agg array_agg json_agg jsonb_agg "
    "json_build_object jsonb_build_object jsonb_build_array to_json to_jsonb row_to_json "
    "jsonb_set jsonb_typeof gen_random_uuid clock_timestamp statement_timestamp "
    "transaction_timestamp timeofday pg_advisory_lock pg_advisory_xact_lock "
    "pg_try_advisory_lock pg_try_advisory_xact_lock pg_advisory_unlock pg_sleep nextval "
    "currval setval concat concat_ws position strpos split_part left right lpad rpad "
    "regexp_replace regexp_match regexp_matches starts_with md5 encode decode "
    "unnest cardinality array_length bool_and bool_or every stddev variance".split()
)
_LOCK_WORDS: Final = frozenset({"UPDATE", "SHARE", "NO", "KEY", "NOWAIT", "SKIP", "LOCKED", "OF"})


def _common(tokens: list[Tok]) -> list[Tok]:  # noqa: PLR0912, PLR0915 - one pass, one branch per construct
    """Reject constructs outside the subset; rewrite casts, ``now()``, ``FOR UPDATE``."""
    out: list[Tok] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = _next_sig(tokens, i)
        if tok.kind == "str" and tok.text[0] in "EeBbXx":
            raise unsupported(f"{tok.text[0]}'...' string literals")
        if tok.kind == "op":
            if tok.text in _JSON_OPS:
                raise unsupported(f"the JSONB operator {tok.text}")
            if "~" in tok.text:
                raise unsupported(f"the {tok.text} operator")
            if tok.text == "[":
                raise unsupported("arrays and subscripts")
            if tok.text == "::":
                out, i = _cast_suffix(out, tokens, i)
                continue
        if tok.kind == "id":
            word = tok.up
            if word == "BY" and out and _last_sig(out).up == "ORDER":
                out.append(tok)
                i += 1
                out, i = _order_by(out, tokens, i)
                continue
            if word in _UNSUPPORTED_WORDS:
                raise unsupported(_UNSUPPORTED_WORDS[word])
            if word in ("ANY", "ALL", "SOME") and nxt is not None and tokens[nxt].text == "(":
                raise unsupported(f"{word}(...) with a list or subquery")
            if word == "DISTINCT" and nxt is not None and tokens[nxt].up == "ON":
                raise unsupported("DISTINCT ON")
            if word == "CONFLICT" and nxt is not None and tokens[nxt].up == "ON":
                raise unsupported("ON CONFLICT ON CONSTRAINT")
            if word == "FOR" and nxt is not None and tokens[nxt].up in _LOCK_WORDS:
                j = nxt
                while j < len(tokens) and (
                    tokens[j].kind == "ws"
                    or tokens[j].up in _LOCK_WORDS
                    or (tokens[j - 1].up == "OF" and tokens[j].kind in ("id", "qid"))
                    or tokens[j].text == ","
                ):
                    j += 1
                i = j  # the fake serializes transactions: row locks add nothing
                continue
            if word == "CURRENT_TIMESTAMP":
                out.extend([_LP, _id("hx_now"), _LP, _RP, _RP])
                i += 1
                continue
            if nxt is not None and tokens[nxt].text == "(":
                name = tok.text.lower()
                if name == "now":
                    close = _match_paren(tokens, nxt)
                    if _sig(tokens[nxt + 1 : close]):
                        raise unsupported("now() with arguments")
                    out.extend([_LP, _id("hx_now"), _LP, _RP, _RP])
                    i = close + 1
                    continue
                if name == "cast":
                    out, i = _cast_call(out, tokens, nxt)
                    continue
                if name in _UNSUPPORTED_FUNCTIONS:
                    raise unsupported(f"the function {name}()")
        out.append(tok)
        i += 1
    return out


def _last_sig(tokens: Sequence[Tok]) -> Tok:
    return next((t for t in reversed(tokens) if t.kind != "ws"), Tok("ws", ""))


_ORDER_END: Final = frozenset({"LIMIT", "OFFSET", "FOR", "UNION", "INTERSECT", "EXCEPT", "FETCH"})


def _order_by(out: list[Tok], tokens: list[Tok], i: int) -> tuple[list[Tok], int]:
    """ORDER BY items with PostgreSQL's NULL placement made explicit: NULLs sort as
    larger than any value (last ascending, first descending); SQLite does the reverse."""
    end, depth = i, 0
    while end < len(tokens):
        tok = tokens[end]
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and (tok.up in _ORDER_END or tok.text == ";"):
            break
        end += 1
    for n, part in enumerate(_split(tokens[i:end])):
        sig = _sig(part)
        if n:
            out.append(_COMMA)
        out.extend(_common(part))
        words = [t.up for t in sig[-2:]]
        if "NULLS" not in words:
            last = "FIRST" if words and words[-1] == "DESC" else "LAST"
            out.extend([_SP, _id("NULLS"), _SP, _id(last), _SP])
    return out, end


def _next_sig(tokens: Sequence[Tok], i: int) -> int | None:
    for j in range(i + 1, len(tokens)):
        if tokens[j].kind != "ws":
            return j
    return None


def _hx_cast(operand: list[Tok], ctype: ColumnType) -> list[Tok]:
    return [_id("hx_cast"), _LP, *operand, _COMMA, _SP, Tok("op", ctype.sql_args()), _RP]


def _cast_suffix(out: list[Tok], tokens: list[Tok], i: int) -> tuple[list[Tok], int]:
    """``operand::type`` -> ``hx_cast(operand, type)``; ``out`` holds the operand."""
    sig = _sig(tokens[i + 1 :])
    ctype, used = parse_type(sig, 0)
    # Skip the type's tokens (and whitespace) in the original list.
    j, seen = i + 1, 0
    while seen < used:
        if tokens[j].kind != "ws":
            seen += 1
        j += 1
    k = len(out) - 1
    while k >= 0 and out[k].kind == "ws":
        k -= 1
    if k < 0:
        raise unsupported("a :: cast without an operand")
    if out[k].text == ")":
        depth = 0
        while k >= 0:
            depth += out[k].text == ")"
            depth -= out[k].text == "("
            if depth == 0:
                break
            k -= 1
        if k > 0 and out[k - 1].kind == "id":
            k -= 1
    else:
        while k >= 2 and out[k - 1].text == "." and out[k - 2].kind in ("id", "qid"):
            k -= 2
    return out[:k] + _hx_cast(out[k:], ctype), j


def _cast_call(out: list[Tok], tokens: list[Tok], open_: int) -> tuple[list[Tok], int]:
    close = _match_paren(tokens, open_)
    inner = tokens[open_ + 1 : close]
    depth, as_at = 0, -1
    for n, tok in enumerate(inner):
        depth += (tok.text == "(") - (tok.text == ")")
        if depth == 0 and tok.up == "AS":
            as_at = n
    if as_at < 0:
        raise unsupported("CAST without AS")
    type_sig = _sig(inner[as_at + 1 :])
    ctype, used = parse_type(type_sig, 0)
    if used != len(type_sig):
        raise unsupported(f"CAST to {render(inner[as_at + 1 :]).strip()}")
    operand = _common(list(inner[:as_at]))
    return out + _hx_cast(operand, ctype), close + 1


# --- CREATE TABLE --------------------------------------------------------------------

_CONSTRAINT_START: Final = frozenset(
    {"CONSTRAINT", "PRIMARY", "UNIQUE", "NOT", "NULL", "CHECK", "REFERENCES", "DEFAULT"}
)
_TABLE_CONSTRAINT: Final = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})


class _Names:
    """PostgreSQL's default constraint names, numbered on collision as it does."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.used: set[str] = set()

    def take(self, wanted: str | None, *parts: str) -> str:
        if wanted is not None:
            self.used.add(wanted)
            return wanted
        base = "_".join((self.table, *parts))
        name, n = base, 0
        while name in self.used:
            n += 1
            name = f"{base}{n}"
        self.used.add(name)
        return name


def _paren_names(sig: Sequence[Tok], i: int) -> tuple[list[str], int]:
    if i >= len(sig) or sig[i].text != "(":
        raise unsupported("a constraint without a column list")
    end = _match_paren(sig, i)
    names = [ident(part[0]) for part in _split(sig[i + 1 : end]) if part]
    return names, end + 1


def _constraint_tail(sig: Sequence[Tok], i: int) -> int:
    """Index after a REFERENCES clause's options (ON DELETE ..., DEFERRABLE ...)."""
    words = {"ON", "DELETE", "UPDATE", "CASCADE", "RESTRICT", "SET", "NULL", "DEFAULT", "NO"}
    words |= {"ACTION", "DEFERRABLE", "INITIALLY", "DEFERRED", "IMMEDIATE", "NOT", "MATCH"}
    words |= {"SIMPLE", "FULL"}
    while i < len(sig) and sig[i].up in words:
        if sig[i].up == "NOT" and i + 1 < len(sig) and sig[i + 1].up == "NULL":
            break
        if sig[i].up in ("NULL", "DEFAULT") and sig[i - 1].up != "SET":
            break
        i += 1
    return i


def _ref_target(sig: Sequence[Tok], i: int) -> tuple[str, int]:
    if i >= len(sig) or sig[i].kind not in ("id", "qid"):
        raise unsupported("REFERENCES without a table")
    parent = ident(sig[i])
    i += 1
    if i < len(sig) and sig[i].text == "(":
        i = _match_paren(sig, i) + 1
    return parent, _constraint_tail(sig, i)


_IDENTITY_FORMS: Final = (
    ["GENERATED", "ALWAYS", "AS", "IDENTITY"],
    ["GENERATED", "BY", "DEFAULT", "AS", "IDENTITY"],
)


def _identity(sig: list[Tok], i: int, key: str, ctype: ColumnType) -> tuple[str, int]:
    """``GENERATED {ALWAYS | BY DEFAULT} AS IDENTITY`` on an INTEGER or BIGINT column:
    a default drawn from a counter of the connection (1, 2, 3...; a rolled-back insert
    leaves a gap, as a sequence does). Returns the column's SQLite clause and the index
    after the clause; ``key`` names the counter (``table.column``)."""
    for form in _IDENTITY_FORMS:
        if [t.up for t in sig[i : i + len(form)]] == form:
            break
    else:
        raise unsupported("GENERATED columns other than GENERATED ... AS IDENTITY")
    if ctype.kind not in ("int4", "int8"):
        raise unsupported(f"an identity column of type {ctype.pg_name}")
    if i + len(form) < len(sig) and sig[i + len(form)].text == "(":
        raise unsupported("identity sequence options")
    quoted = key.replace("'", "''")
    return f"NOT NULL DEFAULT (hx_identity('{quoted}'))", i + len(form)


def _column_def(  # noqa: PLR0912, PLR0915 - one branch per column option
    sig: list[Tok], table: Table, names: _Names
) -> tuple[str, list[Tok]]:
    column = ident(sig[0])
    ctype, i = parse_type(sig, 1)
    table.columns[column] = ctype
    out: list[str] = [quote(column), ctype.decltype]
    if ctype.collation:
        out.append(f"COLLATE {ctype.collation}")
    out.append(f"CHECK (hx_check({quote(column)}, {ctype.sql_args()}))")
    wanted: str | None = None
    while i < len(sig):
        word = sig[i].up
        if word == "CONSTRAINT":
            wanted = ident(sig[i + 1])
            i += 2
            continue
        if word == "NOT" and i + 1 < len(sig) and sig[i + 1].up == "NULL":
            out.append("NOT NULL")
            i += 2
        elif word == "NULL":
            out.append("NULL")
            i += 1
        elif word == "DEFAULT":
            j = i + 1
            depth = 0
            while j < len(sig) and (depth > 0 or sig[j].up not in _CONSTRAINT_START):
                depth += (sig[j].text == "(") - (sig[j].text == ")")
                j += 1
            out.append(f"DEFAULT ({render(_spaced(_common(sig[i + 1 : j])))})")
            i = j
        elif word == "PRIMARY":
            table.uniques[frozenset({column})] = names.take(wanted, "pkey")
            out.append("NOT NULL PRIMARY KEY")
            i += 2
        elif word == "GENERATED":
            clause, i = _identity(sig, i, f"{table.name}.{column}", ctype)
            out.append(clause)
        elif word == "UNIQUE":
            table.uniques[frozenset({column})] = names.take(wanted, column, "key")
            out.append("UNIQUE")
            i += 1
        elif word == "CHECK":
            end = _match_paren(sig, i + 1)
            name = names.take(wanted, column, "check")
            table.checks.add(name)
            out.append(f"CONSTRAINT {quote(name)} CHECK {render(_spaced(sig[i + 1 : end + 1]))}")
            i = end + 1
        elif word == "REFERENCES":
            _, j = _ref_target(sig, i + 1)
            table.foreign_keys[(column,)] = names.take(wanted, column, "fkey")
            out.append(render(_spaced(sig[i:j])))
            i = j
        else:
            raise unsupported(f"the column option {sig[i].text}")
        wanted = None
    return column, [Tok("op", " ".join(out))]


def _spaced(tokens: Sequence[Tok]) -> list[Tok]:
    out: list[Tok] = []
    for tok in tokens:
        if out:
            out.append(_SP)
        out.append(tok)
    return out


def _table_constraint(sig: list[Tok], table: Table, names: _Names) -> tuple[str, list[str]]:
    """SQL for a table constraint, and the columns it makes NOT NULL (a primary key)."""
    wanted: str | None = None
    i = 0
    if sig[0].up == "CONSTRAINT":
        wanted = ident(sig[1])
        i = 2
    word = sig[i].up
    if word == "PRIMARY":
        cols, j = _paren_names(sig, i + 2)
        table.uniques[frozenset(cols)] = names.take(wanted, "pkey")
        return render(_spaced(sig[i:j])), cols
    if word == "UNIQUE":
        cols, j = _paren_names(sig, i + 1)
        table.uniques[frozenset(cols)] = names.take(wanted, *cols, "key")
        return render(_spaced(sig[i:j])), []
    if word == "CHECK":
        end = _match_paren(sig, i + 1)
        used = sorted(
            {ident(t) for t in sig[i + 1 : end] if t.kind in ("id", "qid")} & set(table.columns),
        )
        name = names.take(wanted, *(used if len(used) == 1 else []), "check")
        table.checks.add(name)
        return f"CONSTRAINT {quote(name)} CHECK {render(_spaced(sig[i + 1 : end + 1]))}", []
    if word == "FOREIGN":
        cols, j = _paren_names(sig, i + 2)
        if j >= len(sig) or sig[j].up != "REFERENCES":
            raise unsupported("FOREIGN KEY without REFERENCES")
        _, k = _ref_target(sig, j + 1)
        table.foreign_keys[tuple(cols)] = names.take(wanted, *cols, "fkey")
        return render(_spaced(sig[i:k])), []
    raise unsupported(f"the table constraint {word}")


_CANON_KINDS: Final = frozenset({"numeric", "bool", "timestamptz", "jsonb", "uuid"})


def _triggers(table: Table) -> tuple[str, ...]:
    """Triggers that store every written value of ``table`` in its canonical form."""
    cols = [(c, t) for c, t in table.columns.items() if t.kind in _CANON_KINDS]
    if not cols:
        return ()
    sets = ", ".join(f"{quote(c)} = hx_canon({quote(c)}, {t.sql_args()})" for c, t in cols)
    name = quote(table.name)
    body = f"BEGIN UPDATE {name} SET {sets} WHERE rowid = NEW.rowid; END"
    of = ", ".join(quote(c) for c, _ in cols)
    return (
        f"DROP TRIGGER IF EXISTS {quote('hx_canon_i_' + table.name)}",
        f"DROP TRIGGER IF EXISTS {quote('hx_canon_u_' + table.name)}",
        f"CREATE TRIGGER {quote('hx_canon_i_' + table.name)} AFTER INSERT ON {name} "
        f"FOR EACH ROW {body}",
        f"CREATE TRIGGER {quote('hx_canon_u_' + table.name)} AFTER UPDATE OF {of} ON {name} "
        f"FOR EACH ROW {body}",
    )


def _noop(table: str) -> Prepared:
    """A statement SQLite runs as a no-op, as PostgreSQL does ``IF NOT EXISTS``."""
    return Prepared(f"CREATE TABLE IF NOT EXISTS {quote(table)} (x)", noop=True)


def _create_table(sig: list[Tok], exists: bool) -> Prepared:
    i = 2
    if sig[1].up in ("TEMP", "TEMPORARY", "UNLOGGED"):
        raise unsupported(f"CREATE {sig[1].up} TABLE")
    if_not_exists = [t.up for t in sig[i : i + 3]] == ["IF", "NOT", "EXISTS"]
    if if_not_exists:
        i += 3
    name = ident(sig[i])
    if i + 2 < len(sig) and sig[i + 1].text == ".":
        raise unsupported("schema-qualified names")
    if i + 1 >= len(sig) or sig[i + 1].text != "(":
        raise unsupported("CREATE TABLE without a column list (AS, LIKE, PARTITION OF...)")
    end = _match_paren(sig, i + 1)
    if end != len(sig) - 1 and not (end == len(sig) - 2 and sig[-1].text == ";"):
        raise unsupported(f"CREATE TABLE options ({render(_spaced(sig[end + 1 :]))})")
    if if_not_exists and exists:
        return _noop(name)
    table = Table(name)
    names = _Names(name)
    columns: list[tuple[str, list[Tok]]] = []
    constraints: list[str] = []
    not_null: list[str] = []
    parts = [p for p in (_sig(part) for part in _split(sig[i + 2 : end])) if p]
    for part in parts:  # columns first: table CHECKs name the column they use
        if part[0].up not in _TABLE_CONSTRAINT:
            columns.append(_column_def(part, table, names))
    for part in parts:
        if part[0].up in _TABLE_CONSTRAINT:
            sql, cols = _table_constraint(part, table, names)
            constraints.append(sql)
            not_null += cols
    defs = [
        render(toks) + (" NOT NULL" if col in not_null else "") for col, toks in columns
    ] + constraints
    text = f"CREATE TABLE {quote(name)} ({', '.join(defs)})"
    return Prepared(text, after=_triggers(table), table=table)


def _alter_table(sig: list[Tok], schema: Schema) -> Prepared:
    # ALTER TABLE t ADD [COLUMN] [IF NOT EXISTS] <column definition>
    if len(sig) < 5 or sig[1].up != "TABLE" or sig[3].up != "ADD":
        raise unsupported("ALTER TABLE other than ADD COLUMN")
    name = ident(sig[2])
    table = schema.tables.get(name)
    if table is None:
        raise unsupported("ALTER TABLE of a table the fake did not create")
    i = 4 + (sig[4].up == "COLUMN")
    if_not_exists = [t.up for t in sig[i : i + 3]] == ["IF", "NOT", "EXISTS"]
    i += 3 * if_not_exists
    if sig[i].up in _TABLE_CONSTRAINT:
        raise unsupported("ALTER TABLE ... ADD CONSTRAINT")
    if ident(sig[i]) in table.columns and if_not_exists:
        return _noop(name)
    grown = Table(table.name, dict(table.columns), dict(table.uniques))
    grown.foreign_keys, grown.checks = dict(table.foreign_keys), set(table.checks)
    names = _Names(name)
    names.used = set(table.uniques.values()) | set(table.foreign_keys.values()) | table.checks
    _, toks = _column_def(sig[i:], grown, names)
    text = f"ALTER TABLE {quote(name)} ADD COLUMN {render(toks)}"
    return Prepared(text, after=_triggers(grown), table=grown)


def _create_index(sig: list[Tok], schema: Schema, text: str) -> Prepared:
    unique = sig[1].up == "UNIQUE"
    i = 2 + unique
    if [t.up for t in sig[i : i + 3]] == ["IF", "NOT", "EXISTS"]:
        i += 3
    name = ident(sig[i]) if sig[i].up != "ON" else None
    on = next((n for n in range(i, len(sig)) if sig[n].up == "ON"), None)
    if on is None or on + 2 >= len(sig):
        raise unsupported("CREATE INDEX without ON table (columns)")
    if sig[on + 2].up == "USING":
        raise unsupported("CREATE INDEX ... USING")
    table = schema.tables.get(ident(sig[on + 1]))
    if unique and table is not None and name is not None and sig[on + 2].text == "(":
        end = _match_paren(sig, on + 2)
        parts = [_sig(p) for p in _split(sig[on + 3 : end])]
        if all(len(p) == 1 and p[0].kind in ("id", "qid") for p in parts):
            grown = attrs.evolve(table, uniques={**table.uniques})
            grown.uniques[frozenset(ident(p[0]) for p in parts)] = name
            return Prepared(text, table=grown)
    return Prepared(text)


def _drop_table(sig: list[Tok], text: str) -> Prepared:
    i = 2
    if [t.up for t in sig[i : i + 2]] == ["IF", "EXISTS"]:
        i += 2
    rest = [t for t in sig[i:] if t.text not in (",", ";")]
    if any(t.up in ("CASCADE", "RESTRICT") for t in rest):
        raise unsupported("DROP TABLE ... CASCADE / RESTRICT")
    return Prepared(text, dropped=tuple(ident(t) for t in rest))


# --- result columns: names and types -------------------------------------------------

_END_OF_LIST: Final = frozenset(
    {"FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET", "UNION", "INTERSECT"}
    | {"EXCEPT", "WINDOW", "FOR", "INTO", ";"}
)
_BOOL_OPS: Final = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_BOOL_WORDS: Final = frozenset({"IS", "IN", "LIKE", "BETWEEN", "NOT", "AND", "OR", "EXISTS"})
_BOOL_WORDS2: Final = frozenset({"ISNULL", "NOTNULL", "TRUE", "FALSE"})
_ARITH: Final = frozenset({"+", "-", "*", "/", "%"})
_KEYWORDS: Final = (
    _BOOL_WORDS
    | _BOOL_WORDS2
    | frozenset({"NULL", "END", "CASE", "WHEN", "THEN", "ELSE", "DISTINCT", "AS", "ALL"})
)
_HINT_OF_KIND: Final[dict[Kind, str]] = {
    "numeric": "HXDEC",
    "bool": "HXBOOL",
    "timestamptz": "HXTS",
    "jsonb": "HXJSON",
    "uuid": "HXUUID",
}


class _Scope:
    """The tables a statement names (with aliases), to find a column's type."""

    def __init__(self, sig: Sequence[Tok], schema: Schema) -> None:
        self.aliases: dict[str, Table] = {}
        for n, tok in enumerate(sig):
            if tok.kind not in ("id", "qid"):
                continue
            table = schema.tables.get(ident(tok))
            if table is None or (n > 0 and sig[n - 1].text == "."):
                continue
            self.aliases[table.name] = table
            k = n + 1
            if k < len(sig) and sig[k].up == "AS":
                k += 1
            if (
                k < len(sig)
                and sig[k].kind in ("id", "qid")
                and sig[k].up not in _KEYWORDS | _END_OF_LIST | {"ON", "JOIN", "LEFT", "SET"}
                and sig[k].up not in {"INNER", "RIGHT", "FULL", "CROSS", "USING", "VALUES"}
                and sig[k].up not in {"NATURAL", "RETURNING", "DEFAULT", "SELECT", "OUTER"}
            ):
                self.aliases[ident(sig[k])] = table

    def column(self, tokens: Sequence[Tok]) -> ColumnType | None:
        """The type of a column reference (``col`` or ``t.col``), if it is one."""
        if len(tokens) == 1 and tokens[0].kind in ("id", "qid"):
            if tokens[0].up in _KEYWORDS:
                return None
            name = ident(tokens[0])
            found = {t.columns[name] for t in self.aliases.values() if name in t.columns}
            return found.pop() if len(found) == 1 else None
        if len(tokens) == 3 and tokens[1].text == "." and tokens[2].kind in ("id", "qid"):
            table = self.aliases.get(ident(tokens[0]))
            return table.columns.get(ident(tokens[2])) if table else None
        return None

    def typed_refs(self, sig: Sequence[Tok]) -> Iterator[tuple[int, int, ColumnType]]:
        """(start, end, type) of each column reference of a non-integer, non-text type."""
        n = 0
        while n < len(sig):
            if n + 2 < len(sig) and sig[n + 1].text == ".":
                ctype, width = self.column(sig[n : n + 3]), 3
            else:
                ctype, width = self.column(sig[n : n + 1]), 1
            if n > 0 and sig[n - 1].text == ".":
                ctype = None
            if ctype is not None and ctype.kind in _CANON_KINDS:
                yield n, n + width, ctype
            n += width if ctype is not None else 1


def _check_arithmetic(sig: list[Tok], scope: _Scope) -> None:
    for start, end, ctype in scope.typed_refs(sig):
        before = sig[start - 1].text if start > 0 else ""
        after = sig[end].text if end < len(sig) else ""
        if (before in _ARITH and sig[start - 1].kind == "op") or after in _ARITH:
            raise unsupported(f"arithmetic on {ctype.pg_name.upper()} values")


def _top_level_arithmetic(sig: list[Tok]) -> bool:
    depth = 0
    for n, tok in enumerate(sig):
        depth += (tok.text == "(") - (tok.text == ")")
        if depth == 0 and n > 0 and tok.kind == "op" and tok.text in _ARITH:
            return True
    return False


def _integer_arithmetic(sig: list[Tok], scope: _Scope) -> Kind | None:
    """``int4`` or ``int8`` when ``sig`` is arithmetic on INTEGER / BIGINT columns and
    integer literals only (PostgreSQL's result type, whose range the result must fit:
    SQLite would return a wider integer or, past 64 bits, a float)."""
    operands: list[list[Tok]] = [[]]
    depth = 0
    for tok in sig:
        depth += (tok.text == "(") - (tok.text == ")")
        if depth == 0 and tok.kind == "op" and tok.text in _ARITH:
            operands.append([])
        else:
            operands[-1].append(tok)
    if len(operands) < 2:
        return None
    kinds: set[Kind] = set()
    for operand in operands:
        if not operand:
            continue  # a unary sign
        inner = _strip_parens(operand)
        column = scope.column(inner)
        if column is not None and column.kind in ("int4", "int8"):
            kinds.add(column.kind)
        elif len(inner) == 1 and inner[0].kind == "num" and inner[0].text.isdigit():
            value = int(inner[0].text)
            if value >= 2**63:  # PostgreSQL: numeric; SQLite: a float
                raise unsupported("arithmetic on an integer literal past BIGINT")
            kinds.add("int4" if value < 2**31 else "int8")
        elif len(inner) < len(operand) and (nested := _integer_arithmetic(inner, scope)):
            kinds.add(nested)
        else:
            return None
    return "int8" if "int8" in kinds else "int4" if kinds else None


def _numeric_cast_operand(sig: list[Tok]) -> bool:
    """Whether ``sig`` is arithmetic with a ``::numeric`` cast in it (PostgreSQL's
    result is then numeric)."""
    if not _top_level_arithmetic(sig):
        return False
    for n, tok in enumerate(sig):
        if tok.text == "::" and n + 1 < len(sig) and parse_type(sig, n + 1)[0].kind == "numeric":
            return True
    return False


def _strip_parens(sig: list[Tok]) -> list[Tok]:
    while len(sig) >= 2 and sig[0].text == "(" and _match_paren(sig, 0) == len(sig) - 1:
        sig = sig[1:-1]
    return sig


def _is_boolean(sig: list[Tok]) -> bool:
    depth = 0
    for tok in sig:
        if tok.text == "(" or tok.up == "CASE":
            depth += 1
        elif tok.text == ")" or tok.up == "END":
            depth -= 1
        elif depth == 0 and (
            (tok.kind == "op" and tok.text in _BOOL_OPS)
            or (tok.kind == "id" and tok.up in _BOOL_WORDS | _BOOL_WORDS2)
        ):
            return True
    return False


def _call(sig: list[Tok]) -> tuple[str, list[Tok]] | None:
    """(function name, argument tokens) when ``sig`` is one function call."""
    if (
        len(sig) >= 3
        and sig[0].kind == "id"
        and sig[1].text == "("
        and _match_paren(sig, 1) == len(sig) - 1
    ):
        return sig[0].text.lower(), sig[2:-1]
    return None


def _aggregate(call: tuple[str, list[Tok]], scope: _Scope) -> tuple[str | None, str | None]:
    """(hint, replacement function) for ``sum``/``min``/``max`` over a typed column;
    raises PostgreSQL's error for an aggregate its type does not have."""
    name, args = call
    if name not in ("sum", "min", "max"):
        return None, None
    if args and args[0].up == "DISTINCT":
        args = args[1:]
    ctype = scope.column(args)
    if ctype is None:
        return None, None
    kind = ctype.kind
    if name == "sum":
        if kind == "int4":
            return None, None
        if kind in ("int8", "numeric"):
            return "HXDEC", "hx_sum_exact"
    elif kind in ("int4", "int8", "text"):
        return None, None
    elif kind in ("numeric", "timestamptz"):
        return _HINT_OF_KIND[kind], None
    raise data_error("42883", f"function {name}({ctype.pg_name}) does not exist")


def _item(  # noqa: PLR0912, PLR0915 - one branch per kind of select item
    sig: list[Tok], scope: _Scope
) -> tuple[list[Tok], str | None, bool]:
    """The item rewritten with PostgreSQL's column name, its hint, and whether it is
    a ``*``."""
    if sig and sig[-1].text == "*" and (len(sig) == 1 or sig[-2].text == "."):
        return sig, None, True
    alias: str | None = None
    expr = sig
    if len(sig) >= 3 and sig[-2].up == "AS":
        alias, expr = ident(sig[-1]), sig[:-2]
    elif (
        len(sig) >= 2
        and sig[-1].kind in ("id", "qid")
        and sig[-1].up not in _KEYWORDS
        and sig[-2].text not in (".", "::")
        and (sig[-2].kind != "op" or sig[-2].text == ")")
        and sig[-2].up not in _KEYWORDS - {"END", "NULL", "TRUE", "FALSE"}
    ):
        alias, expr = ident(sig[-1]), sig[:-1]
    inner = _strip_parens(expr)
    hint: str | None = None
    column = scope.column(inner)
    name = alias
    call = _call(inner)
    texts = [t.text for t in inner]
    if column is not None or (
        (len(inner) == 1 or (len(inner) == 3 and texts[1] == "."))
        and inner[-1].kind in ("id", "qid")
        and inner[-1].up not in _KEYWORDS
    ):
        name = name or ident(inner[-1])
    elif call is not None:
        fname, args = call
        name = name or fname
        hint, replacement = _aggregate(call, scope)
        if replacement is not None:
            expr = [_id(replacement), _LP, *args, _RP]
        elif fname in ("coalesce", "nullif") and args:
            first_raw = _split(args)[0]
            first = _strip_parens(first_raw)
            sub = _call(first)
            ftype = scope.column(first)
            if sub is not None:
                hint, replacement = _aggregate(sub, scope)
                if replacement is not None:
                    rest = args[len(first_raw) :]
                    expr = [_id(fname), _LP, _id(replacement), _LP, *sub[1], _RP, *rest, _RP]
            elif ftype is not None:
                hint = _HINT_OF_KIND.get(ftype.kind)
        elif fname == "now":
            hint = "HXTS"
        elif fname == "exists":
            hint = "HXBOOL"
        elif fname == "cast":
            hint, cast_name = _cast_hint(args)
            name = alias or cast_name
    elif len(inner) == 1 and inner[0].up == "CURRENT_TIMESTAMP":
        name, hint = name or "current_timestamp", "HXTS"
    elif "::" in texts and not _is_boolean(inner) and not _top_level_arithmetic(inner):
        at = max(n for n, t in enumerate(inner) if t.text == "::")
        ctype, _ = parse_type(inner, at + 1)
        hint = _HINT_OF_KIND.get(ctype.kind)
        operand = _strip_parens(inner[:at])
        if name is None:
            name = (
                ident(operand[-1])
                if scope.column(operand) is not None
                or (len(operand) == 1 and operand[0].kind == "id")
                else _CAST_NAMES[ctype.kind]
            )
    elif _is_boolean(inner):
        hint = "HXBOOL"
        if len(inner) == 1 and inner[0].up in ("TRUE", "FALSE"):
            name = name or "bool"
    elif inner and inner[0].up == "CASE":
        name = name or "case"
    else:
        kind = _integer_arithmetic(inner, scope)
        hint = None if kind is None else f"HX{kind.upper()}"
        if hint is None and _numeric_cast_operand(inner):
            hint = _HINT_OF_KIND["numeric"]  # anything op numeric is numeric
    if name is None:
        name = "?column?"
    if hint is None and not _is_boolean(inner):
        _check_wrapped_aggregates(inner, scope)
    return [*_spaced(expr), _SP, _id("AS"), _SP, Tok("qid", quote(name))], hint, False


def _check_wrapped_aggregates(sig: list[Tok], scope: _Scope) -> None:
    """An aggregate the fake types only when selected alone (or in COALESCE)."""
    for n in range(len(sig) - 1):
        if sig[n].kind == "id" and sig[n + 1].text == "(":
            end = _match_paren(sig, n + 1)
            call = (sig[n].text.lower(), sig[n + 2 : end])
            try:
                hint, _ = _aggregate(call, scope)
            except DomainError:
                hint = None
            if hint is not None:
                raise unsupported(
                    f"an expression around {call[0]}() of a {hint[2:].lower()} value "
                    "(select the aggregate alone, or in COALESCE)"
                )


def _cast_hint(args: list[Tok]) -> tuple[str | None, str]:
    depth, as_at = 0, -1
    for n, tok in enumerate(args):
        depth += (tok.text == "(") - (tok.text == ")")
        if depth == 0 and tok.up == "AS":
            as_at = n
    ctype, _ = parse_type(args, as_at + 1)
    return _HINT_OF_KIND.get(ctype.kind), _CAST_NAMES[ctype.kind]


def _select_list(
    tokens: list[Tok], scope: _Scope, start_words: frozenset[str]
) -> tuple[list[Tok], tuple[tuple[int, str], ...]]:
    """Rewrite the outermost select list (or RETURNING list): names and hints."""
    sig = _sig(tokens)
    depth, start = 0, -1
    for n, tok in enumerate(sig):
        depth += (tok.text == "(") - (tok.text == ")")
        if depth == 0 and tok.up in start_words:
            start = n + 1
            break
    if start < 0:
        return tokens, ()
    while start < len(sig) and sig[start].up in ("DISTINCT", "ALL"):
        start += 1
    end, depth = start, 0
    while end < len(sig):
        tok = sig[end]
        depth += (tok.text == "(") - (tok.text == ")")
        if depth == 0 and (tok.up in _END_OF_LIST or tok.text == ";"):
            break
        end += 1
    items = [_item(part, scope) for part in _split(sig[start:end])]
    stars = [n for n, (_, _, star) in enumerate(items) if star]
    hints: list[tuple[int, str]] = []
    for n, (_, hint, _) in enumerate(items):
        if hint is None:
            continue
        if not stars or n < stars[0]:
            hints.append((n, hint))
        elif n > stars[-1]:
            hints.append((n - len(items), hint))
    body: list[Tok] = []
    for n, (toks, _, _) in enumerate(items):
        if n:
            body += [_COMMA, _SP]
        body += toks
    head, tail = _spaced(sig[:start]), _spaced(sig[end:])
    return [*head, _SP, *body, _SP, *tail], tuple(hints)


_OTHER_STATEMENTS: Final = frozenset(
    "SET SHOW RESET LISTEN NOTIFY UNLISTEN TRUNCATE COPY EXPLAIN ANALYZE VACUUM PRAGMA "  # noqa: SIM905
    "ATTACH DETACH REINDEX REPLACE LOCK GRANT REVOKE COMMENT DO CALL PREPARE EXECUTE "
    "DEALLOCATE DISCARD REFRESH CLUSTER".split()
)


# --- entry point ---------------------------------------------------------------------


def prepare(text: str, schema: Schema, exists: Callable[[str], bool]) -> Prepared:
    """Check and rewrite one statement (``text`` has ``?`` placeholders); ``exists``:
    the tables SQLite has now (for ``CREATE TABLE IF NOT EXISTS``)."""
    cached = schema.cache.get(text)
    if cached is not None:
        return cached
    prepared = _prepare(text, schema, exists)
    if prepared.table is None and not prepared.dropped and not prepared.noop:
        schema.cache[text] = prepared
    return prepared


def _prepare(  # noqa: PLR0912 - one branch per statement kind
    text: str, schema: Schema, exists: Callable[[str], bool]
) -> Prepared:
    tokens = tokenize(text)
    sig = _sig(tokens)
    if not sig:
        return Prepared(text)
    first = sig[0].up
    if first == "CREATE" and len(sig) > 2:
        kind = sig[2].up if sig[1].up in ("UNIQUE", "TEMP", "TEMPORARY") else sig[1].up
        if kind == "TABLE":
            name_at = 2 + 3 * ([t.up for t in sig[2:5]] == ["IF", "NOT", "EXISTS"])
            created = ident(sig[name_at]) if name_at < len(sig) else ""
            return _create_table(_sig(_common(sig)), exists(created))
        if kind == "INDEX":
            return _create_index(sig, schema, render(_common(tokens)))
        raise unsupported(f"CREATE {kind}")
    if first == "ALTER":
        return _alter_table(sig, schema)
    if first == "DROP":
        if sig[1].up == "TABLE":
            return _drop_table(sig, text)
        if sig[1].up == "INDEX":
            return Prepared(text)
        raise unsupported(f"DROP {sig[1].up}")
    if first in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END"):
        return Prepared(text)
    if first not in ("SELECT", "WITH", "VALUES", "INSERT", "UPDATE", "DELETE"):
        if first.isalpha() and first in _OTHER_STATEMENTS:
            raise unsupported(f"the {first} statement")
        return Prepared(text)  # not SQL either engine knows: SQLite reports the error
    scope = _Scope(sig, schema)
    _check_arithmetic(sig, scope)
    target: str | None = None
    if first in ("INSERT", "UPDATE", "DELETE"):
        at = 2 if first in ("INSERT", "DELETE") else 1
        target = ident(sig[at]) if at < len(sig) else None
        listed, hints = _select_list(tokens, scope, frozenset({"RETURNING"}))
    else:
        listed, hints = _select_list(tokens, scope, frozenset({"SELECT"}))
    return Prepared(
        render(_common(listed)),
        hints=hints,
        target=target,
        parameters=_typed_placeholders(sig, scope, schema),
    )


# --- placeholders whose column is known --------------------------------------------

_COMPARISONS: Final = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_BINDS_TIGHTER: Final = _ARITH | {"::", ".", "[", "||"}


def _typed_placeholders(
    sig: list[Tok], scope: _Scope, schema: Schema
) -> tuple[TypedPlaceholder, ...]:
    """The placeholders written to a column (``INSERT ... VALUES``, ``SET col = ?``) or
    compared with one (``col = ?``, ``? < col``, ``col IN (?, ...)``), each with the
    column's type: see ``_sqlite_params``."""
    position = {n: p for p, n in enumerate(n for n, t in enumerate(sig) if t.kind == "ph")}
    if not position:
        return ()
    found: dict[int, TypedPlaceholder] = {}
    for n, ctype in _assigned(sig, schema):
        found[n] = (position[n], ctype, "assign")
    for n, ctype in _compared(sig, scope, _output_names(sig)):
        found.setdefault(n, (position[n], ctype, "compare"))
    return tuple(found[n] for n in sorted(found))


def _output_names(sig: Sequence[Tok]) -> frozenset[str]:
    """The names the statement gives to output columns (``expr AS name``, a CTE's
    ``w (a, b) AS (...)``, a derived table's ``AS s (a, b)``): a bare reference to one
    of them may be that column (of another type), not a table's."""
    names: set[str] = set()

    def listed(start: int) -> None:  # the identifiers of "(a, b, ...)" at sig[start]
        k = start + 1
        while k < len(sig) and sig[k].text != ")":
            if sig[k].kind in ("id", "qid"):
                names.add(ident(sig[k]))
            k += 1

    for n, tok in enumerate(sig):
        if tok.up != "AS":
            continue
        after = sig[n + 1] if n + 1 < len(sig) else None
        if after is not None and after.kind in ("id", "qid"):
            names.add(ident(after))
            if n + 2 < len(sig) and sig[n + 2].text == "(":
                listed(n + 2)
        if after is not None and after.text == "(" and n > 0 and sig[n - 1].text == ")":
            depth, k = 0, n - 1
            while k >= 0:
                depth += (sig[k].text == ")") - (sig[k].text == "(")
                if depth == 0:
                    break
                k -= 1
            if k > 0 and sig[k - 1].kind in ("id", "qid"):
                listed(k)
    return frozenset(names)


def _lone_placeholder(sig: Sequence[Tok], start: int, end: int) -> int | None:
    """The index of the placeholder that is all of ``sig[start:end]`` (in parentheses
    or not)."""
    while end - start >= 2 and sig[start].text == "(" and _match_paren(sig, start) == end - 1:
        start, end = start + 1, end - 1
    return start if end - start == 1 and sig[start].kind == "ph" else None


def _assigned(sig: list[Tok], schema: Schema) -> Iterator[tuple[int, ColumnType]]:
    first = sig[0].up
    at = 2 if first == "INSERT" else 1 if first == "UPDATE" else 0
    table = schema.tables.get(ident(sig[at])) if at and at < len(sig) else None
    if table is None:
        return
    if first == "INSERT":
        yield from _inserted(sig, table)
    depth = 0
    for k, tok in enumerate(sig):
        depth += (tok.text == "(") - (tok.text == ")")
        if tok.up == "SET" and depth == 0:
            yield from _set_list(sig, k + 1, table)


def _inserted(sig: list[Tok], table: Table) -> Iterator[tuple[int, ColumnType]]:
    """``INSERT INTO t [AS a] [(cols)] VALUES (...), (...)``."""
    i = 5 if len(sig) > 3 and sig[3].up == "AS" else 3
    names = list(table.columns)
    if i < len(sig) and sig[i].text == "(":
        close = _match_paren(sig, i)
        names = [ident(part[0]) for part in _split(sig[i + 1 : close]) if len(part) == 1]
        i = close + 1
    if i >= len(sig) or sig[i].up != "VALUES":
        return
    i += 1
    while i < len(sig) and sig[i].text == "(":
        close = _match_paren(sig, i)
        at = i + 1
        for column, part in zip(names, _split(sig[i + 1 : close]), strict=False):
            n = _lone_placeholder(sig, at, at + len(part))
            if n is not None and column in table.columns:
                yield n, table.columns[column]
            at += len(part) + 1
        i = close + 2 if close + 1 < len(sig) and sig[close + 1].text == "," else close + 1


def _set_list(sig: list[Tok], start: int, table: Table) -> Iterator[tuple[int, ColumnType]]:
    """``SET col = ?, ...`` (in UPDATE and in ``ON CONFLICT ... DO UPDATE``)."""
    end = start
    while end < len(sig) and not (
        sig[end].kind == "id" and sig[end].up in ("WHERE", "RETURNING", "FROM")
    ):
        end += 1
    at = start
    for part in _split(sig[start:end]):
        if len(part) >= 3 and part[1].text == "=" and part[0].kind in ("id", "qid"):
            n = _lone_placeholder(sig, at + 2, at + len(part))
            column = table.columns.get(ident(part[0]))
            if n is not None and column is not None:
                yield n, column
        at += len(part) + 1


def _compared(
    sig: list[Tok], scope: _Scope, shadowed: frozenset[str]
) -> Iterator[tuple[int, ColumnType]]:
    def column(tokens: list[Tok]) -> ColumnType | None:
        if len(tokens) == 1 and tokens[0].kind in ("id", "qid") and ident(tokens[0]) in shadowed:
            return None  # maybe an output column of a CTE or subquery: type unknown
        return scope.column(tokens)

    def column_ending_at(end: int) -> ColumnType | None:
        for width in (3, 1):
            start = end - width
            if start < 0:
                continue
            before = sig[start - 1] if start > 0 else None
            if before is not None and (before.text in _BINDS_TIGHTER or before.up == "NOT"):
                continue
            ctype = column(sig[start:end])
            if ctype is not None:
                return ctype
        return None

    def column_starting_at(start: int) -> ColumnType | None:
        for width in (3, 1):
            end = start + width
            after = sig[end] if end < len(sig) else None
            if after is not None and after.text in _BINDS_TIGHTER:
                continue
            ctype = column(sig[start:end])
            if ctype is not None:
                return ctype
        return None

    for n, tok in enumerate(sig):
        if tok.kind != "ph":
            continue
        after = sig[n + 1] if n + 1 < len(sig) else None
        before = sig[n - 1] if n > 0 else None
        free_after = after is None or after.text not in _BINDS_TIGHTER
        free_before = before is None or before.text not in _BINDS_TIGHTER - {"("}
        if before is not None and before.text in _COMPARISONS and free_after:
            ctype = column_ending_at(n - 1)
            if ctype is not None:
                yield n, ctype
                continue
        if after is not None and after.text in _COMPARISONS and free_before and n + 2 < len(sig):
            ctype = column_starting_at(n + 2)
            if ctype is not None:
                yield n, ctype
                continue
        if before is not None and before.text in ("(", ",") and free_after:
            opening = _list_opening(sig, n)
            if opening is not None and opening > 1 and sig[opening - 1].up == "IN":
                ctype = column_ending_at(opening - 1)
                if ctype is not None:
                    yield n, ctype


def _list_opening(sig: Sequence[Tok], n: int) -> int | None:
    """The ``(`` opening a list of placeholders ``(?, ?, ...)`` holding ``sig[n]``."""
    k = n - 1
    while k >= 0 and sig[k].text == "," and k > 0 and sig[k - 1].kind == "ph":
        k -= 2
    return k if k >= 0 and sig[k].text == "(" else None
