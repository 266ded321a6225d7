# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secrets: account secrets and database passwords never reach a report, a diff, a log line, an
error message or an exception's text, in runs that succeed and in runs that fail; and the files
the tool creates that can hold them are not readable by others."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import traceback
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import cli
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, Report, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    MY,
    PG,
    fresh_database,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.reliability import (
    HOST,
    make_corpus,
)

PLAIN = "Plain-Passw0rd-of-alice-1234"
NUL_PASSWORD = "Nul-Passw0rd-\x00-of-bob-5678"  # PostgreSQL cannot hold it: its error quotes the value
DB_PASSWORD = "Db-Passw0rd-never-printed-42"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_corpus(str(tmp_path_factory.mktemp("secrets") / "data"), 6, 2)


@pytest.fixture
def source(corpus: str, tmp_path: Any) -> dict[str, Any]:
    path = str(tmp_path / "source")
    shutil.copytree(corpus, path)
    definition = {"type": "internal", "path": path}
    with open_backend(definition) as src:
        src.keyval_set(HOST, "accounts", "alice", {"password": PLAIN})
        src.keyval_set(HOST, "accounts", "bob", {"password": NUL_PASSWORD})
    return definition


def known_secrets(source: dict[str, Any]) -> list[str]:
    """Every account secret of the source (SCRAM keys, salts, plain passwords) and the DB password."""
    found = []
    with open_backend(source) as src:
        for user in src.keyval_users(HOST, "accounts"):
            account = src.keyval_get(HOST, "accounts", user)
            found += [account[k] for k in ("password", "stored_key", "server_key", "salt") if k in account]
    assert len(found) == 6 * 3 + 2
    return [*found, DB_PASSWORD]


