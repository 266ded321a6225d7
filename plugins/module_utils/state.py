# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Skipping unchanged entries: what an earlier run found equal, and how to tell it still is.

A run that finds an entry (one user's value or archive, or the host-level one) equal on both
sides, or writes it and sees the batch holding the write made durable, records the pair of
fingerprints (``Backend.fingerprints``) the two sides had: the source's taken before the entry
was read, the destination's before it was read or, for one written, once the batch is durable
(``Backend.written_fingerprints``: on SQL, made from the rows written). A later run whose
fingerprints of the entry are that same pair skips it: neither side has changed since they were
known equal, so comparing them again would find nothing to write. A fingerprint changes whenever
the entry's content changes (a file's identity, size and times; a SQL digest of every row), so
any change on either side means a full compare of that entry.

The records live in a small SQLite database (``StateFile``) shared by the worker processes of a
run, each with its own connection, writing by turns in short transactions. It keeps SQLite's
rollback journal rather than WAL: a reader of a WAL database leaves ``-wal`` and ``-shm`` files
behind, and check mode writes nothing at all. Each record names the source and destination
(their definitions, less passwords and the ``hosts`` plan) and the engine (a digest of the code
that reads, compares and writes): records made under another name are never used, and a file
of another pair is emptied on first use. A state file that cannot be opened or written makes
the run warn and compare every entry; it never fails a migration.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .backends import backend_params
from .backends.base import ABSENT, Backend, Entry, WritesLost
from .errors import ProsodyMigrateError

FORMAT = 1  # of the state file; a file of another format is emptied on first use
APPLICATION_ID = 0x50524D53  # "PRMS" in the SQLite header: a file without it is not ours
BUSY_SECONDS = 30  # the workers of a run write the file by turns
LOOKUP_CHUNK = 400  # users per lookup query, under SQLite's limit on bound values
# Records gathered are saved this many at a time, and at the end of each store: each save is a
# transaction (a few fsyncs); a run killed before a save loses only those records (a compare each).
SAVE_RECORDS = 500
# The modules whose code decides what a run reads, compares and writes: any change to them
# (an upgrade of the collection) makes earlier records unusable.
_ENGINE_MODULES = (
    "engine",
    "compare",
    "luadata",
    "stanza",
    "sqlvalue",
    "prosody_json",
    "state",
    "backends.base",
    "backends.internal",
    "backends.sql",
    "backends.dialects",
    "backends.xep0227",
)
_PACKAGE = __name__.rsplit(".", 1)[0]


class StateError(ProsodyMigrateError):
    """The state file cannot be used; the run goes on comparing every entry."""


@dataclass(frozen=True)
class Record:
    """A pair of fingerprints known equal, with the archive counts the skipped entry reports:
    ``items`` (the source's items, all unchanged) and ``dst_items`` (the destination's, for the
    file store's quota warning); both 0 for keyval entries."""

    src: str
    dst: str
    items: int = 0
    dst_items: int = 0


# What ``Tracker.written`` gives the engine to keep with the batch: the entry, its record (the
# destination's fingerprint still to come) and whether the write replaced all of the entry.
Written = tuple[Entry, Record, bool]
# What ``Tracker.skip`` gives for an entry the source does not hold (its fingerprint is ABSENT):
# there is nothing to read, nothing to migrate.
NOTHING = Record(ABSENT, "")


# identity ------------------------------------------------------------------------------------
def describe_store(definition: Mapping[str, Any]) -> str:
    """A store definition as text, without its password and its ``hosts`` plan."""
    params = backend_params(definition)
    return repr(sorted((str(k), repr(v)) for k, v in params.items() if k not in ("password", "hosts")))


def pair_identity(source: Mapping[str, Any], destination: Mapping[str, Any]) -> str:
    return f"source {describe_store(source)}\ndestination {describe_store(destination)}"


