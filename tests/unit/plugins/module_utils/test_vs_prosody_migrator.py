# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Our ``prosody-migrator`` against the real ``/usr/bin/prosody-migrator``, on the same input and config.

A data directory written by real Prosody's storage code (tests/corpus/make_corpus.lua plus
vs_prosody_extras.lua, beside this file) is migrated by both tools with the very same config
file, Prosody's sample migrator.cfg.lua pointed at it: internal -> SQLite3, PostgreSQL, MariaDB,
and SQLite3 -> internal from the database the real migrator made. Both results are read as data
(raw SQL rows or parsed files, and through our backends) and must be equal, except for the
differences named in each test's ``DELIBERATE`` table: each is asserted, on both sides, where
it shows, then taken out before everything else is compared.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.compare import same_value
from ansible_collections.xmpp.prosody.plugins.module_utils.config import load_config
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import loads_dat, loads_list
from ansible_collections.xmpp.prosody.plugins.module_utils.sqlvalue import from_sql
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    fresh_mysql,
    fresh_postgresql,
    my_admin,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
REAL = "/usr/bin/prosody-migrator"
OURS = ROOT / "scripts" / "prosody-migrator"
SAMPLE = Path("/etc/prosody/migrator.cfg.lua")
HOST, MUC = "example.org", "conference.example.org"
SQL_DRIVERS = ("SQLite3", "PostgreSQL", "MySQL")

Item = tuple[str, Any, Any, str]  # key, when, with, value as data

# ---------------------------------------------------------------------------------------------
# running the tools


def lua_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_table(fields: dict[str, Any]) -> str:
    parts = [f"{k} = {v if isinstance(v, int) else lua_str(str(v))};" for k, v in fields.items()]
    return "{ " + " ".join(parts) + " }"


def write_config(path: Path, data_dir: Path, input_def: dict[str, Any], output_def: dict[str, Any]) -> Path:
    """Prosody's sample migrator.cfg.lua, its store lists kept, pointed at our hosts and stores."""
    sample = SAMPLE.read_text()
    head = sample[: sample.index("input {")].replace("example.com", HOST)
    head = head.replace("'/var/lib/prosody'", lua_str(str(data_dir)))
    hosts = f'hosts = {{ ["{HOST}"] = vhost; ["{MUC}"] = muc }};'
    text = head + f"input {{ {hosts} {lua_table(input_def)[2:]}\noutput {lua_table(output_def)}\n"
    path.write_text(text)
    return path


def run_real(config: Path, work: Path) -> subprocess.CompletedProcess[str]:
    # --root: run as root, Prosody's startup would otherwise switch to the prosody user, who
    # cannot reach pytest's temporary directories. --keep-going: without it the first failed
    # entry ends its run, and ours would then be compared with half a migration.
    env = {"HOME": str(work), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    args = [REAL, "--root", "--keep-going", "--config", str(config), "input", "output"]
    return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False)


