# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend.fingerprints: a token per entry that stays while the entry's content stays and changes
with any change to it, made by this tool, by Prosody's own code, or behind both (an UPDATE, an
edit in place); ABSENT for an entry that is not there, None where the backend cannot tell."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import dialects, open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ABSENT, ArchiveItem, Entry
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import KEYS_CHUNK, SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.xep0227 import Xep0227Backend
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.test_sql import (
    ROSTER,
    prosody,
)

HOST = "example.com"


def message(key: str, body: str = "hi") -> Element:
    return Element("message", {"xmlns": "jabber:client", "id": key}, [Element("body", {}, [body])])


def items(*keys: str, when: int | float = 1700000000, peer: str | None = "bob@example.net") -> list[ArchiveItem]:
    return [ArchiveItem(key, message(key), when + i, peer) for i, key in enumerate(keys)]


def fp(backend: Any, store: str, kind: str, user: str | None) -> str | None:
    entry: Entry = (HOST, store, kind, user)
    return backend.fingerprints([entry])[entry]


def sql_execute(backend: SqlBackend, statement: str, **where: str) -> None:
    """A statement ``... WHERE <where>`` run behind the backend's back, as a DBA would."""
    condition, params = backend._where(**where)
    with backend._tx() as cur:
        cur.execute(backend.dialect.sql(statement.format(where=condition)), params)


# SQL -----------------------------------------------------------------------------------------
@pytest.fixture
def sql(sql_params: dict[str, Any]) -> Any:
    backend = SqlBackend(sql_params)
    backend.keyval_set(HOST, "roster", "alice", ROSTER)
    backend.keyval_set(HOST, "roster", None, {"host": "level"})
    backend.archive_write(HOST, "archive", "alice", items("a1", "a2", "a3"))
    yield backend
    backend.close()


def test_sql_tokens_stay_while_the_rows_stay(sql: SqlBackend, sql_params: dict[str, Any]) -> None:
    entries: list[Entry] = [
        (HOST, "roster", "keyval", "alice"),
        (HOST, "roster", "keyval", None),
        (HOST, "archive", "archive", "alice"),
        (HOST, "roster", "keyval", "nobody"),
        (HOST, "archive", "archive", None),
        ("other.example", "roster", "keyval", "alice"),
    ]
    first = sql.fingerprints(entries)
    assert [first[e] == ABSENT for e in entries] == [False, False, False, True, True, True]
    assert len({first[e] for e in entries[:3]}) == 3 and all(first[e] for e in entries[:3])
    with SqlBackend(sql_params) as again:  # another connection, the same rows: the same tokens
        assert again.fingerprints(entries) == first
    # Rewritten with the same content: the same tokens (new rows, new sort_ids, same order).
    sql.keyval_set(HOST, "roster", "alice", ROSTER)
    sql.archive_write(HOST, "archive", "alice", items("a1", "a2", "a3"))
    assert sql.fingerprints(entries) == first