def engine_digest() -> str:
    """A digest of the engine's code; a random one (nothing recorded is ever used) when unreadable."""
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for name in _ENGINE_MODULES:
        qualified = f"{_PACKAGE}.{name}"
        try:
            spec = importlib.util.find_spec(qualified)
            source = spec.loader.get_source(qualified) if spec and spec.loader else None  # type: ignore[union-attr]
        except (ImportError, OSError, AttributeError, ValueError):
            source = None
        if source is None:
            return "unknown-" + secrets.token_hex(8)
        if isinstance(source, str):  # Ansible's collection loader gives bytes, importlib text
            source = source.encode("utf-8", "surrogateescape")
        digest.update(qualified.encode() + b"\0" + source + b"\0")
    return digest.hexdigest()


def default_path(source: Mapping[str, Any], destination: Mapping[str, Any]) -> str:
    """``$XDG_STATE_HOME/xmpp-prosody/<digest of the pair>.sqlite`` (``~/.local/state`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    name = hashlib.sha256(pair_identity(source, destination).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return os.path.join(base, "xmpp-prosody", f"{name}.sqlite")


# the file ------------------------------------------------------------------------------------
def _blob(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _who(user: Optional[str]) -> bytes:
    """A user as the file keeps it: host-level data and each user apart, any name allowed."""
    return b"h" if user is None else b"u" + _blob(user)


class StateFile:
    """The state database; ``writable`` False opens it read-only (check mode). StateError when
    it cannot be used."""

    def __init__(self, path: str, identity: str, writable: bool) -> None:
        self.path, self.writable = path, writable
        self.ident = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self._conn: Optional[sqlite3.Connection] = None
        try:
            self._open()
        except sqlite3.Error as exc:
            self.close()
            raise StateError(f"state file {path}: {exc}") from None
        except OSError as exc:
            self.close()
            raise StateError(f"state file {path}: {exc.strerror or exc}") from None

    def _open(self) -> None:
        if self.writable:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, 0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            os.close(fd)
            conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        else:
            uri = "file:" + _quote(os.path.abspath(self.path)) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_SECONDS, isolation_level=None)
        self._conn = conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_SECONDS * 1000}")
        # One transaction around the checks and the setting up: a worker opening the file while
        # another creates it sees all of that or none of it.
        conn.execute("BEGIN IMMEDIATE" if self.writable else "BEGIN")
        try:
            self._set_up(conn)
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):  # the error at hand says more than a failed rollback
                conn.execute("ROLLBACK")
            raise

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """Check that the file is a state file (or a new one), and make it one of this identity."""
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id != APPLICATION_ID and tables:
            raise StateError(f"state file {self.path} is a database of something else; it is left alone")
        if not self.writable:
            if "entries" not in tables:
                raise StateError(f"state file {self.path} holds no state")
            return  # the records of another identity are never looked up
        if application_id != APPLICATION_ID:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS entries (ident TEXT NOT NULL, host BLOB NOT NULL, store BLOB NOT NULL, "
            "kind TEXT NOT NULL, who BLOB NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, items INTEGER NOT NULL, "
            "dst_items INTEGER NOT NULL, PRIMARY KEY (host, store, kind, who)) WITHOUT ROWID"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'ident'").fetchone()
        if row is None or row[0] != self.ident:
            # Another pair, format or engine: its records are of no use here.
            conn.execute("DELETE FROM entries WHERE ident <> ?", (self.ident,))
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ident', ?)", (self.ident,))

    def lookup(self, host: str, store: str, kind: str, users: Sequence[Optional[str]]) -> dict[Optional[str], Record]:
        """The records of one store's entries (those it has)."""
        conn = self._connection()
        found: dict[Optional[str], Record] = {}
        by_who = {_who(user): user for user in users}
        whos = list(by_who)
        try:
            for start in range(0, len(whos), LOOKUP_CHUNK):
                chunk = whos[start : start + LOOKUP_CHUNK]
                rows = conn.execute(
                    "SELECT who, src, dst, items, dst_items FROM entries WHERE host = ? AND store = ? AND kind = ? "
                    f"AND ident = ? AND who IN ({', '.join('?' * len(chunk))})",
                    (_blob(host), _blob(store), kind, self.ident, *chunk),
                ).fetchall()
                for who, src, dst, items, dst_items in rows:
                    found[by_who[bytes(who)]] = Record(src, dst, items, dst_items)
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from None
        return found

    def record(self, records: Iterable[tuple[Entry, Record]]) -> None:
        """Store records, in one short transaction."""
        rows = [
            (self.ident, _blob(host), _blob(store), kind, _who(user), r.src, r.dst, r.items, r.dst_items)
            for (host, store, kind, user), r in records
        ]
        if not rows:
            return
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"state file {self.path} is closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path)