def run_ours(config: Path, work: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(OURS), "--keep-going", "--config", str(config), "input", "output"]
    return subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 users x 10 messages and a MUC room, plus the cases where we differ on purpose."""
    data = tmp_path_factory.mktemp("corpus") / "data"
    for script, args in (
        (ROOT / "tests" / "corpus" / "make_corpus.lua", ["4", "10", "1"]),
        (HERE / "vs_prosody_extras.lua", []),
    ):
        subprocess.run(["lua5.4", str(script), str(data), *args], check=True, capture_output=True, timeout=60)
    return data


def stores_of(config: Path) -> dict[str, list[str]]:
    """host -> store specs ("roster", "archive-archive"), as the config lists them."""
    hosts = load_config(str(config))["input"]["hosts"]
    return {h: [s[k] for k in sorted(s)] if isinstance(s, dict) else list(s) for h, s in hosts.items()}


# ---------------------------------------------------------------------------------------------
# reading a result as data


def backend_view(params: dict[str, Any], stores: dict[str, list[str]]) -> dict[tuple, Any]:
    """Every entry the config's stores hold, read through our backend: keyval values, archive items
    (as (key, when, with, stanza) tuples, in order), and the items of pubsub and PEP nodes."""
    view: dict[tuple, Any] = {}
    with open_backend(params) as backend:

        def archive(host: str, store: str, user: str | None) -> None:
            items = [(i.key, i.when, i.with_, i.value) for i in backend.archive_items(host, store, user)]
            if items:
                view[("archive", host, store, user)] = items

        for host, specs in stores.items():
            for spec in specs:
                store, _sep, kind = spec.partition("-")
                if kind == "archive":
                    archive(host, store, None)
                    for user in sorted(backend.archive_users(host, store)):
                        archive(host, store, user)
                    continue
                for user in [None, *sorted(backend.keyval_users(host, store))]:
                    value = backend.keyval_get(host, store, user)
                    if value is None:
                        continue
                    view[("keyval", host, store, user)] = value
                    if store == "pubsub_nodes" and user is not None:
                        archive(host, "pubsub_" + user, None)
                    elif kind == "pubsub" and isinstance(value, dict):
                        for node in sorted(k for k in value if isinstance(k, str)):
                            archive(host, f"{store}_{node}", user)
    return view


def quote(driver: str, column: str) -> str:
    return f"`{column}`" if driver == "MySQL" else f'"{column}"'


@contextlib.contextmanager
def sql_cursor(params: dict[str, Any]) -> Iterator[Any]:
    driver = params["driver"]
    if driver == "SQLite3":
        import sqlite3

        conn = sqlite3.connect(params["database"])
        try:
            yield conn.cursor()
        finally:
            conn.close()
    elif driver == "PostgreSQL":
        import psycopg

        with psycopg.connect(host=params["host"], user=params["username"], dbname=params["database"]) as conn:
            yield conn.cursor()
    else:
        conn = my_admin(params["database"])
        try:
            yield conn.cursor()
        finally:
            conn.close()


def sql_rows(params: dict[str, Any]) -> tuple[dict[tuple, tuple[str, str]], dict[tuple, list[tuple]]]:
    """The raw rows: keyval (host, user, store, key) -> (type, text); archive (host, user, store) ->
    [(key, when, with, type, text)] in sort_id order."""

    def q(column: str) -> str:
        return quote(params["driver"], column)

    keyval: dict[tuple, tuple[str, str]] = {}
    archive: dict[tuple, list[tuple]] = {}
    with sql_cursor(params) as cur:
        cur.execute(
            f"SELECT {q('host')}, {q('user')}, {q('store')}, {q('key')}, {q('type')}, {q('value')} FROM prosody"
        )
        for host, user, store, key, type_, value in cur.fetchall():
            assert (host, user, store, key) not in keyval, f"duplicate row {(host, user, store, key)}"
            keyval[(host, user, store, key)] = (type_, value)
        columns = ", ".join(q(c) for c in ("host", "user", "store", "key", "when", "with", "type", "value"))
        cur.execute(f"SELECT {columns} FROM prosodyarchive ORDER BY {q('sort_id')}")
        for host, user, store, key, when, with_, type_, value in cur.fetchall():
            archive.setdefault((host, user, store), []).append((key, int(when), with_, type_, value))
    return keyval, archive


def same_row(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Two (type, text) values hold the same data: JSON key order, XML attribute order aside."""
    return a[0] == b[0] and same_value(from_sql(a[0], a[1], "a"), from_sql(b[0], b[1], "b"))


def same_items(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[:3] == y[:3] and same_row(x[3:], y[3:]) for x, y in zip(a, b))


def file_view(data: Path) -> dict[str, Any]:
    """Every data file under a directory, parsed: relative path -> value (or list of items)."""
    view: dict[str, Any] = {}
    for path in sorted(data.rglob("*")):
        # A name, not a suffix: the user "" is the file ".dat", which has no suffix.
        if path.name.endswith((".dat", ".list")):
            load = loads_dat if path.name.endswith(".dat") else loads_list
            view[str(path.relative_to(data))] = load(path.read_bytes(), str(path))
    return view


# ---------------------------------------------------------------------------------------------
# the comparison


class Difference:
    """One deliberate difference: where it shows, what the real migrator has there, what we have;
    ``field`` when it is one field of a table whose other fields must still be equal."""

    def __init__(
        self, where: Any, real: Callable[[Any], bool], ours: Callable[[Any], bool], field: str | None = None
    ) -> None:
        self.where, self.real, self.ours, self.field = where, real, ours, field


def settle(name: str, diffs: list[Difference], real: dict, ours: dict) -> None:
    """Assert each place of a named difference on both sides, then take it out of the comparison
    (the whole entry, or only its field)."""
    for diff in diffs:
        r, o = real.get(diff.where), ours.get(diff.where)
        assert diff.real(r), f"{name}: real migrator at {diff.where}: {r!r}"
        assert diff.ours(o), f"{name}: ours at {diff.where}: {o!r}"
        if diff.field is None:
            real.pop(diff.where, None), ours.pop(diff.where, None)
        else:
            for side in (real, ours):
                if side.get(diff.where) is not None:
                    side[diff.where] = {k: v for k, v in side[diff.where].items() if k != diff.field}