@pytest.mark.parametrize(
    ("change", "entry"),
    [
        ("keyval value", (HOST, "roster", "keyval", "alice")),
        ("keyval key added", (HOST, "roster", "keyval", "alice")),
        ("host-level value", (HOST, "roster", "keyval", None)),
        ("item replaced", (HOST, "archive", "archive", "alice")),
        ("item moved to the end", (HOST, "archive", "archive", "alice")),
        ("item appended", (HOST, "archive", "archive", "alice")),
        ("value updated in place", (HOST, "archive", "archive", "alice")),
        ("time updated in place", (HOST, "archive", "archive", "alice")),
        ("peer updated in place", (HOST, "archive", "archive", "alice")),
        ("type updated in place", (HOST, "roster", "keyval", "alice")),
        ("row deleted", (HOST, "archive", "archive", "alice")),
    ],
)
def test_sql_tokens_change_with_the_content(sql: SqlBackend, change: str, entry: Entry) -> None:
    untouched: list[Entry] = [(HOST, "roster", "keyval", "alice"), (HOST, "archive", "archive", "alice")]
    untouched = [e for e in untouched if e != entry]
    before = sql.fingerprints([entry, *untouched])
    if change == "keyval value":
        sql.keyval_set(HOST, "roster", "alice", {**ROSTER, "bob@example.net": {"name": "Bobby"}})
    elif change == "keyval key added":
        sql.keyval_set(HOST, "roster", "alice", {**ROSTER, "dave@example.net": {"name": "Dave"}})
    elif change == "host-level value":
        sql.keyval_set(HOST, "roster", None, {"host": "level", "more": 1})
    elif change == "item replaced":
        sql.archive_write(HOST, "archive", "alice", [ArchiveItem("a2", message("a2", "changed"), 1700000001)])
    elif change == "item moved to the end":
        sql.archive_write(HOST, "archive", "alice", items("a1"))  # same item, now after a3
    elif change == "item appended":
        sql.archive_write(HOST, "archive", "alice", items("a4"))
    elif change == "value updated in place":
        sql_execute(sql, 'UPDATE "prosodyarchive" SET "value" = \'<x/>\' WHERE {where}', user="alice", key="a2")
    elif change == "time updated in place":
        sql_execute(sql, 'UPDATE "prosodyarchive" SET "when" = "when" + 1 WHERE {where}', user="alice", key="a2")
    elif change == "peer updated in place":
        sql_execute(sql, 'UPDATE "prosodyarchive" SET "with" = \'\' WHERE {where}', user="alice", key="a2")
    elif change == "type updated in place":
        sql_execute(sql, 'UPDATE "prosody" SET "type" = \'string\' WHERE {where}', user="alice", key="bob@example.net")
    else:
        sql_execute(sql, 'DELETE FROM "prosodyarchive" WHERE {where}', user="alice", key="a3")
    after = sql.fingerprints([entry, *untouched])
    assert after[entry] not in (before[entry], None, ABSENT)
    assert [after[e] for e in untouched] == [before[e] for e in untouched]


def test_sql_tokens_change_with_prosodys_own_writes(sql: SqlBackend, sql_params: dict[str, Any]) -> None:
    entries: list[Entry] = [(HOST, "roster", "keyval", "alice"), (HOST, "archive", "archive", "alice")]
    before = sql.fingerprints(entries)
    prosody(
        sql_params,
        [
            {"op": "kv_set", "host": HOST, "store": "roster", "user": "alice", "value": {"x@example.net": {}}},
            {"op": "append", "host": HOST, "store": "archive", "user": "alice", "key": "p1", "xml": "<m/>", "when": 5},
        ],
    )
    after = sql.fingerprints(entries)
    assert all(after[e] not in (before[e], None, ABSENT) for e in entries)


def test_sql_names_apart_that_the_collation_puts_together(sql: SqlBackend) -> None:
    """'alice' and 'alice ' are two users (MySQL's utf8mb4_bin pads), as are 'Alice' and 'alice'."""
    sql.keyval_set(HOST, "roster", "alice ", {"other": "value"})
    sql.keyval_set(HOST, "roster", "Alice", {"third": "value"})
    entries: list[Entry] = [(HOST, "roster", "keyval", u) for u in ("alice", "alice ", "Alice", "ALICE")]
    tokens = sql.fingerprints(entries)
    assert tokens[entries[3]] == ABSENT
    assert len({tokens[e] for e in entries[:3]}) == 3
    assert tokens[entries[0]] == fp(sql, "roster", "keyval", "alice")


