"""Versioned SQL migrations on the :class:`ports.database.Database` port.

``await migrate(database, directory, logger=logger)`` applies the files of
``directory`` not yet applied, in version order, one transaction per file, and returns
the versions it applied. It runs on :class:`adapters.postgres.PostgresDatabase` (with
an advisory lock, so replicas starting together migrate once) and on
:class:`adapters.memory.SqliteDatabase` (the same files, the fake's SQL subset).

**Files.** ``<version>_<name>.sql``: ``version`` is digits (``0001``), ordered and
unique by its numeric value; ``name`` is letters, digits, ``_`` and ``-``
(``0001_create_orders.sql``). Other files in the directory (``README.md``,
``__init__.py``) and subdirectories are ignored. A file holds any number of
statements and ``--`` / ``/* */`` comments. Statements are split on ``;`` outside
quotes (``'...'``, ``E'...'``, ``"..."``), dollar quotes (``$$...$$``,
``$body$...$body$``) and comments, and run one by one (so an error names its
statement number and line). Migrations take no parameters: ``%`` is a literal ``%``.
No ``BEGIN``/``COMMIT``/``ROLLBACK`` in a file (each file is one transaction), so
statements PostgreSQL cannot run in a transaction (``CREATE INDEX CONCURRENTLY``,
``VACUUM``) do not belong in migrations.

**Record.** Table ``hexinfra_migrations``: ``namespace``, ``version``, ``name``,
``checksum`` (SHA-256 of the file, ``\\r\\n`` read as ``\\n``), ``applied_at``; primary
key ``(namespace, version)``. A service's files use namespace ``app``; the library's
own (outbox and inbox tables) use ``hexinfra``; so versions never collide. A file
changed after it was applied is refused (``ConfigurationError`` naming it); so is a
new file whose version is lower than the last applied one. Applied versions with no
file (an older release still running) are logged at warning and left alone.

**Package resources.** ``directory`` may be a path or a
:class:`importlib.resources.abc.Traversable`, so a package ships its migrations as
data: ``migrate(db, importlib.resources.files("my_service") / "migrations", ...)``.

**Shell.** ``python -m adapters.migrations up|status --dir DIR [--namespace NS]``
reads ``DATABASE_URL`` (and the other ``DB_*`` settings) from the environment; exit 0
on success, 1 with a one-line error on stderr otherwise, 2 for a usage error.
"""

from ._files import Migration, MigrationSource, Statement, load_migrations, split_statements
from ._runner import TABLE, MigrationError, MigrationState, migrate, status

__all__ = [
    "migrate",
    "status",
    "MigrationError",
    "MigrationState",
    "MigrationSource",
    "Migration",
    "Statement",
    "load_migrations",
    "split_statements",
    "TABLE",
]