def assert_same(real: dict, ours: dict, equal: Callable[[Any, Any], bool], what: str) -> None:
    """Everything not named as deliberate is equal, entry by entry."""
    assert sorted(real, key=repr) == sorted(ours, key=repr), f"{what}: different entries"
    unequal = [k for k in real if not equal(real[k], ours[k])]
    assert not unequal, (
        f"{what}: undeclared differences at {unequal[:5]}: real {real[unequal[0]]!r}, ours {ours[unequal[0]]!r}"
    )


def absent(value: Any) -> bool:
    return value is None


def is_(expected: Any) -> Callable[[Any], bool]:
    return lambda value: value is not None and same_value(value, expected)


def source_items(corpus: Path, relative: str) -> list[Any]:
    return loads_list((corpus / relative).read_bytes(), relative)


def items_of(stanzas: list[Any]) -> list[tuple]:
    """A .list file's items as backend_view's tuples, for the items' key, when and with."""
    return [(s["key"], s["when"], s.get("with")) for s in stanzas]


def keys_when_with(expected: list[tuple]) -> Callable[[Any], bool]:
    return lambda items: items is not None and [tuple(i[:3]) for i in items] == expected


# ---------------------------------------------------------------------------------------------
# internal -> SQL

THIRD, SUM = 1 / 3, 0.1 + 0.2
PUBSUB_NODES = {"news": 2, "princely_musings": 3}


@contextlib.contextmanager
def fresh_sql(driver: str, work: Path, name: str) -> Iterator[dict[str, Any]]:
    if driver == "SQLite3":
        yield {"type": "sql", "driver": "SQLite3", "database": str(work / f"{name}.sqlite")}
        return
    fresh = fresh_postgresql if driver == "PostgreSQL" else fresh_mysql
    with contextlib.contextmanager(fresh)() as params:
        params = {"type": "sql", **params}
        params.pop("port", None)  # the default port, as the sample config would leave it
        yield params


def to_sql_deliberate(driver: str, corpus: Path) -> dict[str, tuple[list[Difference], list[Difference]]]:
    """name -> (differences in raw rows, differences through our backend)."""
    ws = source_items(corpus, "example%2eorg/archive/ws.list")
    nodes_rows = [
        Difference(("archive", HOST, "", f"pubsub_{n}"), absent, lambda v, c=c: v is not None and len(v) == c)
        for n, c in PUBSUB_NODES.items()
    ]
    nodes_view = [
        Difference(
            ("archive", HOST, f"pubsub_{n}", None),
            absent,
            keys_when_with(items_of(source_items(corpus, f"example%2eorg/pubsub_{n}.list"))),
        )
        for n in PUBSUB_NODES
    ]
    number = ("keyval", HOST, "numbers", "account_details")
    precision_rows = [
        Difference(
            (*number, "third"), lambda v: v == ("number", "0.33333333333333"), lambda v: from_sql(*v, "") == THIRD
        ),
        Difference((*number, "sum"), lambda v: v == ("number", "0.3"), lambda v: from_sql(*v, "") == SUM),
        Difference(
            (*number, "nested"),
            lambda v: from_sql(*v, "") == {"third": 0.33333333333333, "sum": 0.3, "whole": 1},
            lambda v: same_value(from_sql(*v, ""), {"third": THIRD, "sum": SUM, "whole": 1}),
        ),
    ]
    source_numbers = loads_dat((corpus / "example%2eorg/account_details/numbers.dat").read_bytes(), "numbers")
    precision_view = [
        Difference(
            ("keyval", HOST, "account_details", "numbers"),
            lambda v: v["third"] == 0.33333333333333 and v["nested"]["sum"] == 0.3,
            is_(source_numbers),
        )
    ]

    # The stanza as an XML parser reads the text Prosody writes: CR and CRLF become LF in text,
    # TAB and LF become spaces in an attribute value. Ours writes character references.
    def ws_real(v):
        return (
            v is not None
            and v[0][3].attr["id"] == "tab here line"
            and v[0][3].children[0].children == ["one\ntwo\nthree"]
        )

    ws_rows = [
        Difference(
            ("archive", HOST, "ws", "archive"),
            lambda v: "\r" in v[0][4] and "\t" in v[0][4],
            lambda v: "&#13;" in v[0][4] and "&#9;" in v[0][4] and "&#10;" in v[0][4],
        )
    ]
    ws_view = [Difference(("archive", HOST, "archive", "ws"), ws_real, keys_when_with(items_of(ws)))]
    ctrl = ("archive", HOST, "ctrl", "archive")

    def ctrl_keys(*keys: str) -> Callable[[Any], bool]:
        return lambda v: v is not None and [i[0] for i in v] == list(keys)

    ctrl_rows = [Difference(ctrl, ctrl_keys("ctrl-1"), ctrl_keys("ctrl-1", "ctrl-3"))]
    ctrl_view = [Difference(("archive", HOST, "archive", "ctrl"), ctrl_keys("ctrl-1"), ctrl_keys("ctrl-1", "ctrl-3"))]
    deliberate = {
        "pubsub service node items": (nodes_rows, nodes_view),
        "float precision": (precision_rows, precision_view),
        "XML whitespace (CR/CRLF in text, TAB/LF in attributes)": (ws_rows, ws_view),
        "control character: only that item is refused, not the rest of its archive": (ctrl_rows, ctrl_view),
    }
    if driver != "SQLite3":
        # Prosody creates "when" as a 32-bit INTEGER here: the insert fails and its migrator stops
        # that archive; ours creates BIGINT and keeps every item, at its time.
        future = items_of(source_items(corpus, "example%2eorg/archive/future.list"))
        deliberate["time past 2038"] = (
            [Difference(("archive", HOST, "future", "archive"), ctrl_keys("fut-1"), keys_when_with(future))],
            [Difference(("archive", HOST, "archive", "future"), ctrl_keys("fut-1"), keys_when_with(future))],
        )
    return deliberate


