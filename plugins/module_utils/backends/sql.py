# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prosody's ``sql`` storage (mod_storage_sql, 0.12 schema) on SQLite3, PostgreSQL and MySQL/MariaDB.

Tables: ``prosody`` (one row per keyval key, plus the ``key = ''`` row for non-string keys) and
``prosodyarchive`` (ordered by ``sort_id``). Host-level data is ``user = ''``; an archive item
without a peer has ``with = ''``. Every value is bound, never spliced into the query text.

Tables are created on the first write when missing (Prosody's layout, with ``when`` a 64-bit
integer everywhere) and left alone when present. A schema that Prosody would refuse until
``prosodyctl mod_storage_sql upgrade`` is run is refused for writing with the reasons listed.
A value the destination (or Prosody reading it back) cannot hold raises SqlEncodeError naming
the host, store and user; nothing is ever stored altered. ``archive_unstorable`` names such
archive items beforehand (a stanza with a control character, a value too long for its column...)
so that the engine fails them alone and writes the rest of the archive.

SQLite3: a relative ``database`` resolves against the ``data_path`` parameter (default ``.``),
as Prosody resolves it against its data directory; the default name is ``prosody.sqlite``. In a
batch, writes are held until ``flush`` and written then in one short transaction (see
``SqlBackend._holding``).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Callable, NamedTuple, Optional

from ..errors import EncodeError, ProsodyMigrateError
from ..sqlvalue import from_sql, keyval_from_rows, keyval_to_rows, to_sql
from .base import ABSENT, ArchiveItem, Backend, EntriesRefused, Entry, RefusedEntry, WritesLost
from .dialects import (
    ARCHIVE_COLUMNS,
    DIGEST_SIZE,
    KEYVAL_COLUMNS,
    REQUIRED,
    Column,
    Dialect,
    SqlDatabaseError,
    for_params,
    row_bytes,
)

PAGE = 500  # archive rows fetched per query: bounded memory, no long-lived server cursor
# In a batch, each entry (one user's value or archive) is encoded and checked in its own call
# (keyval_set/archive_write), where a value that cannot be stored fails as that user's own failure,
# but written at the flush (SqlBackend._holding): the batch's rows go in by the dialect's bulk path
# (COPY, multi-row INSERTs) in one transaction, the rows replaced deleted first (none when the engine
# knows the entry is new). Should the database refuse that, the batch is written again entry by
# entry, each under a savepoint of its own, so that the refused entries are undone alone and named
# (EntriesRefused), the others written. An entry written alone, outside a batch or in that second
# pass, goes to PostgreSQL in one round trip when it has at most PIPELINE_ROWS rows (savepoint,
# DELETE, INSERT, release pipelined), through COPY when larger.
PIPELINE_ROWS = 64
KEYS_CHUNK = 500  # archive keys per DELETE: under every driver's limit on bound values
# What a fingerprint covers: every column of an entry's rows but host, user and store (and the
# archive's sort_id, of which only the order counts).
DIGEST_COLUMNS = {"prosody": ("key", "type", "value"), "prosodyarchive": ("key", "when", "with", "type", "value")}
# Those columns out of a row as written (KEYVAL_COLUMNS, ARCHIVE_COLUMNS order).
_KEYVAL_DIGESTED = operator.itemgetter(*(KEYVAL_COLUMNS.index(c) for c in DIGEST_COLUMNS["prosody"]))
_ARCHIVE_DIGESTED = operator.itemgetter(*(ARCHIVE_COLUMNS.index(c) for c in DIGEST_COLUMNS["prosodyarchive"]))


class SqlSchemaError(ProsodyMigrateError):
    """An existing schema we cannot use as it is (missing columns, or Prosody wants it upgraded)."""


class SqlEncodeError(EncodeError):
    """A value this database, or Prosody reading it back, cannot hold."""


_Delete = tuple[str, list[Any]]  # a DELETE statement and its bound values


class _Held(NamedTuple):
    """An entry's write held until the flush (``SqlBackend._holding``): what it is, the write on its
    own, and its parts for the batch's bulk write: the deletes of the rows it replaces, those when
    the batch is written again (``_Deletes``), and its rows."""

    table: str
    host: str
    store: str
    user: Optional[str]
    write: Callable[[], None]
    deletes: _Deletes
    rows: list[tuple[Any, ...]]


class _Deletes(NamedTuple):
    """An entry's deletes: ``first`` when its batch is written, ``again`` when the batch is done
    again on a new connection (SqlBackend._recover); None there means every row of the entry, the
    usual case, built only if it comes to that (``SqlBackend._again``). An entry known absent needs
    none the first time, but its batch's commit may have happened before the connection went: then
    every row of the entry (all of them written by the batch) must go before it is written again."""

    first: list[_Delete]
    again: Optional[list[_Delete]]


