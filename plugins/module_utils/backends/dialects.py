# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What differs between the SQL servers mod_storage_sql supports: one small object per driver.

Queries elsewhere are written once, with ``"quoted"`` identifiers and two placeholder markers:
``{t}`` for a bound text value and ``{n}`` for a bound number; ``Dialect.sql`` turns them into the
driver's own syntax. MySQL connections run with ANSI_QUOTES so the double quotes work there too.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ProsodyMigrateError

# How long a SQLite3 connection waits for another's lock before failing "database is locked". Other
# writers hold it for one batch each: parallel workers write a batch (at most 2,000 rows, 500 entries or
# 2 s of the worker's reading, engine.py) in one transaction, so a worker waits for a few of those at most;
# a minute leaves a wide margin for a slow disk or a large entry.
SQLITE_BUSY_TIMEOUT_MS = 60000
# Rows per multi-row INSERT statement (PostgreSQL's pipelined path): well under any bind limit.
VALUES_CHUNK = 100
# Characters of values per MySQL multi-row INSERT: at most 4 MB in UTF-8, well under the 16 MB of
# max_allowed_packet's default (a row larger than that alone is checked against it, SqlBackend._check).
STATEMENT_CHARS = 1_000_000
CHUNK_ROWS = 500  # rows per such statement, as many as fit
DIGEST_SIZE = 20  # bytes of the BLAKE2b digest of an entry's rows on SQLite3

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
INT_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "mediumint": (-(2**23), 2**23 - 1),
    "int": INT32,
    "integer": INT32,
    "bigint": INT64,
}

KEYVAL_COLUMNS = ("host", "user", "store", "key", "type", "value")
ARCHIVE_COLUMNS = ("host", "user", "store", "when", "with", "key", "type", "value")
REQUIRED = {"prosody": KEYVAL_COLUMNS, "prosodyarchive": ("sort_id", *ARCHIVE_COLUMNS)}

# Index layout of Prosody 0.12 (create_table in mod_storage_sql.lua), shared by every driver.
INDEXES = (
    ("prosody_index", "prosody", ("host", "user", "store", "key"), False),
    ("prosodyarchive_index", "prosodyarchive", ("host", "user", "store", "key"), True),
    ("prosodyarchive_with_when", "prosodyarchive", ("host", "user", "store", "with", "when"), False),
    ("prosodyarchive_when", "prosodyarchive", ("host", "user", "store", "when"), False),
    ("prosodyarchive_sort", "prosodyarchive", ("host", "user", "store", "sort_id"), False),
)


class SqlConnectError(ProsodyMigrateError):
    """The database could not be opened; the message names driver, host and database, never the password."""


class SqlDatabaseError(ProsodyMigrateError):
    """The server refused or failed a query; the message names the database."""


class SqlConfigError(ProsodyMigrateError):
    """A store definition whose SQL parameters make no sense."""


@dataclass(frozen=True)
class Column:
    """What we need to know about one existing column: its type, int range and byte limit."""

    type: str
    int_range: tuple[int, int] | None = None
    max_bytes: int | None = None