@pytest.mark.parametrize("driver", SQL_DRIVERS)
def test_internal_to_sql_matches_real_migrator(driver: str, corpus: Path, tmp_path: Path) -> None:
    with fresh_sql(driver, tmp_path, "real") as real_db, fresh_sql(driver, tmp_path, "ours") as our_db:
        source = {"type": "internal", "path": str(corpus)}
        real_cfg = write_config(tmp_path / "real.cfg.lua", corpus, source, real_db)
        our_cfg = write_config(tmp_path / "ours.cfg.lua", corpus, source, our_db)
        real = run_real(real_cfg, tmp_path)
        assert real.returncode == 0, real.stdout + real.stderr
        assert 'Error migrating data for user "ctrl"' in real.stdout + real.stderr
        assert ('Error migrating data for user "future"' in real.stdout + real.stderr) == (driver != "SQLite3")
        ours = run_ours(our_cfg, tmp_path)
        # The one failure we report: the archive holding a control character.
        assert ours.returncode == 1, ours.stdout + ours.stderr
        assert re.search(r"user ctrl: .*item 'ctrl-2'.*U\+0007", ours.stdout + ours.stderr), ours.stdout + ours.stderr
        real_kv, real_archive = sql_rows(real_db)
        our_kv, our_archive = sql_rows(our_db)
        real_rows = {("keyval", *k): v for k, v in real_kv.items()} | {
            ("archive", *k): v for k, v in real_archive.items()
        }
        our_rows = {("keyval", *k): v for k, v in our_kv.items()} | {("archive", *k): v for k, v in our_archive.items()}
        stores = stores_of(our_cfg)
        real_view, our_view = backend_view(real_db, stores), backend_view(our_db, stores)

    deliberate = to_sql_deliberate(driver, corpus)
    for name, (rows, view) in deliberate.items():
        settle(name, rows, real_rows, our_rows)
        settle(name, view, real_view, our_view)
    assert_same(
        real_rows,
        our_rows,
        lambda a, b: same_items(a, b) if isinstance(a, list) else same_row(a, b),
        f"{driver} rows",
    )
    assert_same(real_view, our_view, same_value, f"{driver} through our backend")


# ---------------------------------------------------------------------------------------------
# SQLite3 -> internal, from the database the real migrator made

NODE_ITEM = (
    "<item xmlns='http://jabber.org/protocol/pubsub' id='news-{0}'>"
    "<entry xmlns='http://www.w3.org/2005/Atom'><title>Post {0}</title></entry></item>"
)