class SqlBackend(Backend):
    """mod_storage_sql's tables; params as a migrator.cfg.lua ``sql`` entry gives them."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.dialect: Dialect = for_params(self.params)
        self._conn: Any = None
        self._schema: Optional[dict[str, dict[str, Column]]] = None
        self._problems: list[str] = []
        self._row_limit: Optional[int] = None
        self._batching = False
        self._batch: Any = None  # the cursor of the open batch transaction
        self._control: Any = None  # the batch's cursor for SAVEPOINT/RELEASE, leaving the step's results alone
        # Per table, a byte count every row within which fits the columns and the server's row
        # limit as a whole (None: no limits at all), so that most rows need no per-column sizes.
        self._fits: dict[str, Optional[int]] = {}
        # The writes in the open batch, to do again on a new connection when the old one drops.
        self._journal: list[Callable[[], None]] = []
        self._replaying = False
        # The writes held until the flush (_holding), the keys a read may not miss among them (see
        # _settle), and the entries the database refused when held writes went in, for flush to raise.
        self._held: list[_Held] = []
        self._held_keys: set[tuple[str, ...]] = set()
        self._refused: list[RefusedEntry] = []
        # With track_writes: the fingerprint each entry written since will have, from its rows.
        self._written: Optional[dict[Entry, str]] = None
        self._reads_wanted: frozenset[Entry] = frozenset()  # fingerprint_reads' entries
        self._read_fps: dict[Entry, str] = {}
        # archive_unstorable's encoded rows for one user, which archive_write then reuses.
        self._encoded: tuple[tuple[str, str, str], dict[int, tuple[ArchiveItem, tuple[Any, ...]]]] = (("", "", ""), {})
        if self.dialect.exists():
            self._open(create=False)

    # connection and schema ---------------------------------------------------------------------
    def _open(self, create: bool) -> None:
        self._conn = self.dialect.connect(create)
        try:
            self._inspect()
        except BaseException:
            self.close()
            raise

    def _inspect(self) -> None:
        with self._tx() as cur:
            present = self.dialect.tables(cur) & set(REQUIRED)
            self._schema = {table: self.dialect.columns(cur, table) for table in sorted(present)}
            self._problems = self.dialect.upgrade_problems(cur) if len(present) == len(REQUIRED) else []
            self._row_limit = self.dialect.row_limit(cur)
            self.dialect.note_indexes(cur)
        self._fits = {}
        for table, columns in self._schema.items():
            missing = [c for c in REQUIRED[table] if c not in columns]
            if missing:
                raise SqlSchemaError(
                    f"{self.dialect.describe()}: table {table} lacks column(s) {', '.join(missing)};"
                    " it is not a Prosody 0.12 mod_storage_sql schema"
                )
            limits = [c.max_bytes for c in columns.values() if c.max_bytes is not None]
            if self._row_limit is not None:
                limits.append(self._row_limit)
            self._fits[table] = min(limits) if limits else None

    def _has(self, table: str) -> bool:
        return self._schema is not None and table in self._schema

    def _writable(self, bare: bool = False) -> bool:
        """Create missing tables (``bare``: without their indexes); refuse a schema Prosody would
        want upgraded first. Whether it created any."""
        if self._conn is None:
            self._open(create=True)
        missing = set(REQUIRED) - set(self._schema or {})
        if missing:
            with self._tx() as cur:
                self.dialect.create_tables(cur, missing, indexes=not bare)
            self._inspect()
        if self._problems:
            raise SqlSchemaError(
                f"{self.dialect.describe()} has an old schema that Prosody refuses until "
                f"`prosodyctl mod_storage_sql upgrade` is run: {'; '.join(self._problems)}"
            )
        return bool(missing)

    def prepare_writes(self, defer_indexes: bool = False) -> bool:
        """Create the missing tables. With ``defer_indexes``, where the dialect loads faster so
        (``Dialect.defer_indexes``), they get Prosody's indexes at ``finish_writes``. A table
        already there without them (a run stopped before it built them) gets them now if it holds
        rows: each entry's read of it needs them."""
        defer = defer_indexes and self.dialect.defer_indexes
        created = self._writable(bare=defer)
        tables = [t for t in REQUIRED if self._has(t) and not (defer and self._no_rows(t))]
        return self._build_indexes(tables) or created

    def finish_writes(self) -> bool:
        """Build the indexes that ``prepare_writes`` deferred (any of Prosody's that a table lacks)."""
        return self._build_indexes([t for t in REQUIRED if self._has(t)])

    def _build_indexes(self, tables: Sequence[str]) -> bool:
        """Build Prosody's indexes that these tables lack; whether there were any."""
        missing = self.dialect.missing_indexes(tables)
        for table, name in missing:
            try:
                with self._tx() as cur:
                    self.dialect.create_index(cur, name)
            except SqlDatabaseError as exc:
                raise SqlDatabaseError(
                    f"cannot build Prosody's index {name} on table {table}: {exc}; the rows written are "
                    "there, and the next run builds the index before it reads them"
                ) from None  # the message holds the server's reason
        return bool(missing)

    def schema_problems(self) -> list[str]:
        """Why Prosody would refuse the existing schema (empty when it is current or absent)."""
        return list(self._problems)

    def close(self) -> None:
        """Close the connection; a batch not flushed is rolled back (or dropped, held) with it, as a kill would."""
        self._batch, self._control, self._journal = None, None, []
        self._held, self._held_keys, self._refused = [], set(), []
        if self._conn is not None:
            try:
                self._conn.close()
            except self.dialect.driver_errors():
                pass  # already gone
            self._conn = None

    # batches ----------------------------------------------------------------------------------
    def start_batch(self) -> None:
        self._batching = True

    def _join_batch(self) -> None:
        """Open the batch's transaction unless one is open (writes only: reads never start one).

        A connection the server dropped while it was idle (between two batches, or while a batch
        was held) fails at the BEGIN: nothing of the batch was sent yet, so it begins on a new one."""
        if not self._batching or self._batch is not None:
            return
        for again in (False, True):
            if self._conn is None or self.dialect.broken(self._conn):
                self.close()
                self._conn = self.dialect.connect(False)
            try:
                cur = self._conn.cursor()
                cur.execute(self.dialect.begin_sql)
                control = self._conn.cursor()
            except self.dialect.driver_errors() as exc:
                if again or not self.dialect.broken(self._conn):
                    raise SqlDatabaseError(f"{self.dialect.describe()}: {self.dialect.reason(exc)}") from exc
            else:
                self._batch, self._control = cur, control
                return

    def _record(self, write: Callable[[], None]) -> None:
        """Note a write done in the open batch, so that it can be done again on a new connection.

        ``write`` must not refer to itself: such a cycle, holding the entry's rows, outlives the
        batch until a full garbage collection, and memory grew with the number of users."""
        if self._batch is not None and not self._replaying:
            self._journal.append(write)

    def _holding(self) -> bool:
        """Whether writes are held until the flush: always, in a batch.

        Written as they come, each entry would cost its own statements and round trips, and a
        batch's transaction would be open (a SQLite3 database locked against the other workers) for
        as long as this process takes to read what goes into it. Held, each entry is still encoded
        and checked in its own call (an entry that cannot be stored fails there, as ever), and the
        flush writes them all in one short transaction (``_write_held``).
        """
        return self._batching

    def _apply(self, held: _Held) -> None:
        """Do an entry's write now (outside a batch), or hold it until the flush (``_holding``)."""
        if self._holding():
            self._held.append(held)
            self._held_keys.update(
                ((held.table, held.host, held.store), (held.table, held.host, held.store, held.user or ""))
            )
            return
        held.write()

    def _settle(self, key: Optional[tuple[str, ...]] = None) -> None:
        """Before a read of one entry (``key``: table, host, store, user) or of more: write the held
        entries when the read could miss one of them. A run reads each entry before it writes it,
        and lists a store before writing any of it, so only a source listing a user twice gets here;
        the read is exact all the same."""
        if self._held and (key is None or key in self._held_keys):
            self._write_held()

    def _write_held(self) -> None:
        """Write the held entries in one transaction and commit: all at once (``_write_bulk``), or,
        should the database refuse that, each under its own savepoint.

        An entry the database refuses is undone alone and noted for ``flush`` to raise; one whose
        failure took the transaction with it fails alone too, the entries before it being written
        again on a new connection (as ``_in_batch`` does for any write). WritesLost when the batch
        cannot be begun, or its commit fails even after that.
        """
        held, refused = self._held, self._refused
        self._held, self._held_keys, self._refused = [], set(), []
        if held:
            try:
                self._join_batch()
            except ProsodyMigrateError as exc:
                self.close()
                raise WritesLost(f"{exc}; the batch's {len(held)} writes, held until now, were not written") from exc
            if not self._write_bulk(held):
                for entry in held:
                    try:
                        entry.write()
                    except SqlDatabaseError as exc:
                        kind = "keyval" if entry.table == "prosody" else "archive"
                        refused.append(RefusedEntry(entry.host, entry.store, kind, entry.user, str(exc)))
                    else:
                        self._record(entry.write)
        self._commit()
        self._refused = refused

    def _write_bulk(self, held: list[_Held]) -> bool:
        """Write the held entries together, under one savepoint: the deletes, then each table's rows
        by the dialect's bulk path. False, with nothing of it done, when the database refused it
        (or an entry is held twice, whose writes must go in order): they are then written one by one."""
        if len({(h.table, h.host, h.store, h.user or "") for h in held}) < len(held):
            return False
        first = [d for h in held for d in h.deletes.first]
        keyval = [r for h in held if h.table == "prosody" for r in h.rows]
        archive = [r for h in held if h.table == "prosodyarchive" for r in h.rows]

        def write() -> None:
            if self._replaying:
                deletes = [d for h in held for d in self._again(h.table, h.host, h.store, h.user, h.deletes)]
            else:
                deletes = first
            with self._tx() as cur:
                if deletes:
                    with self.dialect.pipeline(self._conn):
                        for query, params in deletes:
                            cur.execute(query, params)
                if keyval:
                    self.dialect.insert_many(cur, "prosody", KEYVAL_COLUMNS, keyval)
                if archive:
                    self.dialect.insert_many(cur, "prosodyarchive", ARCHIVE_COLUMNS, archive)

        try:
            write()
        except SqlDatabaseError:
            return False
        self._record(write)
        return True

    def flush(self) -> None:
        """Commit the open batch (the held writes written first); on a failure, do it all again once
        on a new connection. EntriesRefused names the held entries the database refused."""
        self._write_held()
        refused, self._refused = self._refused, []
        if refused:
            raise EntriesRefused(refused)

    def _commit(self) -> None:
        if self._batch is None:
            return
        try:
            self._batch.execute("COMMIT")
        except self.dialect.driver_errors() as exc:
            # Whether the commit happened is unknown when the connection went: every write is a
            # replacement, so doing them again gives the same result either way.
            self._recover(exc)
            try:
                self._batch.execute("COMMIT")
            except self.dialect.driver_errors() as again:
                self._lose(len(self._journal), again)
        self._batch, self._control, self._journal = None, None, []

    def _recover(self, exc: BaseException) -> None:
        """The batch's transaction is gone: redo its writes in a new one; WritesLost if we cannot."""
        journal = self._journal
        self.close()
        self._replaying = True
        try:
            self._join_batch()
            for write in journal:
                write()
        except (ProsodyMigrateError, *self.dialect.driver_errors()) as failed:
            self._lose(len(journal), failed, exc)
        finally:
            self._replaying = False
        self._journal = journal

    def _lose(self, count: int, exc: BaseException, first: Optional[BaseException] = None) -> None:
        self.close()
        why = self.dialect.reason(first or exc)
        raise WritesLost(
            f"{self.dialect.describe()}: {why}; the transaction holding the writes since the last commit "
            f"({count} of them) was lost and could not be done again: {self.dialect.reason(exc)}"
        ) from exc

    def _savepoint(self, cur: Any, command: str) -> bool:
        try:
            cur.execute(command)
        except self.dialect.driver_errors():
            return False
        return True

    @contextmanager
    def _in_batch(self, pipelined: bool = False) -> Iterator[Any]:
        """One step inside the open batch, under a savepoint: a failure undoes this step alone.

        Pipelined, the savepoint, the step's statements and the release go to the server together
        (PostgreSQL: one round trip); the step's errors still come out here, before it returns, so
        that the entry in flight is the one that fails. The step may not use ``insert_many`` then.
        """
        cur, control = self._batch, self._control
        try:
            with self.dialect.pipeline(self._conn) if pipelined else nullcontext():
                control.execute("SAVEPOINT step")
                yield cur
                if self.dialect.release_savepoints:
                    control.execute("RELEASE SAVEPOINT step")
        except BaseException as exc:
            undone = (
                not self.dialect.broken(self._conn)
                and self._savepoint(cur, "ROLLBACK TO SAVEPOINT step")
                and self._savepoint(cur, "RELEASE SAVEPOINT step")
            )
            if not undone and not self._replaying:
                # The server dropped the connection (or the whole transaction): the user in flight
                # fails below, the batch's earlier writes are done again on a new connection.
                self._recover(exc)
            if isinstance(exc, self.dialect.driver_errors()):
                raise SqlDatabaseError(f"{self.dialect.describe()}: {self.dialect.reason(exc)}") from exc
            raise

    # query helpers ----------------------------------------------------------------------------
    def _tx(self, pipelined: bool = False) -> AbstractContextManager[Any]:
        """One transaction (a savepoint in the open batch, pipelined if asked); driver errors come
        out as SqlDatabaseError."""
        return self._in_batch(pipelined) if self._batch is not None else self._own_tx()

    def _connection(self) -> Any:
        """The connection, new when there is none or the old one is lost (outside a batch only)."""
        if self._conn is None or self.dialect.broken(self._conn):
            # The server dropped the connection during an earlier query (that one failed): a new
            # one lets the rest of a keep_going run through instead of failing every entry after.
            # (None: closed after a lost batch.)
            self.close()
            self._conn = self.dialect.connect(False)
        return self._conn

    @contextmanager
    def _own_tx(self) -> Iterator[Any]:
        conn = self._connection()
        try:
            with self.dialect.transaction(conn) as cur:
                yield cur
        except self.dialect.driver_errors() as exc:
            raise SqlDatabaseError(f"{self.dialect.describe()}: {self.dialect.reason(exc)}") from exc

    def _read(self, query: str, params: Sequence[Any], once: bool = False) -> list[tuple[Any, ...]]:
        """One query outside a batch, without BEGIN/COMMIT around it: the connection is in
        autocommit mode, where a lone statement is a transaction of its own. ``once``: never
        prepared (Dialect.execute_once)."""
        conn = self._connection()
        try:
            cur = conn.cursor()
            try:
                if once:
                    self.dialect.execute_once(cur, query, params)
                else:
                    cur.execute(query, params)
                return cur.fetchall()
            finally:
                cur.close()
        except self.dialect.driver_errors() as exc:
            raise SqlDatabaseError(f"{self.dialect.describe()}: {self.dialect.reason(exc)}") from exc

    def _where(self, **pairs: str) -> tuple[str, list[Any]]:
        parts, params = [], []
        for column, value in pairs.items():
            fragment, times = self.dialect.eq(column)
            parts.append(fragment)
            params.extend([self.dialect.bind_text(value)] * times)
        return " AND ".join(parts), params

    def _select(self, query: str, params: Sequence[Any], once: bool = False) -> list[tuple[Any, ...]]:
        query = self.dialect.sql(query)
        if self._batch is None:
            rows = self._read(query, params, once)
        else:
            pipelined = self.dialect.pipelines
            with self._in_batch(pipelined) as cur:
                if once:
                    self.dialect.execute_once(cur, query, params)
                else:
                    cur.execute(query, params)
                # Pipelined, the rows come back with the release, at the end of the block (they
                # stay on this cursor: the savepoint statements run on another).
                rows = None if pipelined else cur.fetchall()
            if rows is None:
                rows = cur.fetchall()
        # Most rows hold no binary value: kept as they are, at a fifth of the cost of rebuilding each.
        read_text = self.dialect.read_text
        return [row if _BINARY.isdisjoint(map(type, row)) else tuple(read_text(v) for v in row) for row in rows]

    def _distinct(self, column: str, table: str, **pairs: str) -> list[str]:
        self._settle()
        if not self._has(table):
            return []
        where, params = self._where(**pairs)
        rows = self._select(f'SELECT DISTINCT {self.dialect.exact(column)} FROM "{table}" WHERE {where}', params)
        return sorted({row[0] for row in rows})

    def _source(self, table: str, host: str, store: str, user: Optional[str], key: Optional[str] = None) -> str:
        where = f"{self.dialect.describe()}, table {table}, host {host!r}, store {store!r}, user {user!r}"
        return where + (f", key {key!r}" if key is not None else "")

    def _check(self, host: str, store: str, user: Optional[str], table: str, row: dict[str, Any]) -> None:
        """Raise SqlEncodeError when a row's text or time cannot be stored as it is."""
        columns = (self._schema or {}).get(table, {})
        total = 0
        for name, value in row.items():
            if isinstance(value, str):
                problem = self.dialect.text_problem(value)
                limit = columns[name].max_bytes if name in columns else None
                size = len(value.encode("utf-8", "surrogateescape"))
                total += size
                if problem is None and limit is not None and size > limit:
                    problem = f"is {size} bytes, more than the {limit} its {columns[name].type} column holds"
                if problem:
                    raise SqlEncodeError(
                        f"cannot store host {host!r}, store {store!r}, user {user!r} in "
                        f"{self.dialect.describe()}: the {name} {_preview(value)} {problem}"
                    )
        if self._row_limit is not None and total > self._row_limit:
            raise SqlEncodeError(
                f"cannot store host {host!r}, store {store!r}, user {user!r} in {self.dialect.describe()}: "
                f"a row of {total} bytes is more than the server's max_allowed_packet lets through"
                f" ({self._row_limit + 4096} bytes, less room for the statement)"
            )

    def _bind_row(self, row: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
        return tuple(self.dialect.bind_text(row[c]) if isinstance(row[c], str) else row[c] for c in columns)

    def _suspect(self, table: str, text: str) -> bool:
        """Whether text (a row's strings joined) needs ``_check``: it holds a character a dialect
        refuses or binds apart (NUL; surrogates, bytes that are not UTF-8), or is long enough that
        a column or the row might not fit. Text that does not is fine for every check there, and
        binds as it is."""
        # A scan for NUL, and for surrogates the UTF-8 encoding (whose size counts below): each a few
        # times quicker than the pattern, which took a good part of a row's cost.
        if "\x00" in text:
            return True
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                return True
        limit = self._fits.get(table, self._row_limit)  # a table not created yet: the server's limit
        return limit is not None and size > limit

    def _row(
        self, host: str, store: str, user: Optional[str], table: str, columns: Sequence[str], values: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        """The row (values in ``columns`` order) as bound for the driver; SqlEncodeError as ``_check``.

        One pass over the whole row's text, instead of ``_check``'s per column, clears the usual row;
        only a suspect one goes through ``_check`` (which names the column and the reason) and binding."""
        if not self._suspect(table, "".join([v for v in values if isinstance(v, str)])):
            return values
        row = dict(zip(columns, values))
        self._check(host, store, user, table, row)
        return self._bind_row(row, columns)

    # keyval --------------------------------------------------------------------------------
    def keyval_users(self, host: str, store: str) -> Iterator[str]:
        users = self._distinct("user", "prosody", host=host, store=store)
        return iter([u for u in users if u != ""])

    def keyval_get(self, host: str, store: str, user: Optional[str]) -> Any:
        self._settle(("prosody", host, store, user or ""))
        if not self._has("prosody"):
            return None
        where, params = self._where(host=host, user=user or "", store=store)
        rows = self._select(f'SELECT "key", "type", "value" FROM "prosody" WHERE {where}', params)
        if not rows:
            return None
        value = keyval_from_rows(rows, self._source("prosody", host, store, user))
        entry = (host, store, "keyval", user)
        if entry in self._reads_wanted:
            self._read_fps[entry] = self.dialect.digest_rows(rows, False)  # read as DIGEST_COLUMNS
        return value

    def keyval_set(self, host: str, store: str, user: Optional[str], value: Any, absent: bool = False) -> None:
        self._writable()
        base = (host, user or "", store)
        rows = []
        if value is not None:  # an empty table gives no rows: removed, as in Prosody
            try:
                encoded = keyval_to_rows(value)
            except ProsodyMigrateError as exc:
                raise SqlEncodeError(f"cannot store host {host!r}, store {store!r}, user {user!r}: {exc}") from exc
            for key, type_, text in encoded:
                rows.append(self._row(host, store, user, "prosody", KEYVAL_COLUMNS, (*base, key, type_, text)))
        if self._suspect("prosody", "".join(base)):
            for name, text in zip(KEYVAL_COLUMNS, base):
                self._check(host, store, user, "prosody", {name: text})
        deletes = _Deletes([] if absent else [self._entry_delete("prosody", host, store, user)], None)
        write = self._writer("prosody", host, store, user, deletes, rows)
        self._apply(_Held("prosody", host, store, user, write, deletes, rows))
        self._note_written((host, store, "keyval", user), rows)

    def _entry_delete(self, table: str, host: str, store: str, user: Optional[str]) -> _Delete:
        """The DELETE of every row of one entry."""
        where, params = self._where(host=host, user=user or "", store=store)
        return self.dialect.sql(f'DELETE FROM "{table}" WHERE {where}'), params

    def _again(self, table: str, host: str, store: str, user: Optional[str], deletes: _Deletes) -> list[_Delete]:
        """An entry's deletes when its batch is written again (``_Deletes``)."""
        return [self._entry_delete(table, host, store, user)] if deletes.again is None else deletes.again

    def _writer(
        self, table: str, host: str, store: str, user: Optional[str], deletes: _Deletes, rows: list[tuple[Any, ...]]
    ) -> Callable[[], None]:
        """One entry's write on its own: its deletes and rows in one step (pipelined when it is small)."""
        pipelined = len(rows) <= PIPELINE_ROWS
        insert = self.dialect.insert_values if pipelined else self.dialect.insert_many
        columns = KEYVAL_COLUMNS if table == "prosody" else ARCHIVE_COLUMNS

        def write() -> None:
            now = self._again(table, host, store, user, deletes) if self._replaying else deletes.first
            with self._tx(pipelined) as cur:
                for query, params in now:
                    cur.execute(query, params)
                if rows:
                    insert(cur, table, columns, rows)

        return write

    # archive -------------------------------------------------------------------------------
    def archive_users(self, host: str, store: str) -> Iterator[str]:
        users = self._distinct("user", "prosodyarchive", host=host, store=store)
        return iter([u for u in users if u != ""])

    def archive_items(self, host: str, store: str, user: Optional[str]) -> Iterator[ArchiveItem]:
        self._settle(("prosodyarchive", host, store, user or ""))
        if not self._has("prosodyarchive"):
            return
        where, params = self._where(host=host, user=user or "", store=store)
        query = (
            f'SELECT "sort_id", "key", "type", "value", "when", "with" FROM "prosodyarchive" '
            f'WHERE {where} AND "sort_id" > {{n}} ORDER BY "sort_id" LIMIT {PAGE}'
        )
        last = -(2**63)
        entry = (host, store, "archive", user)
        digested: Optional[list[tuple[Any, ...]]] = [] if entry in self._reads_wanted else None
        while True:
            rows = self._select(query, [*params, last])
            for sort_id, key, type_, text, when, with_ in rows:
                value = from_sql(type_, text, self._source("prosodyarchive", host, store, user, key))
                yield ArchiveItem(key, value, when, with_ or None)
                last = sort_id
            if digested is not None:
                digested.extend([(key, when, with_, type_, text) for _id, key, type_, text, when, with_ in rows])
            if len(rows) < PAGE:
                break
        if digested:
            self._read_fps[entry] = self.dialect.digest_rows(digested, True)

    def archive_keys(self, host: str, store: str, user: Optional[str]) -> list[str]:
        self._settle(("prosodyarchive", host, store, user or ""))
        if not self._has("prosodyarchive"):
            return []
        where, params = self._where(host=host, user=user or "", store=store)
        rows = self._select(f'SELECT "key" FROM "prosodyarchive" WHERE {where} ORDER BY "sort_id"', params)
        return [row[0] for row in rows]

    def archive_unstorable(
        self, host: str, store: str, user: Optional[str], items: Iterable[ArchiveItem]
    ) -> dict[str, str]:
        # Host, user and store are in every row: when they cannot be stored, the whole archive fails.
        base = (host, user or "", store)
        if self._suspect("prosodyarchive", "".join(base)):
            self._check(host, store, user, "prosodyarchive", dict(zip(("host", "user", "store"), base)))
        problems = {}
        encoded: dict[int, tuple[ArchiveItem, tuple[Any, ...]]] = {}
        for item in items:
            try:
                encoded[id(item)] = (item, self._archive_row(host, store, user, item))
            except SqlEncodeError as exc:
                problems[item.key] = str(exc)
        # Kept (with the items, so their ids stay theirs) for the archive_write that follows.
        self._encoded = ((host, store, user or ""), encoded)
        return problems

    def archive_write(
        self, host: str, store: str, user: Optional[str], items: Iterable[ArchiveItem], absent: bool = False
    ) -> None:
        self._writable()
        latest: dict[str, ArchiveItem] = {}
        for item in items:
            # A repeated key replaces the earlier item and moves to the end, as Prosody's append does.
            latest.pop(item.key, None)
            latest[item.key] = item
        where, encoded = self._encoded
        self._encoded = (("", "", ""), {})
        if where != (host, store, user or ""):
            encoded = {}
        rows = []
        for item in latest.values():
            known = encoded.get(id(item))
            fresh = known is None or known[0] is not item
            rows.append(self._archive_row(host, store, user, item) if fresh else known[1])
        if not rows:
            return
        if absent:
            deletes = _Deletes([], None)
        else:
            # The items replaced: deleted by key, without reading first which of the keys are there.
            base, params = self._where(host=host, user=user or "", store=store)
            keys = list(latest)
            replaced = []
            for start in range(0, len(keys), KEYS_CHUNK):
                condition, bound = self.dialect.any_of("key", keys[start : start + KEYS_CHUNK])
                query = self.dialect.sql(f'DELETE FROM "prosodyarchive" WHERE {base} AND {condition}')
                replaced.append((query, [*params, *bound]))
            deletes = _Deletes(replaced, replaced)
        write = self._writer("prosodyarchive", host, store, user, deletes, rows)
        self._apply(_Held("prosodyarchive", host, store, user, write, deletes, rows))
        self._note_written((host, store, "archive", user), rows)

    def _archive_row(self, host: str, store: str, user: Optional[str], item: ArchiveItem) -> tuple[Any, ...]:
        try:
            type_, text = to_sql(item.value)
        except ProsodyMigrateError as exc:
            raise SqlEncodeError(
                f"cannot store host {host!r}, store {store!r}, user {user!r}, item {item.key!r} in "
                f"{self.dialect.describe()}: {exc}"
            ) from exc
        when = self._when(host, store, user, item)
        values = (host, user or "", store, when, item.with_ or "", item.key, type_, text)
        return self._row(host, store, user, "prosodyarchive", ARCHIVE_COLUMNS, values)

    def _when(self, host: str, store: str, user: Optional[str], item: ArchiveItem) -> int | float:
        """The time as the column takes it: an integer, or a float where SQLite keeps REAL."""
        when = item.when
        problem = None
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            problem = f"is a {type(when).__name__}, not a number"
        elif isinstance(when, float) and not math.isfinite(when):
            problem = "is not a finite number"
        elif isinstance(when, float) and not self.dialect.keeps_float_time:
            if when != int(when):
                problem = "has a fraction, which this integer column cannot hold (Prosody's own driver fails or rounds)"
            else:
                when = int(when)
        if problem is None:
            column = (self._schema or {}).get("prosodyarchive", {}).get("when")
            low, high = column.int_range if column and column.int_range else (-(2**63), 2**63 - 1)
            if not low <= when <= high:
                kind = column.type if column else "integer"
                problem = f"is outside the range of the existing {kind} column ({low}..{high})"
        if problem:
            raise SqlEncodeError(
                f"cannot store host {host!r}, store {store!r}, user {user!r} in {self.dialect.describe()}: "
                f"item {item.key!r}: time {when!r} {problem}"
            )
        return when

    # both kinds ------------------------------------------------------------------------------
    def store_empty(self, host: str, store: str, kind: str) -> bool:
        # Keyval and map stores share the prosody table; "" (host-level data) is a user like any other.
        table = "prosodyarchive" if kind == "archive" else "prosody"
        self._settle((table, host, store))
        return self._no_rows(table, host=host, store=store)

    def kinds_empty(self) -> frozenset[str]:
        self._settle()
        return frozenset(
            kind for table, kind in (("prosody", "keyval"), ("prosodyarchive", "archive")) if self._no_rows(table)
        )

    def _no_rows(self, table: str, **pairs: str) -> bool:
        """Whether the table holds no row matching ``pairs`` (no row at all, without); a missing table holds none."""
        if not self._has(table):
            return True
        where, params = self._where(**pairs)
        condition = f" WHERE {where}" if where else ""
        return not self._select(f'SELECT 1 FROM "{table}"{condition} LIMIT 1', params)

    # fingerprints ----------------------------------------------------------------------------
    def fingerprints(self, entries: Sequence[Entry]) -> dict[Entry, Optional[str]]:
        """A digest of the entry's rows (DIGEST_COLUMNS; an archive's in order), one query per
        KEYS_CHUNK users of a store: computed by the server (md5), or on SQLite3 here from the
        raw rows. None for an entry whose digest could not take in every row."""
        groups: dict[tuple[str, str, str], list[str]] = {}
        for host, store, kind, user in entries:
            groups.setdefault((host, store, kind), []).append(user or "")
        found: dict[tuple[str, str, str, str], Optional[str]] = {}
        for (host, store, kind), users in groups.items():
            table = "prosodyarchive" if kind == "archive" else "prosody"
            if not self._has(table):
                continue
            names = sorted(set(users))
            for start in range(0, len(names), KEYS_CHUNK):
                digests = self._digests(table, host, store, names[start : start + KEYS_CHUNK])
                found.update(((host, store, kind, user), digest) for user, digest in digests.items())
        return {e: found.get((e[0], e[1], e[2], e[3] or ""), ABSENT) for e in entries}

    def _digests(self, table: str, host: str, store: str, users: list[str]) -> dict[str, Optional[str]]:
        ordered = table == "prosodyarchive"
        query, params = self.dialect.digest_query(table, DIGEST_COLUMNS[table], ordered, host, store, users)
        query = self.dialect.sql(query)
        if not self.dialect.server_digest:
            return self._hash_rows(query, params)
        if self.dialect.digest_setup:
            self._select(self.dialect.digest_setup, [])
        rows = self._select(query, params, once=True)
        return {users[index]: f"sql {digest}" if complete and digest else None for index, digest, complete in rows}

    def _hash_rows(self, query: str, params: Sequence[Any]) -> dict[str, Optional[str]]:
        """Digests of the rows a query gives as (user, *columns), ordered by user: streamed, not kept."""
        conn = self._conn if self._batch is not None else self._connection()
        digests: dict[str, Optional[str]] = {}
        try:
            cur = conn.cursor()
            try:
                cur.execute(query, params)
                user, digest = None, hashlib.blake2b(digest_size=DIGEST_SIZE)
                for row in cur:
                    if row[0] != user:
                        if user is not None:
                            digests[self.dialect.read_text(user)] = "sql " + digest.hexdigest()
                        user, digest = row[0], hashlib.blake2b(digest_size=DIGEST_SIZE)
                    digest.update(row_bytes(row[1:]))
                if user is not None:
                    digests[self.dialect.read_text(user)] = "sql " + digest.hexdigest()
            finally:
                cur.close()
        except self.dialect.driver_errors() as exc:
            raise SqlDatabaseError(f"{self.dialect.describe()}: {self.dialect.reason(exc)}") from exc
        return digests

    def fingerprint_reads(self, entries: Sequence[Entry]) -> bool:
        # The same digest as for the rows written (digest_rows), here of the rows read: a first
        # run's copy reads every entry anyway, and the fingerprints' query read them a second time.
        self._reads_wanted, self._read_fps = frozenset(entries), {}
        return True

    def read_fingerprint(self, entry: Entry) -> Optional[str]:
        return self._read_fps.pop(entry, None)

    def track_writes(self) -> None:
        self._written = {}

    def written_fingerprints(self, entries: Sequence[Entry]) -> dict[Entry, Optional[str]]:
        """The fingerprints that ``fingerprints`` gives, computed here from the rows written
        (``keyval_set``/``archive_write``), no query: right for an entry whose last write replaced
        all of its rows and is durable, and exactly what was written, whatever happens to the rows
        after (a mismatch with the server's own digest would only mean a compare)."""
        if self._written is None:
            return dict.fromkeys(entries)
        written, self._written = self._written, {}
        return {e: written.get(e) for e in entries}

    def _note_written(self, entry: Entry, rows: list[tuple[Any, ...]]) -> None:
        if self._written is not None:
            archive = entry[2] == "archive"
            picked = map(_ARCHIVE_DIGESTED if archive else _KEYVAL_DIGESTED, rows)
            self._written[entry] = self.dialect.digest_rows(list(picked), archive)

    # discovery -------------------------------------------------------------------------------
    def check_source(self) -> None:
        # A server's database that is missing fails to connect; a SQLite3 file would read as empty.
        if not self.dialect.exists():
            raise SqlDatabaseError(f"{self.dialect.describe()} does not exist")

    def hosts(self) -> Iterator[str]:
        self._settle()
        found: set[str] = set()
        for table in REQUIRED:
            if self._has(table):
                found.update(
                    r[0] for r in self._select(f'SELECT DISTINCT {self.dialect.exact("host")} FROM "{table}"', [])
                )
        return iter(sorted(found))

    def stores(self, host: str) -> Iterator[tuple[str, str]]:
        # Prosody's map stores share the prosody table with keyval ones, so they list as keyval.
        keyval = [(s, "keyval") for s in self._distinct("store", "prosody", host=host)]
        archive = [(s, "archive") for s in self._distinct("store", "prosodyarchive", host=host)]
        return iter(sorted(keyval + archive))


_BINARY = frozenset((bytes, bytearray, memoryview))  # the types Dialect.read_text turns into text


def _preview(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")