def test_sql_many_users_and_long_archives(sql: SqlBackend) -> None:
    """More users than one query takes (KEYS_CHUNK), and an archive past MySQL's default
    group_concat_max_len (1024 characters, 32 rows): every token complete, a change at the end seen."""
    users = [f"u{i:04d}" for i in range(KEYS_CHUNK + 20)]
    for user in users:
        sql.keyval_set(HOST, "vcard", user, {"fn": user})
    entries: list[Entry] = [(HOST, "vcard", "keyval", u) for u in users]
    tokens = sql.fingerprints(entries)
    assert len(set(tokens.values())) == len(users) and ABSENT not in tokens.values() and None not in tokens.values()
    keys = [f"k{i:03d}" for i in range(300)]
    sql.archive_write(HOST, "archive", "bob", items(*keys))
    before = fp(sql, "archive", "archive", "bob")
    sql.archive_write(HOST, "archive", "bob", [ArchiveItem(keys[-1], message(keys[-1], "new"), 1800000000)])
    assert fp(sql, "archive", "archive", "bob") not in (before, None, ABSENT)


def test_sql_times_of_another_type_are_told_apart(sqlite_params: dict[str, Any]) -> None:
    """SQLite keeps a REAL time: two times one bit apart (alike in SQLite's 15 digits), and 2 and 2.5, differ."""
    with SqlBackend(sqlite_params) as backend:
        tokens = set()
        for when in (1700000000.25, math.nextafter(1700000000.25, 2e9), 2, 2.5):
            backend.archive_write(HOST, "archive", "carol", [ArchiveItem("k", message("k"), when)])
            tokens.add(fp(backend, "archive", "archive", "carol"))
        assert len(tokens) == 4


def test_sql_names_that_are_not_utf8(sqlite_params: dict[str, Any]) -> None:
    user = b"caf\xff".decode("utf-8", "surrogateescape")
    with SqlBackend(sqlite_params) as backend:
        backend.keyval_set(HOST, "roster", user, {"a": "b"})
        backend.keyval_set(HOST, "roster", "caf", {"a": "b"})
        token = fp(backend, "roster", "keyval", user)
        assert token not in (None, ABSENT) and token == fp(backend, "roster", "keyval", "caf")  # same content
        backend.keyval_set(HOST, "roster", user, {"a": "c"})
        assert fp(backend, "roster", "keyval", user) != fp(backend, "roster", "keyval", "caf")


def test_sql_database_not_created_yet(tmp_path: Any) -> None:
    with SqlBackend({"driver": "SQLite3", "database": str(tmp_path / "none.sqlite")}) as backend:
        assert fp(backend, "roster", "keyval", "alice") == ABSENT
    assert not os.path.exists(tmp_path / "none.sqlite")


# the file store ------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path: Any) -> InternalBackend:
    backend = InternalBackend({"path": str(tmp_path / "data")})
    backend.keyval_set(HOST, "roster", "alice", ROSTER)
    backend.archive_write(HOST, "archive", "alice", items("a1", "a2"))
    return backend