def add_prosody_rows(database: str) -> None:
    """Rows as Prosody's SQL storage writes them that its migrator cannot have put there: a pubsub
    node's items (host-level archive pubsub_<node>) and a float 1.0 (tostring gives "1.0")."""
    import sqlite3

    conn = sqlite3.connect(database)
    with conn:
        conn.executemany(
            'INSERT INTO prosodyarchive (host, user, store, key, "when", "with", type, value)'
            " VALUES (?, '', 'pubsub_news', ?, ?, ?, 'xml', ?)",
            [(HOST, f"news-{i}", 1700100000 + i, f"admin@{HOST}", NODE_ITEM.format(i)) for i in (1, 2)],
        )
        conn.execute(
            "INSERT INTO prosody (host, user, store, key, type, value)"
            " VALUES (?, 'numbers', 'account_details', 'float_one', 'number', '1.0')",
            (HOST,),
        )
    conn.close()


def test_sqlite_to_internal_matches_real_migrator(corpus: Path, tmp_path: Path) -> None:
    source = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "source.sqlite")}
    made = run_real(
        write_config(tmp_path / "make.cfg.lua", corpus, {"type": "internal", "path": str(corpus)}, source), tmp_path
    )
    assert made.returncode == 0, made.stdout + made.stderr
    add_prosody_rows(source["database"])
    real_out, our_out = tmp_path / "real", tmp_path / "ours"
    real_cfg = write_config(tmp_path / "real.cfg.lua", real_out, source, {"type": "internal", "path": str(real_out)})
    our_cfg = write_config(tmp_path / "ours.cfg.lua", our_out, source, {"type": "internal", "path": str(our_out)})
    real = run_real(real_cfg, tmp_path)
    assert real.returncode == 0 and "error" not in real.stdout + real.stderr, real.stdout + real.stderr
    ours = run_ours(our_cfg, tmp_path)
    assert ours.returncode == 0, ours.stdout + ours.stderr

    real_files, our_files = file_view(real_out), file_view(our_out)
    stores = stores_of(our_cfg)
    real_view = backend_view({"type": "internal", "path": str(real_out)}, stores)
    our_view = backend_view({"type": "internal", "path": str(our_out)}, stores)
    numbers = "example%2eorg/account_details/numbers.dat"
    future = "example%2eorg/archive/future.list"
    wrapped = 4102444800 - 2**32  # the time read through 32 bits

    def when_of(*whens: int) -> Callable[[Any], bool]:
        return lambda items: items is not None and [i["when"] for i in items] == list(whens)

    def item_when(*whens: int) -> Callable[[Any], bool]:
        return lambda items: items is not None and [i[1] for i in items] == list(whens)

    news = [("news-1", 1700100001, f"admin@{HOST}"), ("news-2", 1700100002, f"admin@{HOST}")]

    def has(key: str, value: Any) -> Callable[[Any], bool]:
        return lambda v: v is not None and key in v and same_value(v[key], value)

    def lacks(key: str) -> Callable[[Any], bool]:
        return lambda v: v is not None and key not in v

    persistent = {f"room1@{MUC}": True}
    numbers_entry = ("keyval", HOST, "account_details", "numbers")
    deliberate = {
        "host data not duplicated as user ''": (
            [Difference("conference%2eexample%2eorg/persistent/.dat", is_(persistent), absent)],
            [Difference(("keyval", MUC, "persistent", ""), is_(persistent), absent)],
        ),
        "pubsub service node items": (
            [Difference("example%2eorg/pubsub_news.list", absent, lambda v: v is not None and len(v) == 2)],
            [Difference(("archive", HOST, "pubsub_news", None), absent, keys_when_with(news))],
        ),
        "false-valued key kept": (
            [Difference(numbers, lacks("disabled"), has("disabled", False), "disabled")],
            [Difference(numbers_entry, lacks("disabled"), has("disabled", False), "disabled")],
        ),
        # Prosody's file writer writes the float 1.0 as 1, which reads back as an integer.
        "integral float": (
            [Difference(numbers, has("float_one", 1), has("float_one", 1.0), "float_one")],
            [Difference(numbers_entry, has("float_one", 1), has("float_one", 1.0), "float_one")],
        ),
        "time past 2038": (
            [Difference(future, when_of(1700100000, wrapped, 1700100001), when_of(1700100000, 4102444800, 1700100001))],
            [
                Difference(
                    ("archive", HOST, "archive", "future"),
                    item_when(1700100000, wrapped, 1700100001),
                    item_when(1700100000, 4102444800, 1700100001),
                )
            ],
        ),
    }
    for name, (files, view) in deliberate.items():
        settle(name, files, real_files, our_files)
        settle(name, view, real_view, our_view)
    assert_same(real_files, our_files, same_value, "files")
    assert_same(real_view, our_view, same_value, "through our backend")
