"""Reading a migrations directory: file names, versions, checksums, statements.

Everything here runs before the database is touched, so a directory with a bad file
name, a duplicate version, a file that is not UTF-8 or a transaction-control statement
is refused before any migration runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final, TypeAlias

from domain_errors import ConfigurationError

__all__ = ["Migration", "Statement", "MigrationSource", "load_migrations", "split_statements"]

MigrationSource: TypeAlias = str | os.PathLike[str] | Traversable
"""A directory of migration files: a path, or a package resource such as
``importlib.resources.files("my_service") / "migrations"``."""

FILE_NAME: Final = re.compile(r"^(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.sql$")

_DOLLAR_TAG: Final = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENT_CHAR: Final = re.compile(r"[A-Za-z0-9_$]")
_FIRST_WORD: Final = re.compile(r"[A-Za-z]+")
_TRANSACTION_CONTROL: Final = frozenset(
    {"BEGIN", "COMMIT", "ROLLBACK", "START", "END", "SAVEPOINT", "RELEASE", "ABORT"}
)


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement of a migration file: its text, number (1-based) and first line."""

    sql: str
    number: int
    line: int


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned migration file, read and split, ready to apply."""

    version: str
    name: str
    file: str
    checksum: str
    statements: tuple[Statement, ...]

    @property
    def number(self) -> int:
        """The version as a number (ordering and uniqueness are by this value)."""
        return int(self.version)


def _unterminated(file: str, what: str, line: int) -> ConfigurationError:
    return ConfigurationError(
        f"migration {file}: unterminated {what} starting at line {line}",
        details={"file": file, "line": line},
    )


def split_statements(text: str, *, file: str = "<sql>") -> list[Statement]:
    """Split SQL text into statements on ``;`` outside quotes and comments.

    Understood: ``-- line`` and ``/* block */`` comments (nested, as PostgreSQL nests
    them), ``'strings'`` (``''`` escapes a quote; ``E'...'`` also ``\\'``),
    ``"identifiers"``, and dollar quotes (``$$ ... $$``, ``$tag$ ... $tag$``), so a
    ``;`` inside a function body does not split. A statement starts at its first
    character that is not white space or comment; statements that hold only comments
    are dropped. An unterminated quote or comment is a ``ConfigurationError`` naming
    the file and line.
    """
    return _Scanner(text, file).statements()


class _Scanner:
    """One pass over the text; ``line`` follows ``i``."""

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.i = 0
        self.line = 1

    def statements(self) -> list[Statement]:
        text = self.text
        found: list[Statement] = []
        first = -1  # the current statement's first significant character
        first_line = 0
        while self.i < len(text):
            i = self.i
            ch = text[i]
            if ch == ";":
                if first >= 0:
                    found.append(Statement(text[first:i].rstrip(), len(found) + 1, first_line))
                first = -1
                self.i += 1
                continue
            if first < 0 and not ch.isspace() and not text.startswith(("--", "/*"), i):
                first, first_line = i, self.line
            self._advance(ch)
        if first >= 0:
            found.append(Statement(text[first:].rstrip(), len(found) + 1, first_line))
        return found

    def _advance(self, ch: str) -> None:
        """Move past the token at ``i``: a comment, a quoted text, or one character."""
        text, i = self.text, self.i
        if text.startswith("--", i):
            end = text.find("\n", i)
            self.i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            self._block_comment()
        elif ch in "'\"":
            escapes = ch == "'" and i > 0 and text[i - 1] in "eE" and not _ident_before(text, i - 1)
            self._quoted(ch, escapes)
        elif ch == "$" and (tag := _DOLLAR_TAG.match(text, i)) and not _ident_before(text, i):
            close = text.find(tag.group(), tag.end())
            if close < 0:
                raise _unterminated(self.file, f"dollar quote {tag.group()}", self.line)
            self._move_to(close + len(tag.group()))
        else:
            self._move_to(i + 1)

    def _move_to(self, end: int) -> None:
        self.line += self.text.count("\n", self.i, end)
        self.i = end

    def _block_comment(self) -> None:
        text, opened, depth = self.text, self.line, 0
        while True:
            if self.i >= len(text):
                raise _unterminated(self.file, "comment", opened)
            if text.startswith("/*", self.i):
                depth += 1
                self.i += 2
            elif text.startswith("*/", self.i):
                depth -= 1
                self.i += 2
                if depth == 0:
                    return
            else:
                self._move_to(self.i + 1)

    def _quoted(self, quote: str, escapes: bool) -> None:
        text, opened = self.text, self.line
        i = self.i + 1
        while True:
            if i >= len(text):
                what = "string" if quote == "'" else "quoted identifier"
                raise _unterminated(self.file, what, opened)
            c = text[i]
            if (escapes and c == "\\") or (c == quote and text.startswith(quote * 2, i)):
                i += 2  # an escaped character, or a doubled quote
            elif c == quote:
                self._move_to(i + 1)
                return
            else:
                i += 1


def _ident_before(text: str, i: int) -> bool:
    """Whether the character before ``i`` continues an identifier (``a$b$`` is no quote)."""
    return i > 0 and _IDENT_CHAR.match(text[i - 1]) is not None


def _first_word(sql: str) -> str:
    """The statement's first keyword (a statement starts at its first significant
    character, so leading comments are not part of it)."""
    match = _FIRST_WORD.match(sql)
    return match.group().upper() if match else ""


def _as_traversable(directory: MigrationSource) -> Traversable:
    if isinstance(directory, str | os.PathLike):
        return Path(directory)
    return directory


def load_migrations(directory: MigrationSource) -> list[Migration]:
    """Every ``NNNN_name.sql`` file of ``directory``, in version order.

    Refused (``ConfigurationError`` naming the file) before anything runs: a missing
    directory, a ``.sql`` file whose name is not ``<digits>_<name>.sql``, two files
    with the same version number (``0002_a.sql`` and ``2_b.sql`` too), a file that is
    not UTF-8, an unterminated quote or comment, and transaction control (``BEGIN``,
    ``COMMIT``, ``ROLLBACK``, ...: each file already runs in its own transaction).
    Other files (``README.md``, ``__init__.py``, hidden files) and subdirectories are
    ignored. The checksum is the SHA-256 of the text with ``\\r\\n`` read as ``\\n``,
    so a checkout with other line endings is not a changed file.
    """
    root = _as_traversable(directory)
    if not root.is_dir():
        raise ConfigurationError(
            f"migrations directory {directory} does not exist or is not a directory",
            details={"directory": str(directory)},
        )
    found: dict[int, Migration] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = FILE_NAME.match(entry.name)
        if match is None:
            raise ConfigurationError(
                f"migration file name {entry.name!r} is not <version>_<name>.sql "
                "(digits, an underscore, then letters, digits, '_' or '-'), "
                "e.g. 0001_create_orders.sql",
                details={"file": entry.name},
            )
        migration = _read(entry, match)
        other = found.get(migration.number)
        if other is not None:
            raise ConfigurationError(
                f"migrations {other.file} and {migration.file} have the same version "
                f"{migration.number}; each version must be unique",
                details={"file": migration.file, "other": other.file},
            )
        found[migration.number] = migration
    return [found[number] for number in sorted(found)]


def _read(entry: Traversable, match: re.Match[str]) -> Migration:
    file = entry.name
    try:
        text = entry.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"migration {file} is not UTF-8 text", details={"file": file}
        ) from exc
    text = text.replace("\r\n", "\n")
    statements = split_statements(text, file=file)
    for statement in statements:
        word = _first_word(statement.sql)
        if word in _TRANSACTION_CONTROL:
            raise ConfigurationError(
                f"migration {file} statement {statement.number} (line {statement.line}): "
                f"{word} is not allowed; each file runs in its own transaction",
                details={"file": file, "statement": statement.number},
            )
    return Migration(
        version=match["version"],
        name=match["name"],
        file=file,
        checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        statements=tuple(statements),
    )