def test_file_tokens(files: InternalBackend) -> None:
    roster = files._file(HOST, "roster", "alice", b".dat")
    archive = files._file(HOST, "archive", "alice", b".list")
    first = fp(files, "roster", "keyval", "alice"), fp(files, "archive", "archive", "alice")
    assert None not in first and ABSENT not in first and first[0] != first[1]
    assert (fp(files, "roster", "keyval", "alice"), fp(files, "archive", "archive", "alice")) == first
    assert fp(files, "roster", "keyval", None) == ABSENT
    assert fp(files, "archive", "keyval", "alice") == ABSENT  # a keyval entry is the .dat file
    assert fp(files, "nothing", "archive", "bob") == ABSENT

    # Rewritten with the same bytes (a rename, as Prosody's datamanager does): a new token all the same.
    files.keyval_set(HOST, "roster", "alice", ROSTER)
    assert fp(files, "roster", "keyval", "alice") != first[0]
    # An append in place, as Prosody's archive does.
    before = fp(files, "archive", "archive", "alice")
    with open(archive, "rb") as f:
        data = f.read()
    with open(archive, "ab") as f:
        f.write(data[: data.index(b"\n") + 1])
    assert fp(files, "archive", "archive", "alice") != before
    # Edited in place, same size, its times put back: the inode's change time still tells (a
    # tick of the kernel's file clock later than the last change: docs/guarantees.md).
    time.sleep(0.05)
    before = fp(files, "roster", "keyval", "alice")
    st = os.stat(roster)
    with open(roster, "r+b") as f:
        data = f.read()
        f.seek(data.index(b"Bob"))
        f.write(b"Rob")
    os.utime(roster, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(roster).st_size == st.st_size
    assert fp(files, "roster", "keyval", "alice") != before


def test_file_token_of_what_is_not_a_file(files: InternalBackend) -> None:
    os.makedirs(files._file(HOST, "roster", "dir", b".dat"))
    assert fp(files, "roster", "keyval", "dir") is None
    assert fp(files, "roster", "keyval", "") == ABSENT  # "<store>/.dat", which does not exist
    # An empty host name cannot be stored: no token, not an error.
    assert files.fingerprints([("", "roster", "keyval", "alice")]) == {("", "roster", "keyval", "alice"): None}


def test_missing_data_directory(tmp_path: Any) -> None:
    backend = InternalBackend({"path": str(tmp_path / "missing")})
    assert fp(backend, "roster", "keyval", "alice") == ABSENT


# XEP-0227 ------------------------------------------------------------------------------------
def test_xep0227_cannot_tell(tmp_path: Any) -> None:
    backend = open_backend({"type": "xep0227", "path": str(tmp_path / "xep0227")})
    assert isinstance(backend, Xep0227Backend)
    assert fp(backend, "roster", "keyval", "alice") is None


def test_sql_fingerprints_of_what_was_written_are_the_servers(sql_params: dict[str, Any]) -> None:
    """written_fingerprints computes, from the rows written, the digest that the server's query
    (or on SQLite3 the backend's hashing of the rows read back) gives: a first run need not read
    back what it wrote."""
    odd = "Ünï 雪 🙂 a'b\"c;%_\\ "
    values = {
        "roster": ROSTER,
        "vcard": {"fn": odd, "": "empty key", 1: "first", 2.5: {"t": True, "n": -1.5}},
        "blocklist": {f"user{i}@example.net": True for i in range(80)},  # many rows, sorted by their digests
    }
    archives = {
        "alice": items("a1", "a2", "a3"),
        "bob": [ArchiveItem("b1", message("b1", odd), 1700000000, None), ArchiveItem("", message(""), 0, "")],
    }
    if sql_params["driver"] == "SQLite3":
        values["private"] = {b"caf\xff".decode("utf-8", "surrogateescape"): "not UTF-8"}
        archives["carol"] = [ArchiveItem("c1", message("c1"), 1700000000.0), ArchiveItem("c2", message("c2"), 2.5)]
    with SqlBackend(sql_params) as backend:
        backend.track_writes()
        backend.start_batch()
        entries: list[Entry] = []
        for store, value in values.items():
            for user in ("alice", None):
                backend.keyval_set(HOST, store, user, value)
                entries.append((HOST, store, "keyval", user))
        for user, written in archives.items():
            backend.archive_write(HOST, "archive", user, written)
            entries.append((HOST, "archive", "archive", user))
        backend.flush()
        computed = backend.written_fingerprints(entries)
        assert computed == backend.fingerprints(entries)
        assert None not in computed.values() and len(set(computed.values())) == len(values) + len(archives)
        assert backend.written_fingerprints(entries) == dict.fromkeys(entries)  # each call forgets


def _rows_read(backend: SqlBackend) -> int:
    cur = backend._connection().cursor()
    cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_rnd_next')")
    return sum(int(value) for _name, value in cur.fetchall())


@pytest.mark.parametrize("seed", ["hosts", "one user"])
def test_mysql_digests_read_only_the_users_asked_for(mysql_params: dict[str, Any], seed: str) -> None:
    """A digest query looks up each user's rows, whatever the table's statistics say (here taken
    when a host held a row or two, or when one user's rows were all the table, and kept): with
    "user" IN (...), MariaDB once read every row of the host for each query of 200 users when its
    statistics were stale after a bulk load, and a second run over 10,000 users took 0.75x of the
    first; with SELECT STRAIGHT_JOIN and the second statistics, it read the table first, 0.96x."""
    with SqlBackend(mysql_params) as backend:
        backend.start_batch()
        if seed == "hosts":  # statistics taken now say a host has a row or two
            for n in range(2000):
                backend.keyval_set(f"host{n}.example", "vcard", "seed", {"fn": "Seed"}, absent=True)
        else:  # ... or that a user has thousands
            backend.keyval_set(HOST, "private", "seed", {f"k{n}": f"v{n}" for n in range(5000)}, absent=True)
        backend.flush()
        cur = backend._connection().cursor()
        cur.execute('ANALYZE TABLE "prosody"')
        cur.fetchall()
        cur.execute('ALTER TABLE "prosody" STATS_AUTO_RECALC = 0')  # and stay so
        backend.start_batch()
        for n in range(6000):
            backend.keyval_set(HOST, "vcard", f"user{n:04d}", {"fn": f"User {n}"}, absent=True)
        users = [f"user{n:04d}" for n in range(0, 400, 2)]
        for user in users:
            backend.keyval_set(HOST, "roster", user, ROSTER, absent=True)
        backend.flush()
        entries: list[Entry] = [(HOST, "roster", "keyval", user) for user in users]
        before = _rows_read(backend)
        found = backend.fingerprints(entries)
        read = _rows_read(backend) - before
    assert all(found[entry] not in (None, ABSENT) for entry in entries)
    # The users' 600 rows and the query's own temporary tables, not the host's 6,600.
    assert read < 3000, f"{read} rows read for the {len(users) * len(ROSTER)} rows of {len(users)} users"


def test_mysql_digest_cut_short_is_no_token(mysql_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A user whose rows' digests do not all fit in GROUP_CONCAT (32 characters a row) gets no
    token, so the entry is compared; the others keep theirs."""
    with SqlBackend(mysql_params) as backend:
        backend.archive_write(HOST, "archive", "long", items(*(f"k{i:03d}" for i in range(40))))
        backend.archive_write(HOST, "archive", "short", items("a", "b"))
        whole = backend.fingerprints([(HOST, "archive", "archive", u) for u in ("long", "short")])
        monkeypatch.setattr(dialects.MySQL, "digest_setup", "SET SESSION group_concat_max_len = 1024")
        cut = backend.fingerprints([(HOST, "archive", "archive", u) for u in ("long", "short")])
    assert None not in whole.values() and ABSENT not in whole.values()
    assert cut == {
        (HOST, "archive", "archive", "long"): None,
        (HOST, "archive", "archive", "short"): whole[(HOST, "archive", "archive", "short")],
    }


def test_mysql_digests_without_prosodys_indexes(mysql_params: dict[str, Any]) -> None:
    """The digest query names Prosody's index only where the table has it: without (a DBA dropped
    it), the same tokens, read the slow way."""
    entries: list[Entry] = [(HOST, "archive", "archive", "alice"), (HOST, "roster", "keyval", "alice")]
    with SqlBackend(mysql_params) as backend:
        backend.archive_write(HOST, "archive", "alice", items("a1", "a2"))
        backend.keyval_set(HOST, "roster", "alice", ROSTER)
        assert {("prosody", "prosody_index"), ("prosodyarchive", "prosodyarchive_index")} <= backend.dialect.indexes
        with_indexes = backend.fingerprints(entries)
        cur = backend._connection().cursor()
        for table in ("prosody", "prosodyarchive"):
            cur.execute(f'DROP INDEX "{table}_index" ON "{table}"')
    with SqlBackend(mysql_params) as backend:
        assert not {("prosody", "prosody_index"), ("prosodyarchive", "prosodyarchive_index")} & backend.dialect.indexes
        assert backend.fingerprints(entries) == with_indexes
    assert None not in with_indexes.values() and ABSENT not in with_indexes.values()