class Dialect:
    """Base of the per-driver objects; subclasses fill in the differences."""

    name = ""
    text_marker = "?"
    begin_sql = "BEGIN"  # opens a batch's transaction (the connection is in autocommit mode)
    number_marker = "?"
    # Prosody's MySQL and PostgreSQL columns hold integers only; SQLite keeps a float as REAL.
    keeps_float_time = False
    unique_archive_index = True
    pipelines = False  # whether ``pipeline`` sends statements together (else it is a plain block)
    # Whether a step's savepoint is released after it. MySQL replaces a savepoint when one of the
    # same name is set again, so the next step's SAVEPOINT does the release without a statement of its own.
    release_savepoints = True
    # Whether a bulk load into tables of our own making is quicker with Prosody's indexes built
    # after it (SqlBackend.prepare_writes): five indexes kept up to date row by row cost more than
    # building them from the loaded table, on SQLite3 and PostgreSQL (docs/performance.md).
    defer_indexes = True
    # (table, index name) pairs of every index of the database's tables, for note_indexes.
    index_query = ""
    indexes: Collection[tuple[str, str]] = frozenset()

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        self.database = str(params.get("database") or "")

    # connection ---------------------------------------------------------------------------
    def describe(self) -> str:
        """Driver, host and database, as error messages name them (never the password)."""
        host = self.params.get("host")
        where = f" on {host}" + (f":{self.params['port']}" if self.params.get("port") else "") if host else ""
        return f"{self.name} database {self.database!r}{where}"

    def exists(self) -> bool:
        """Whether the database is there to read before anything creates it."""
        return True

    def connect(self, create: bool) -> Any:
        raise NotImplementedError

    def reason(self, exc: BaseException) -> str:
        """A driver error's text, the password scrubbed should a driver ever echo it."""
        reason = str(exc).strip() or type(exc).__name__
        password = self.params.get("password")
        return reason.replace(str(password), "***") if password else reason

    def connect_error(self, exc: BaseException) -> SqlConnectError:
        return SqlConnectError(f"cannot connect to {self.describe()}: {self.reason(exc)}")

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's own exception classes, which the backend wraps in SqlDatabaseError."""
        raise NotImplementedError

    def transaction(self, conn: Any) -> AbstractContextManager[Any]:
        """A context manager running one transaction and giving a cursor."""
        raise NotImplementedError

    def broken(self, conn: Any) -> bool:
        """Whether the driver knows the connection is lost (the server went away or killed it)."""
        return False

    def pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        """A block whose statements go to the server together, their results (and the first error)
        coming back at its end: one round trip for a few statements. Here each statement waits for
        its own result. Inside one, ``insert_many`` may not be used, only ``insert_values``."""
        return nullcontext()

    def execute_once(self, cur: Any, query: str, params: Sequence[Any]) -> None:
        """Run a query without preparing it: one whose best plan depends on its values (a list
        of users), where a prepared statement's generic plan can be many times slower."""
        cur.execute(query, params)

    # query text ---------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        return text.replace("{t}", self.text_marker).replace("{n}", self.number_marker)

    def eq(self, column: str) -> tuple[str, int]:
        """A condition matching a column exactly, and how many times its value is bound."""
        return f'"{column}" = {{t}}', 1

    def exact(self, column: str) -> str:
        """A select expression giving the column's exact text (for DISTINCT)."""
        return f'"{column}"'

    def any_of(self, column: str, texts: Sequence[str]) -> tuple[str, list[Any]]:
        """A condition matching a column exactly against any of the texts, and its bound values."""
        marks = ", ".join(["{t}"] * len(texts))
        return f'"{column}" IN ({marks})', [self.bind_text(t) for t in texts]

    # values -------------------------------------------------------------------------------
    def text_problem(self, text: str) -> Optional[str]:
        """Why this text cannot be stored and read back by Prosody, or None."""
        return None

    def bind_text(self, text: str) -> Any:
        return text

    def read_text(self, value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8", "surrogateescape")
        return value

    # schema -------------------------------------------------------------------------------
    def tables(self, cur: Any) -> set[str]:
        raise NotImplementedError

    def columns(self, cur: Any, table: str) -> dict[str, Column]:
        raise NotImplementedError

    def create_tables(self, cur: Any, missing: set[str], indexes: bool = True) -> None:
        """Create the missing tables, with their indexes unless told not to (see ``defer_indexes``)."""
        for table, statement in self.ddl().items():
            if table in missing:
                cur.execute(statement)
        if indexes:
            for name, table, *_rest in INDEXES:
                if table in missing:
                    self.create_index(cur, name)

    def create_index(self, cur: Any, name: str) -> None:
        """Create one of Prosody's indexes (plain CREATE INDEX: MySQL 8 lacks IF NOT EXISTS)."""
        for index, table, cols, unique in INDEXES:
            if index == name:
                kind = "UNIQUE INDEX" if unique and self.unique_archive_index else "INDEX"
                cur.execute(f'CREATE {kind} "{name}" ON "{table}" ({", ".join(map(self.index_column, cols))})')
                self.indexes = self.indexes | {(table, name)}

    def ddl(self) -> dict[str, str]:
        """CREATE TABLE statements by table name."""
        raise NotImplementedError

    def upgrade_problems(self, cur: Any) -> list[str]:
        """Reasons Prosody would refuse this existing schema until it is upgraded."""
        return []

    def note_indexes(self, cur: Any) -> None:
        """Learn which indexes the tables have, as (table, index name) pairs in ``indexes``."""
        cur.execute(self.index_query)
        self.indexes = frozenset((str(table), str(name)) for table, name in cur.fetchall())

    def missing_indexes(self, tables: Collection[str]) -> list[tuple[str, str]]:
        """(table, index name) of Prosody's indexes that these tables lack, as ``note_indexes`` found them."""
        wanted = [(table, name) for name, table, *_rest in INDEXES if table in tables]
        return [pair for pair in wanted if pair not in self.indexes]

    def row_limit(self, cur: Any) -> Optional[int]:
        """The most bytes of text one row may carry to the server, where the server sets one."""
        return None

    # bulk path ----------------------------------------------------------------------------
    def insert_many(self, cur: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert rows by the driver's fastest path (which may not run inside ``pipeline``)."""
        cols = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("{n}" if c == "when" else "{t}" for c in columns)
        cur.executemany(self.sql(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})'), rows)

    def insert_values(self, cur: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert a few rows in a way that may run inside ``pipeline``."""
        self.insert_many(cur, table, columns, rows)

    def index_column(self, column: str) -> str:
        return f'"{column}"'

    # fingerprints ---------------------------------------------------------------------------
    # Whether digest_query computes the digests (else it gives the raw rows, for the backend to hash).
    server_digest = True
    digest_setup: Optional[str] = None  # a statement to run before digest_query

    def digest_query(
        self, table: str, columns: Sequence[str], ordered: bool, host: str, store: str, users: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """A query, and its values, giving (index, digest, complete) for each of the users with rows
        of this host and store, ``index`` the user's place in ``users``: a digest of the columns of
        the user's rows (in ``sort_id`` order when ``ordered``, else in an order of their own),
        ``complete`` false when it could not take in every row. Without ``server_digest``, the
        query gives (user, *columns) for the backend to hash, ordered by user and then as the
        digest wants."""
        parts, params = [], []
        for column, value in (("host", host), ("store", store)):
            fragment, times = self.eq(column)
            parts.append(fragment)
            params.extend([self.bind_text(value)] * times)
        condition, bound = self.any_of("user", users)
        return self.digest_select(table, columns, ordered, " AND ".join([*parts, condition])), [*params, *bound]

    def digest_select(self, table: str, columns: Sequence[str], ordered: bool, where: str) -> str:
        """digest_query's text, for the rows matching ``where``."""
        raise NotImplementedError

    def digest_rows(self, rows: Sequence[tuple[Any, ...]], ordered: bool) -> str:
        """The fingerprint digest_query gives for an entry holding exactly these rows (its digest
        columns, in ``sort_id`` order when ``ordered``), computed here from the rows written,
        without reading them back: the servers' md5 of each row's columns as <characters>:<text>
        (a time as its decimal text), then the md5 of those, in order or sorted."""
        hashes = []
        for row in rows:
            if len(row) == 5:  # an archive row, spelt out: some 100,000 are written per second
                key, when, peer, type_, value = row
                time = str(when)
                text = f"{len(key)}:{key}{len(time)}:{time}{len(peer)}:{peer}{len(type_)}:{type_}{len(value)}:{value}"
            else:
                text = "".join([f"{len(t)}:{t}" for t in map(str, row)])
            hashes.append(_md5(text.encode("utf-8", "surrogateescape")))
        if not ordered:
            hashes.sort()  # as the servers sort them: by their bytes
        return "sql " + _md5("".join(hashes).encode())


def _md5(data: bytes) -> str:
    # A fingerprint, not a safeguard: allowed where a FIPS mode forbids MD5 for security.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def row_bytes(values: Sequence[Any]) -> bytes:
    """A row (text as bytes) as bytes that tell its values apart: their sizes (and an integer
    time) before them. A row of other types (a REAL time, a NULL) takes the slower, general form:
    a Python literal of each value's size or the value itself, then the bytes."""
    if len(values) == 5:
        key, when, peer, type_, value = values
        if when.__class__ is int and key.__class__ is peer.__class__ is type_.__class__ is value.__class__ is bytes:
            sizes = (len(key), when, len(peer), len(type_), len(value))
            return b"%d,%d,%d,%d,%d;%b%b%b%b" % (*sizes, key, peer, type_, value)
    elif len(values) == 3:
        key, type_, value = values
        if key.__class__ is type_.__class__ is value.__class__ is bytes:
            return b"%d,%d,%d;%b%b%b" % (len(key), len(type_), len(value), key, type_, value)
    head = tuple([len(v) if v.__class__ is bytes else (v,) for v in values])
    return repr(head).encode() + b"".join([v for v in values if v.__class__ is bytes])


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def resolve_relative_path(parent: str, path: str) -> str:
    """util.paths.resolve_relative_path: strip one leading ``./``, join a relative path to parent."""
    parent = parent.rstrip("/")
    if path.startswith("./"):
        path = path[1:].lstrip("/")
    return path if path.startswith("/") else f"{parent}/{path}"


class SQLite3(Dialect):
    """SQLite through the standard library; Prosody reads it with LuaDBI."""

    name = "SQLite3"
    begin_sql = "BEGIN IMMEDIATE"  # take the write lock at once, not at the first write
    index_query = "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'"
    # Bound as bytes when not UTF-8, so CAST keeps it TEXT (as LuaDBI stores it), bytes intact.
    text_marker = "CAST(? AS TEXT)"
    keeps_float_time = True

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        database = params.get("database") or "prosody.sqlite"
        if database != ":memory:":
            database = resolve_relative_path(str(params.get("data_path") or "."), str(database))
        self.database = str(database)

    def describe(self) -> str:
        return f"SQLite3 database {self.database!r}"

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def exists(self) -> bool:
        return self.database == ":memory:" or os.path.exists(self.database)

    def connect(self, create: bool) -> Any:
        if create and self.database != ":memory:":
            self._create_file()
        try:
            if create or self.database == ":memory:":
                conn = sqlite3.connect(self.database, isolation_level=None)
            else:
                conn = sqlite3.connect(f"file:{_uri_path(self.database)}?mode=rw", uri=True, isolation_level=None)
            conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise self.connect_error(exc) from exc
        return conn

    def _create_file(self) -> None:
        """Create a new database file readable by its owner and group only (it holds password
        hashes); SQLite would make it 0644 less the umask, and its journals copy the file's mode."""
        try:
            fd = os.open(self.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)
        except FileExistsError:
            return
        except OSError as exc:
            raise SqlConnectError(f"cannot create {self.describe()}: {exc.strerror}") from None
        os.close(fd)

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def text_problem(self, text: str) -> Optional[str]:
        if "\x00" in text:
            return "contains a NUL byte, where Prosody's SQLite driver (LuaDBI) would cut the string"
        return None

    def bind_text(self, text: str) -> Any:
        return text.encode("utf-8", "surrogateescape") if _surrogates(text) else text

    def tables(self, cur: Any) -> set[str]:
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in cur.fetchall()}

    def columns(self, cur: Any, table: str) -> dict[str, Column]:
        cur.execute(f'PRAGMA table_info("{table}")')
        # Every SQLite INTEGER is 64-bit, whatever the declared type.
        return {row[1]: Column(str(row[2]).lower(), INT64) for row in cur.fetchall()}

    def ddl(self) -> dict[str, str]:
        return {
            "prosody": 'CREATE TABLE "prosody" ("host" TEXT NOT NULL, "user" TEXT NOT NULL, '
            '"store" TEXT NOT NULL, "key" TEXT NOT NULL, "type" TEXT NOT NULL, "value" TEXT NOT NULL)',
            "prosodyarchive": 'CREATE TABLE "prosodyarchive" ("sort_id" INTEGER PRIMARY KEY AUTOINCREMENT, '
            '"host" TEXT NOT NULL, "user" TEXT NOT NULL, "store" TEXT NOT NULL, "key" TEXT NOT NULL, '
            '"when" INTEGER NOT NULL, "with" TEXT NOT NULL, "type" TEXT NOT NULL, "value" TEXT NOT NULL)',
        }

    server_digest = False  # SQLite has no digest function: the backend hashes the rows this query gives

    def digest_select(self, table: str, columns: Sequence[str], ordered: bool, where: str) -> str:
        # Text as its bytes (no decoding, to hash them); the time as it is, an integer or an exact REAL.
        picked = ", ".join(f'"{c}"' if c == "when" else f'CAST("{c}" AS BLOB)' for c in columns)
        order = '"sort_id"' if ordered else ", ".join(f'"{c}"' for c in columns)
        return f'SELECT "user", {picked} FROM "{table}" WHERE {where} ORDER BY "user", {order}'

    def digest_rows(self, rows: Sequence[tuple[Any, ...]], ordered: bool) -> str:
        # As the backend hashes digest_query's rows: text as its bytes (sorted as BINARY sorts),
        # a whole REAL time as the integer an INTEGER column turns it into.
        digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
        (_hash_archive_rows if ordered else _hash_keyval_rows)(digest, rows)
        return "sql " + digest.hexdigest()


# Both hash rows as row_bytes does the rows read back, its usual forms spelt out for speed (no
# tuple of encoded values built per row): some 100,000 rows are written per second.
def _hash_archive_rows(digest: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    for row in rows:
        key, when, peer, type_, value = row
        if when.__class__ is int and key.__class__ is peer.__class__ is type_.__class__ is value.__class__ is str:
            k = key.encode("utf-8", "surrogateescape")
            p = peer.encode("utf-8", "surrogateescape")
            t = type_.encode("utf-8", "surrogateescape")
            v = value.encode("utf-8", "surrogateescape")
            digest.update(b"%d,%d,%d,%d,%d;%b%b%b%b" % (len(k), when, len(p), len(t), len(v), k, p, t, v))
        else:
            digest.update(row_bytes(tuple(_as_stored(x) for x in row)))


def _hash_keyval_rows(digest: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    try:
        encoded = sorted([(k.encode(*_RAW), t.encode(*_RAW), v.encode(*_RAW)) for k, t, v in rows])
    except AttributeError:  # bytes bound for text that is not UTF-8
        encoded = sorted(tuple(_as_stored(x) for x in row) for row in rows)
    for values in encoded:
        k, t, v = values
        if k.__class__ is t.__class__ is v.__class__ is bytes:
            digest.update(b"%d,%d,%d;%b%b%b" % (len(k), len(t), len(v), k, t, v))
        else:
            digest.update(row_bytes(values))


_RAW = ("utf-8", "surrogateescape")  # text as SQLite3 holds it: its bytes, those that are not UTF-8 kept


def _as_stored(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode(*_RAW)
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63:
        return int(value)
    return value


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


class PostgreSQL(Dialect):
    """PostgreSQL through psycopg 3; archive rows go in with COPY."""

    name = "PostgreSQL"
    text_marker = "%s"
    number_marker = "%s"
    index_query = "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()"

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def connect(self, create: bool) -> Any:
        import psycopg

        kwargs: dict[str, Any] = {"dbname": self.database, "autocommit": True, "client_encoding": "UTF8"}
        for ours, theirs in (("host", "host"), ("port", "port"), ("username", "user"), ("password", "password")):
            if self.params.get(ours) not in (None, ""):
                kwargs[theirs] = str(self.params[ours])
        try:
            conn = psycopg.connect(connect_timeout=15, **kwargs)
        except psycopg.Error as exc:
            raise self.connect_error(exc) from None
        # Pipeline mode needs psycopg 3.1 and libpq 14; without it, each statement waits for its result.
        pipeline = getattr(psycopg, "Pipeline", None)
        self.pipelines = pipeline is not None and pipeline.is_supported()
        return conn

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def broken(self, conn: Any) -> bool:
        return bool(conn.closed)

    def pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        return conn.pipeline() if self.pipelines else nullcontext()

    def execute_once(self, cur: Any, query: str, params: Sequence[Any]) -> None:
        cur.execute(query, params, prepare=False)

    def any_of(self, column: str, texts: Sequence[str]) -> tuple[str, list[Any]]:
        # One array parameter: the same statement text (prepared once) for any number of keys.
        return f'"{column}" = ANY({{t}})', [list(texts)]

    def text_problem(self, text: str) -> Optional[str]:
        if "\x00" in text:
            return "contains a NUL byte, which PostgreSQL text cannot hold"
        if _surrogates(text):
            return "is not valid UTF-8, which PostgreSQL text cannot hold"
        return None

    def tables(self, cur: Any) -> set[str]:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        return {row[0] for row in cur.fetchall()}

    def columns(self, cur: Any, table: str) -> dict[str, Column]:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {name: Column(kind, INT_RANGES.get(kind)) for name, kind in cur.fetchall()}

    def ddl(self) -> dict[str, str]:
        # As Prosody's, except "when" BIGINT: Prosody's INTEGER stops at 2038-01-19.
        return {
            "prosody": 'CREATE TABLE "prosody" ("host" TEXT NOT NULL, "user" TEXT NOT NULL, '
            '"store" TEXT NOT NULL, "key" TEXT NOT NULL, "type" TEXT NOT NULL, "value" TEXT NOT NULL)',
            "prosodyarchive": 'CREATE TABLE "prosodyarchive" ("sort_id" BIGSERIAL PRIMARY KEY, '
            '"host" TEXT NOT NULL, "user" TEXT NOT NULL, "store" TEXT NOT NULL, "key" TEXT NOT NULL, '
            '"when" BIGINT NOT NULL, "with" TEXT NOT NULL, "type" TEXT NOT NULL, "value" TEXT NOT NULL)',
        }

    def insert_many(self, cur: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        # COPY: 20k archive rows took 1.3 s against 1.9 s with executemany (its pipeline mode), all in.
        cols = ", ".join(f'"{c}"' for c in columns)
        with cur.copy(f'COPY "{table}" ({cols}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)  # formatted in C: quicker than building the text ourselves

    def insert_values(self, cur: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        # COPY cannot run in a pipeline; one multi-row INSERT per chunk can (and is one statement).
        cols = ", ".join(f'"{c}"' for c in columns)
        mark = "(" + ", ".join(["%s"] * len(columns)) + ")"
        for start in range(0, len(rows), VALUES_CHUNK):
            chunk = rows[start : start + VALUES_CHUNK]
            marks = ", ".join([mark] * len(chunk))
            cur.execute(f'INSERT INTO "{table}" ({cols}) VALUES {marks}', [v for row in chunk for v in row])

    def digest_query(
        self, table: str, columns: Sequence[str], ordered: bool, host: str, store: str, users: Sequence[str]
    ) -> tuple[str, list[Any]]:
        # Each column as <length>:<text>, a NULL as "-" (a length never starts so): one text per
        # row that tells its columns apart. Its md5, and the md5 of the rows' md5s in order. One
        # subquery per user, looked up by (host, user, store), which lead every index: a plan that
        # does not depend on what the planner knows of the table (nothing, on a first run).
        row = " || ".join(f"""coalesce(length("{c}"::text) || ':' || "{c}"::text, '-')""" for c in columns)
        order, position = ("o", ', "sort_id" AS o') if ordered else ('h COLLATE "C"', "")
        digest = (
            f"SELECT md5(string_agg(h, '' ORDER BY {order})) AS d FROM (SELECT md5({row}) AS h{position} "
            f'FROM "{table}" WHERE "host" = %s AND "user" = u.name AND "store" = %s) AS r'
        )
        query = (
            f"SELECT u.i - 1, t.d, true FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, i), LATERAL ({digest}) AS t"
        )
        query += " WHERE t.d IS NOT NULL"
        return query, [list(users), host, store]


class MySQL(Dialect):
    """MySQL/MariaDB through PyMySQL, in utf8mb4 with the ``_bin`` collation as Prosody sets up."""

    name = "MySQL"
    text_marker = "%s"
    number_marker = "%s"
    charset = "utf8mb4"
    unique_archive_index = False  # as Prosody makes it on MySQL (its issue #1073)
    release_savepoints = False
    # MariaDB (its default 1 MB innodb_sort_buffer_size) built the four archive indexes of a
    # million rows in 7.6 s after the load, more than keeping them up to date had cost during it.
    defer_indexes = False
    index_query = (
        "SELECT DISTINCT table_name, index_name FROM information_schema.statistics WHERE table_schema = DATABASE()"
    )

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.Error,)

    def connect(self, create: bool) -> Any:
        import pymysql

        kwargs: dict[str, Any] = {"database": self.database, "charset": self.charset, "autocommit": True}
        for ours, theirs in (("host", "host"), ("username", "user"), ("password", "password")):
            if self.params.get(ours) is not None:
                kwargs[theirs] = str(self.params[ours])
        try:
            if self.params.get("port") not in (None, ""):
                kwargs["port"] = int(self.params["port"])
        except (TypeError, ValueError):
            raise SqlConfigError(f"{self.describe()}: port {self.params['port']!r} is not a number") from None
        try:
            conn = pymysql.connect(connect_timeout=15, **kwargs)
            with conn.cursor() as cur:
                # Strict mode makes the server refuse, never silently truncate; ANSI_QUOTES lets the
                # queries share PostgreSQL's and SQLite's identifier quoting.
                cur.execute(
                    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), "
                    "'ANSI_QUOTES', 'STRICT_ALL_TABLES')"
                )
                cur.execute(f"SET NAMES '{self.charset}' COLLATE '{self.charset}_bin'")
                # Parallel workers delete and insert rows of different users side by side; InnoDB's
                # default (REPEATABLE READ) locks the gaps between index entries for those deletes,
                # and two workers' gap locks deadlock. Each entry's own rows are all it reads.
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        except pymysql.Error as exc:
            raise self.connect_error(exc) from None
        return conn

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        conn.begin()
        cur = conn.cursor()
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()
        conn.commit()

    def broken(self, conn: Any) -> bool:
        return not conn.open

    def eq(self, column: str) -> tuple[str, int]:
        # utf8mb4_bin pads: 'a' = 'a ' is true. The BINARY test keeps the index use of the first.
        return f'"{column}" = %s AND "{column}" = BINARY %s', 2

    def exact(self, column: str) -> str:
        return f'CAST("{column}" AS BINARY)'

    def any_of(self, column: str, texts: Sequence[str]) -> tuple[str, list[Any]]:
        # As eq: the collation's test uses the index, the BINARY one keeps 'a' apart from 'a '.
        marks = ", ".join(["%s"] * len(texts))
        binary = ", ".join(["BINARY %s"] * len(texts))
        return f'"{column}" IN ({marks}) AND "{column}" IN ({binary})', [*texts, *texts]

    def read_text(self, value: Any) -> Any:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8")
        return value

    def text_problem(self, text: str) -> Optional[str]:
        if _surrogates(text):
            return "is not valid UTF-8, which a utf8mb4 column cannot hold"
        return None

    def tables(self, cur: Any) -> set[str]:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
        return {row[0] for row in cur.fetchall()}

    def columns(self, cur: Any, table: str) -> dict[str, Column]:
        cur.execute(
            "SELECT column_name, data_type, column_type, character_octet_length FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )
        out = {}
        for name, kind, full_type, octets in cur.fetchall():
            kind = str(kind).lower()
            span = INT_RANGES.get(kind)
            if span and "unsigned" in str(full_type).lower():
                span = (0, 2 * span[1] + 1)
            out[name] = Column(kind, span, int(octets) if octets is not None else None)
        return out

    def ddl(self) -> dict[str, str]:
        # Prosody's types (TEXT, value MEDIUMTEXT, INTEGER sort_id), but "when" BIGINT so times past
        # 2038 fit; Prosody's LuaDBI reads a BIGINT as a Lua float, exact for any realistic time.
        tail = f" CHARACTER SET '{self.charset}' COLLATE '{self.charset}_bin'"
        return {
            "prosody": 'CREATE TABLE "prosody" ("host" TEXT NOT NULL, "user" TEXT NOT NULL, '
            '"store" TEXT NOT NULL, "key" TEXT NOT NULL, "type" TEXT NOT NULL, "value" MEDIUMTEXT NOT NULL)' + tail,
            "prosodyarchive": 'CREATE TABLE "prosodyarchive" ("sort_id" INTEGER PRIMARY KEY AUTO_INCREMENT, '
            '"host" TEXT NOT NULL, "user" TEXT NOT NULL, "store" TEXT NOT NULL, "key" TEXT NOT NULL, '
            '"when" BIGINT NOT NULL, "with" TEXT NOT NULL, "type" TEXT NOT NULL, "value" MEDIUMTEXT NOT NULL)' + tail,
        }

    def insert_many(self, cur: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        # Multi-row INSERTs of up to STATEMENT_CHARS, their values quoted here: PyMySQL's executemany
        # spends most of a row's cost quoting each value through its type dispatch.
        cols = ", ".join(f'"{c}"' for c in columns)
        head = f'INSERT INTO "{table}" ({cols}) VALUES '
        escapes = _MYSQL_QUOTES_ONLY if _no_backslash_escapes(cur.connection) else _MYSQL_ESCAPES
        chunks = _escaped_chunks(rows, escapes)
        if chunks is not None:
            # Every value quoted, integers too: MySQL reads '1700000000' into a BIGINT exactly.
            for chunk in chunks:
                cur.execute(head + "('" + chunk.replace(_FIELD, "','").replace(_RECORD, "'),('") + "')")
            return
        literal = _mysql_literal(cur.connection, escapes)
        for chunk in _joined(["(" + ",".join([literal(v) for v in row]) + ")" for row in rows], ","):
            cur.execute(head + chunk)

    def index_column(self, column: str) -> str:
        # TEXT needs a prefix length in a MySQL index; Prosody uses 20 characters.
        return f'"{column}"' if column in ("when", "sort_id") else f'"{column}"(20)'

    # GROUP_CONCAT stops at group_concat_max_len (1024 by default): 32 characters a row here.
    digest_setup = "SET SESSION group_concat_max_len = 1073741824"  # the largest MariaDB takes

    def digest_query(
        self, table: str, columns: Sequence[str], ordered: bool, host: str, store: str, users: Sequence[str]
    ) -> tuple[str, list[Any]]:
        # As PostgreSQL's: each user's rows looked up by (host, user, store), which lead every index,
        # the users' names read first (the STRAIGHT_JOIN operator). With "user" IN (...) the plan
        # hung on the table's statistics, which are stale after a bulk load: MariaDB then read every
        # row of the host for each query of 200 users (a second run at 10,000 users took 0.75x of
        # the first). SELECT STRAIGHT_JOIN did not hold either: with statistics taken while one
        # user's rows were most of the table, MariaDB read the table first and looked each row up
        # in the names (a second run took 0.96x of the first). Prosody's index is named as well:
        # with statistics from when the table was empty (InnoDB recalculates them 10 s later at
        # the soonest), MariaDB scanned the table once for the names in a join buffer, 0.8 s a
        # query at 1,000 users (a second run took 0.91x of the first), 0.06 s with the index.
        # Grouped by the user's place in the list, an integer: grouped by the name (TEXT, and by its
        # bytes: utf8mb4_bin would put 'a' and 'a ' together) or with GROUP_CONCAT's text in a
        # derived table, each query made an on-disk temporary table. Each row's digest is 32
        # characters, so GROUP_CONCAT was cut when 32 per row pass its limit; past
        # max_allowed_packet it gives NULL, and so does the digest.
        row = (
            "CONCAT("
            + ", ".join(f"""COALESCE(CONCAT(CHAR_LENGTH(t."{c}"), ':', t."{c}"), '-')""" for c in columns)
            + ")"
        )
        order, position = ("o", ', t."sort_id" AS o') if ordered else ("h", "")
        name = f"CAST(%s AS CHAR CHARACTER SET {self.charset}) COLLATE {self.charset}_bin"
        names = " UNION ALL ".join([f"SELECT {i} AS i, {name} AS n" for i in range(len(users))])
        hint = f' FORCE INDEX ("{table}_index")' if (table, f"{table}_index") in self.indexes else ""
        match = " AND ".join(
            [
                't."host" = %s AND t."host" = BINARY %s',
                't."user" = k.n AND t."user" = BINARY k.n',
                't."store" = %s AND t."store" = BINARY %s',
            ]
        )
        query = (
            f"SELECT i, MD5(GROUP_CONCAT(h ORDER BY {order} SEPARATOR '')), "
            "32 * COUNT(*) <= @@SESSION.group_concat_max_len "
            f"FROM (SELECT k.i AS i, MD5({row}) AS h{position} "
            f'FROM ({names}) AS k STRAIGHT_JOIN "{table}" AS t{hint} ON {match}) AS r GROUP BY i'
        )
        return query, [*users, host, host, store, store]

    def row_limit(self, cur: Any) -> Optional[int]:
        cur.execute("SELECT @@SESSION.max_allowed_packet")
        (limit,) = cur.fetchone()
        # Room for the statement around the values; a row alone must fit in one packet.
        return int(limit) - 4096

    def upgrade_problems(self, cur: Any) -> list[str]:
        """The checks of Prosody's upgrade_table: any hit makes Prosody refuse to load."""
        problems = []
        cur.execute('SHOW COLUMNS FROM "prosody" WHERE "Field" = \'value\' AND "Type" = \'text\'')
        if cur.fetchall():
            problems.append("column prosody.value is TEXT where Prosody needs MEDIUMTEXT")
        cur.execute("SHOW INDEX FROM \"prosodyarchive\" WHERE key_name = 'prosodyarchive_index' AND non_unique = 0")
        if cur.fetchall():
            problems.append("index prosodyarchive_index is UNIQUE where Prosody needs it non-unique")
        cur.execute(
            "SELECT table_name, column_name, character_set_name, collation_name FROM information_schema.columns "
            "WHERE table_name LIKE 'prosody%%' AND table_schema = DATABASE() "
            "AND (character_set_name <> %s OR collation_name <> %s)",
            (self.charset, self.charset + "_bin"),
        )
        for table, column, charset, collation in cur.fetchall():
            problems.append(f"column {table}.{column} is {charset}/{collation}, not {self.charset}/{self.charset}_bin")
        return problems


# What MySQL's string literals need escaped, as mysql_real_escape_string does it (the backslash
# first); with NO_BACKSLASH_ESCAPES in the server's sql_mode, only the quote, doubled. Replaced one
# by one: str.translate with such a table takes a slow path per character, five times slower here.
_MYSQL_ESCAPES = (
    ("\\", "\\\\"),
    ("'", "\\'"),
    ('"', '\\"'),
    ("\0", "\\0"),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\x1a", "\\Z"),
)
_MYSQL_QUOTES_ONLY = (("'", "''"),)


def _no_backslash_escapes(conn: Any) -> bool:
    """Whether the server's sql_mode on this PyMySQL connection has NO_BACKSLASH_ESCAPES."""
    from pymysql.constants import SERVER_STATUS

    return bool(conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)


def _mysql_literal(conn: Any, escapes: Sequence[tuple[str, str]]) -> Callable[[Any], str]:
    """A function giving a value's SQL literal text on this PyMySQL connection (``escapes`` for its sql_mode)."""

    def literal(value: Any) -> str:
        if value.__class__ is str:
            return "'" + _escaped(value, escapes) + "'"
        if value.__class__ is int:
            return str(value)
        return conn.literal(value)  # anything else (a float, bytes): the driver's own quoting

    return literal


def _escaped(text: str, escapes: Sequence[tuple[str, str]]) -> str:
    for char, escaped in escapes:
        if char in text:
            text = text.replace(char, escaped)
    return text


# The text of a multi-row INSERT is built with these two characters between values and
# between rows, escaped as a whole, then each put in its place: a few scans of the whole batch in C
# instead of a few calls per value. A value holding either of them takes the general path.
_FIELD, _RECORD = "\x01", "\x02"


def _escaped_chunks(rows: Sequence[tuple[Any, ...]], escapes: Sequence[tuple[str, str]]) -> Optional[list[str]]:
    """The rows in texts of at most STATEMENT_CHARS (or a row alone), their values escaped and
    joined by _FIELD, the rows by _RECORD; None when a value is neither text nor an integer, or
    holds _FIELD or _RECORD."""
    try:
        texts = [_FIELD.join([v if v.__class__ is str else _integer_text(v) for v in row]) for row in rows]
    except TypeError:
        return None
    chunks = _joined(texts, _RECORD)
    fields = sum(len(row) - 1 for row in rows)
    if sum(c.count(_FIELD) for c in chunks) != fields or sum(c.count(_RECORD) + 1 for c in chunks) != len(rows):
        return None
    return [_escaped(chunk, escapes) for chunk in chunks]


def _joined(texts: list[str], separator: str) -> list[str]:
    """The texts joined by ``separator``, CHUNK_ROWS at a time, fewer where that would pass
    STATEMENT_CHARS (a text longer than that alone)."""
    chunks = []
    start = 0
    while start < len(texts):
        end = min(start + CHUNK_ROWS, len(texts))
        chunk = separator.join(texts[start:end])
        while len(chunk) > STATEMENT_CHARS and end - start > 1:  # rows larger than usual: fewer of them
            end = start + (end - start) // 2
            chunk = separator.join(texts[start:end])
        chunks.append(chunk)
        start = end
    return chunks


def _integer_text(value: Any) -> str:
    if value.__class__ is not int:
        raise TypeError(f"not an integer: {type(value).__name__}")
    return str(value)


DIALECTS = {cls.name: cls for cls in (SQLite3, PostgreSQL, MySQL)}


def for_params(params: Mapping[str, Any]) -> Dialect:
    """The dialect object for a store definition's ``driver``."""
    driver = params.get("driver", "SQLite3")
    cls = DIALECTS.get(str(driver))
    if cls is None:
        raise SqlConfigError(f"unknown SQL driver {driver!r} (Prosody knows {', '.join(sorted(DIALECTS))})")
    return cls(params)