def open_state(
    path: str, source: Mapping[str, Any], destination: Mapping[str, Any], writable: bool
) -> Optional[StateFile]:
    """The state file for this pair; None when read-only and there is none yet. StateError when unusable."""
    if not writable and not os.path.exists(path):
        return None
    identity = f"{pair_identity(source, destination)}\nengine {engine_digest()}"
    return StateFile(path, identity, writable)


# the engine's side -----------------------------------------------------------------------------
class Tracker:
    """Which of the entries ahead to skip, and what to record once they are known equal.

    The engine calls ``plan`` with the entries it is about to copy (a run of one store's users),
    ``skip`` as it comes to each, ``equal`` for one found equal, ``written`` for one written
    (kept with the batch), ``flushed`` with the batch's once it is durable, and ``save`` at each
    batch's end. Any trouble with the state or a fingerprint is warned of once and ends the
    skipping and recording for the rest of the run; the entries are then compared as ever.
    """

    def __init__(self, state: StateFile, src: Backend, dst: Backend, warn: Callable[[str], None]) -> None:
        self.state, self.src, self.dst, self.warn = state, src, dst, warn
        self.recording = state.writable
        if self.recording:
            dst.track_writes()
        self._src_fp: dict[Entry, str] = {}  # taken before the entry is read
        self._dst_fp: dict[Entry, str] = {}  # taken before the entry is read, where planned
        self._skip: dict[Entry, Record] = {}
        self._found: list[tuple[Entry, Record]] = []  # found equal, to save

    @property
    def active(self) -> bool:
        return self.state is not None

    def _stop(self, why: str) -> None:
        self.warn(f"{why}; the rest of this run compares every entry (no skipping of unchanged entries)")
        self.state.close()
        self.state = None  # type: ignore[assignment]
        self._src_fp, self._dst_fp, self._skip, self._found = {}, {}, {}, []
        self.src.fingerprint_reads(())

    def plan(self, host: str, store: str, kind: str, users: Sequence[Optional[str]], dst_may_hold: bool) -> None:
        """Fingerprint entries about to be copied and decide which to skip.

        ``dst_may_hold`` False (the destination's store was empty as it began) spares the
        destination's fingerprints when nothing is recorded: none of those entries can be found
        equal. An entry the source does not hold is skipped too (as reading it would find nothing
        to migrate). A user "" is left out: SQL keeps host-level data under that name.
        WritesLost from the destination's query is passed on: the engine's batch is gone.
        """
        if not self.active:
            return
        entries = [(host, store, kind, user) for user in users if user != ""]
        if not entries:
            return
        try:
            records = self.state.lookup(host, store, kind, [e[3] for e in entries])
            if not records and not dst_may_hold and self.src.fingerprint_reads(entries):
                # Nothing recorded and nothing at the destination: nothing to skip or compare, so
                # the source's fingerprints can wait for the copy's own reads (written()).
                return
            self.src.fingerprint_reads(())
            src = self.src.fingerprints(entries)
            candidates = [e for e in entries if e[3] in records and _usable(src.get(e)) and src[e] == records[e[3]].src]
            wanted = candidates
            if dst_may_hold and self.recording:
                wanted = [e for e in entries if _usable(src.get(e))]
            dst = self.dst.fingerprints(wanted) if wanted else {}
        except WritesLost:
            raise
        except ProsodyMigrateError as exc:
            self._stop(f"cannot tell unchanged entries apart ({exc})")
            return
        for entry in entries:
            fp = src.get(entry)
            if fp == ABSENT:
                self._skip[entry] = NOTHING
            elif fp is not None:
                self._src_fp[entry] = fp
            if _usable(dst.get(entry)):
                self._dst_fp[entry] = dst[entry]  # type: ignore[assignment]
        for entry in candidates:
            if _usable(dst.get(entry)) and dst[entry] == records[entry[3]].dst:
                self._skip[entry] = records[entry[3]]

    def skip(self, entry: Entry) -> Optional[Record]:
        """The record of an entry to skip (planned, both fingerprints as recorded), NOTHING for
        one the source does not hold, else None."""
        record = self._skip.pop(entry, None)
        if record is not None:
            self._src_fp.pop(entry, None)
            self._dst_fp.pop(entry, None)
        return record

    def equal(self, entry: Entry, items: int = 0, dst_items: int = 0) -> None:
        """The entry was found equal: recorded (at the next ``save``) with the planned fingerprints."""
        src = self._src_fp.pop(entry, None) or self.src.read_fingerprint(entry)
        dst = self._dst_fp.pop(entry, None)
        if self.recording and src is not None and dst is not None:
            self._found.append((entry, Record(src, dst, items, dst_items)))

    def written(self, entry: Entry, whole: bool, items: int = 0, dst_items: int = 0) -> Optional[Written]:
        """The entry was written (``whole``: all its content, nothing of it kept): what to record
        once its batch is durable (the destination's fingerprint left to ``flushed``), or None."""
        src = self._src_fp.pop(entry, None) or self.src.read_fingerprint(entry)
        self._dst_fp.pop(entry, None)
        if not self.recording or src is None:
            return None
        return entry, Record(src, "", items, dst_items), whole

    def failed(self, entry: Entry) -> None:
        """Nothing is recorded for the entry (a failure, or items the destination cannot hold)."""
        self._src_fp.pop(entry, None)
        self._dst_fp.pop(entry, None)
        self.src.read_fingerprint(entry)

    def flushed(self, written: Sequence[Written]) -> None:
        """The batch holding these writes is durable: record them with the destination's
        fingerprints now, from what was written when the backend can tell, else read back (one
        query per store and KEYS_CHUNK users on SQL)."""
        if not self.active:
            return
        try:
            dst = self.dst.written_fingerprints([entry for entry, _record, whole in written if whole])
            rest = [entry for entry, _record, _whole in written if not _usable(dst.get(entry))]
            if rest:
                dst.update(self.dst.fingerprints(rest))
        except ProsodyMigrateError as exc:
            self._stop(f"cannot fingerprint what was written ({exc})")
            return
        for entry, record, _whole in written:
            fp = dst.get(entry)
            if _usable(fp):
                self._found.append((entry, Record(record.src, fp, record.items, record.dst_items)))  # type: ignore[arg-type]

    def lost(self) -> None:
        """The batch's writes are gone: forget what the backend noted of them."""
        if self.active:
            self.dst.written_fingerprints(())

    def save(self, force: bool = True) -> None:
        """Write the records gathered since the last save (unforced: once there are SAVE_RECORDS)."""
        if not self.active or not self._found or (not force and len(self._found) < SAVE_RECORDS):
            return
        found, self._found = self._found, []
        try:
            self.state.record(found)
        except StateError as exc:
            self._stop(str(exc))

    def forget(self) -> None:
        """Drop what was planned and not used (a store is done)."""
        self.src.fingerprint_reads(())
        self._src_fp.clear()
        self._dst_fp.clear()
        self._skip.clear()

    def close(self) -> None:
        if self.active:
            self.state.close()


def _usable(fp: Optional[str]) -> bool:
    """Whether a fingerprint can stand in a record: known, and not that of an absent entry."""
    return fp is not None and fp != ABSENT