class Capture:
    """Everything a run lets out: log records at DEBUG (any logger), reports, exception texts."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        self.caplog = caplog
        self.texts: list[str] = []

    def report(self, report: Report) -> Report:
        self.texts.append(json.dumps(report.to_dict(), ensure_ascii=False))
        self.texts.append(repr(report))
        return report

    def exception(self, exc: BaseException) -> None:
        self.texts += [str(exc), repr(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]

    def leaks(self, secrets: list[str]) -> list[str]:
        text = "\n".join([*self.texts, self.caplog.text, *(repr(r.args) for r in self.caplog.records)])
        # A secret's first 12 characters (a truncated preview) count as a leak too.
        return [s for s in secrets if s in text or s[:12] in text]


@pytest.fixture
def pg_dest(tmp_path: Any) -> Iterator[dict[str, Any]]:
    for params in fresh_database("PostgreSQL", tmp_path):
        yield {"type": "sql", **params, "password": DB_PASSWORD}  # trust auth: any password logs in


def _refuse_secret_rows(dest: dict[str, Any]) -> None:
    """A constraint that refuses the accounts rows: PostgreSQL quotes the whole row in its error."""
    with open_backend(dest) as backend:
        backend.keyval_set("other.example", "x", "y", {"z": 1})  # the tables
    with psycopg.connect(
        host=PG["host"], port=PG["port"], user=PG["username"], dbname=dest["database"], autocommit=True
    ) as conn:
        conn.execute("""ALTER TABLE prosody ADD CONSTRAINT no_accounts CHECK ("store" <> 'accounts' OR "key" = 'x')""")


def test_secrets_never_leave_a_run(source: dict[str, Any], pg_dest: dict[str, Any], tmp_path: Any, caplog):
    secrets = known_secrets(source)
    capture = Capture(caplog)
    files = {"type": "internal", "path": str(tmp_path / "files")}
    # Runs that go well, with the diff and verification on.
    capture.report(run_migration(source, files, Options(check=True, diff=True)))
    capture.report(run_migration(source, files, Options(diff=True, verify=True)))
    # A run where the server refuses the secret rows and quotes them, and one value it cannot hold.
    _refuse_secret_rows(pg_dest)
    failed = capture.report(run_migration(source, pg_dest, Options(keep_going=True, diff=True, verify=True)))
    accounts = [f for f in failed.failures if f.store == "accounts"]
    assert len(accounts) == 8
    assert any("Failing row contains" in f.reason for f in accounts)  # the server did quote the row
    assert any("NUL" in f.reason for f in accounts)
    # The same through the command line, at the most verbose, as text and as JSON.
    config = tmp_path / "migrator.cfg.lua"
    output = {k: v for k, v in pg_dest.items() if k != "type"}
    config.write_text(
        f"input {{ type = 'internal', path = {json.dumps(source['path'])} }}\n"
        "output { type = 'sql', " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in output.items()) + " }\n"
    )
    for extra in ([], ["--json"]):
        out, err = io.StringIO(), io.StringIO()
        argv = ["--config", str(config), "-vv", "--keep-going", "--diff", "--verify", *extra]
        assert cli.main(argv, out, err) == cli.EXIT_FAILED
        capture.texts += [out.getvalue(), err.getvalue()]
        assert "accounts" in err.getvalue() + out.getvalue()
    assert capture.leaks(secrets) == []


def test_a_failed_commit_quoting_an_earlier_account_is_scrubbed(
    source: dict[str, Any], pg_dest: dict[str, Any], caplog
):
    """The engine forgets the data's secrets as entries are committed (memory stays flat), but not
    before: a commit refused with the text of any account written in its batch is still masked."""
    secrets = known_secrets(source)
    with open_backend(pg_dest) as backend:
        backend.keyval_set("other.example", "x", "y", {"z": 1})  # the tables
    with psycopg.connect(
        host=PG["host"], port=PG["port"], user=PG["username"], dbname=pg_dest["database"], autocommit=True
    ) as conn:
        # Checked at COMMIT, after the other accounts of the batch were written: the error quotes alice's row.
        conn.execute(
            """CREATE FUNCTION refuse_alice() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW."user" = 'alice' AND NEW."store" = 'accounts' THEN
                   RAISE EXCEPTION 'refused row: %', NEW."value";
                 END IF;
                 RETURN NEW;
               END $$"""
        )
        conn.execute(
            """CREATE CONSTRAINT TRIGGER refuse_alice AFTER INSERT ON prosody DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION refuse_alice()"""
        )
    capture = Capture(caplog)
    report = capture.report(run_migration(source, pg_dest, Options(keep_going=True, stores=["accounts"])))
    lost = [f for f in report.failures if "batch holding the write was lost" in f.reason]
    assert "alice" in {f.user for f in lost} and len(lost) > 1
    assert all("refused row" in f.reason for f in lost)  # the server's text, quoting the row, came through
    assert capture.leaks(secrets) == []


@pytest.mark.parametrize("driver", ["PostgreSQL", "MySQL"])
def test_a_wrong_database_password_is_not_printed(source: dict[str, Any], tmp_path: Any, caplog, driver: str):
    capture = Capture(caplog)
    server = PG if driver == "PostgreSQL" else MY
    dest = {
        "type": "sql",
        "driver": driver,
        "host": server["host"],
        "port": server["port"],
        # PostgreSQL trusts every login here: a database that does not exist makes it fail instead.
        "database": "pm_no_such_database",
        "username": "pm_no_such_user" if driver == "MySQL" else server["username"],
        "password": DB_PASSWORD,
    }
    with pytest.raises(ProsodyMigrateError) as caught:
        run_migration(source, dest, Options(stores=["roster"]))
    capture.exception(caught.value)
    assert "pm_no_such" in str(caught.value)
    config = tmp_path / "migrator.cfg.lua"
    fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in dest.items())
    config.write_text(f"input {{ type = 'internal', path = {json.dumps(source['path'])} }}\noutput {{ {fields} }}\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--config", str(config), "-vv"], out, err) != cli.EXIT_OK
    capture.texts += [out.getvalue(), err.getvalue()]
    assert "pm_no_such" in err.getvalue()
    assert capture.leaks([DB_PASSWORD]) == []


# modes ---------------------------------------------------------------------------------------------
def _modes(path: str) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            out[full] = stat.S_IMODE(os.lstat(full).st_mode)
    return out


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_new_file_store_and_sqlite_file_are_not_world_readable(source: dict[str, Any], tmp_path: Any, umask: int):
    old = os.umask(umask)
    try:
        files = {"type": "internal", "path": str(tmp_path / "files")}
        sqlite = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "new.sqlite")}
        for dest in (files, sqlite):
            report = run_migration(source, dest, Options(keep_going=True))
            assert [(f.store, f.user) for f in report.failures] == ([] if dest is files else [("accounts", "bob")])
    finally:
        os.umask(old)
    modes = _modes(files["path"])
    assert stat.S_IMODE(os.stat(files["path"]).st_mode) == 0o750
    assert {m for p, m in modes.items() if os.path.isdir(p)} == {0o750}
    assert {m for p, m in modes.items() if os.path.isfile(p)} == {0o640}
    assert len(modes) > 40
    assert stat.S_IMODE(os.stat(sqlite["database"]).st_mode) & 0o007 == 0
    assert stat.S_IMODE(os.stat(sqlite["database"]).st_mode) == 0o640
    assert [n for n in os.listdir(tmp_path) if n.startswith("new.sqlite")] == ["new.sqlite"]


def test_file_store_keeps_prosodys_modes_and_ownership(source: dict[str, Any], tmp_path: Any):
    # An existing data directory as Debian's prosody package sets it up: owned by prosody, group
    # prosody, setgid and group-writable; a host directory already there.
    uid, gid = 108, 111  # any ids will do: root may hand files to them
    data = tmp_path / "prosody"
    host_dir = data / "example%2eorg"
    os.makedirs(host_dir / "roster")
    for path, mode in ((data, 0o2770), (host_dir, 0o2770), (host_dir / "roster", 0o2770)):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    old = host_dir / "roster" / "old.dat"
    old.write_bytes(b"return {};\n")
    os.chown(old, uid, gid)
    os.chmod(old, 0o660)
    dest = {"type": "internal", "path": str(data)}
    assert not run_migration(source, dest, Options()).failed
    for path, st in ((p, os.lstat(p)) for p in [str(data), *_modes(str(data))]):
        assert (st.st_uid, st.st_gid) == (uid, gid), path
        # Directories as their siblings; files as the others of their directory, else Prosody's
        # own default (its umask 027).
        mode = stat.S_IMODE(st.st_mode)
        # A directory without a sibling gets Prosody's 0750, keeping the setgid bit of its parent.
        if os.path.isdir(path):
            expected = 0o2750 if "/conference%2eexample%2eorg/" in path else 0o2770
        else:
            expected = 0o660 if os.path.dirname(path) == str(old.parent) else 0o640
        assert mode == expected, (path, oct(mode))
