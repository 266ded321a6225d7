# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The prosody_migrate module: its arguments, its result, and real runs over Prosody's files to SQLite3."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import sys
from typing import Any

import pytest
from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.testing import patch_module_args

from ansible_collections.xmpp.prosody.plugins.modules import prosody_migrate
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_skip_unchanged import forbid_reads

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
DEMO_DATA = os.path.join(ROOT, "demo", "data")  # written by real Prosody 0.12's storage code
STORE_KEYS = {
    "host",
    "store",
    "type",
    "users_created",
    "users_updated",
    "users_unchanged",
    "users_failed",
    "items_created",
    "items_updated",
    "items_unchanged",
    "items_failed",
}
WRONG_PASSWORD = "Wr0ng-Secret-pw-4711"


def run(args: dict[str, Any], capsys: pytest.CaptureFixture[str], check: bool = False, diff: bool = False) -> dict:
    """Run the module's main with these arguments; returns its JSON result (``failed`` set on failure)."""
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        prosody_migrate.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    result["_raw"] = out
    assert (exited.value.code != 0) == bool(result.get("failed"))
    return result


def files_to_sqlite(db: str, **extra: Any) -> dict[str, Any]:
    return dict(
        {
            "source": {"type": "internal", "path": DEMO_DATA},
            "destination": {"type": "sql", "driver": "SQLite3", "database": db},
        },
        **extra,
    )


def account_secrets(data_dir: str) -> set[str]:
    """The SCRAM secrets (stored_key, server_key, salt) in a data directory's account files."""
    found = set()
    for path in glob.glob(os.path.join(data_dir, "*", "accounts", "*.dat")):
        with open(path, encoding="utf-8") as f:
            found.update(re.findall(r'\["(?:stored_key|server_key|salt)"\] = "([^"]+)"', f.read()))
    return found


def rows(db: str) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        keyval = conn.execute('SELECT COUNT(*) FROM "prosody"').fetchone()[0]
        archive = conn.execute('SELECT COUNT(*) FROM "prosodyarchive"').fetchone()[0]
    return keyval, archive


# arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"config": "/x.cfg.lua", "source": {"type": "internal", "path": "/a"}, "destination": {"type": "sql"}},
            "mutually exclusive: config|source",
        ),
        (
            {"from": "a", "source": {"type": "internal", "path": "/a"}, "destination": {"type": "sql"}},
            "mutually exclusive: from|source",
        ),
        ({"source": {"type": "internal", "path": "/a"}}, "parameters are required together: source, destination"),
        ({"destination": {"type": "sql"}}, "parameters are required together: source, destination"),
        (
            {"source": {"type": "internal"}, "destination": {"type": "sql", "hosts": ["example.org"]}},
            "Unsupported parameters",
        ),
        ({"source": {"path": "/a"}, "destination": {"type": "sql"}}, "missing required arguments: type"),
        ({"source": {"type": "ldap"}, "destination": {"type": "sql"}}, "value of type must be one of"),
        (
            {"source": {"type": "sql", "driver": "Oracle"}, "destination": {"type": "internal"}},
            "value of driver must be one of",
        ),
    ],
)
def test_bad_arguments_fail_naming_the_problem(args: dict, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(args, capsys)
    assert result["failed"]
    assert message in result["msg"]


def test_missing_config_file_fails_naming_it(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nowhere.cfg.lua")
    result = run({"config": path}, capsys)
    assert result["failed"] and not result["changed"]
    assert result["msg"] == f"cannot read the config file {path}: No such file or directory"
    assert result["stores"] == [] and result["failures"] == []


def test_unknown_store_name_lists_the_defined_ones(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "migrator.cfg.lua"
    cfg.write_text(f'input {{ type = "internal", path = "{DEMO_DATA}" }}\noutput {{ type = "sql", database = "x" }}\n')
    result = run({"config": str(cfg), "to": "sqlite"}, capsys)
    assert result["failed"]
    assert "store 'sqlite' is not defined in the config (it defines: input, output)" in result["msg"]
    assert not os.path.exists("x")


def test_from_and_to_must_differ(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "migrator.cfg.lua"
    cfg.write_text(f'input {{ type = "internal", path = "{DEMO_DATA}" }}\n')
    result = run({"config": str(cfg), "from": "input", "to": "input"}, capsys)
    assert result["failed"] and "'from' and 'to' name the same store 'input'" in result["msg"]


# missing libraries -----------------------------------------------------------------------------
def test_import_guard_records_a_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the module without psycopg (an import that fails) works, and records the library."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ImportError
    spec = importlib.util.spec_from_file_location("prosody_migrate_copy", prosody_migrate.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert set(copy.LIBRARIES) == {"psycopg"}
    assert "ImportError" in copy.LIBRARIES["psycopg"] or "ModuleNotFoundError" in copy.LIBRARIES["psycopg"]


@pytest.mark.parametrize(
    ("destination", "library"),
    [
        ({"type": "sql", "driver": "PostgreSQL", "database": "prosody"}, "psycopg"),
        ({"type": "prosody_sql", "driver": "MySQL", "database": "prosody"}, "PyMySQL"),
        ({"type": "internal", "path": "/nonexistent/out"}, "lupa"),
    ],
)
def test_a_missing_library_fails_with_missing_required_lib(
    destination: dict, library: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(prosody_migrate.LIBRARIES, library, "Traceback: No module named x")
    source = {"type": "sql", "driver": "SQLite3", "database": "/nonexistent/in.sqlite"}
    result = run({"source": source, "destination": destination}, capsys)
    assert result["failed"]
    assert result["msg"] == missing_required_lib(library)
    assert library in result["msg"]


def test_missing_lupa_stops_a_config_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(prosody_migrate.LIBRARIES, "lupa", "Traceback")
    result = run({"config": "/nonexistent.cfg.lua"}, capsys)
    assert result["msg"] == missing_required_lib("lupa")


def test_database_libraries_are_needed_only_by_their_stores(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(prosody_migrate.LIBRARIES, "psycopg", "Traceback")
    monkeypatch.setitem(prosody_migrate.LIBRARIES, "PyMySQL", "Traceback")
    result = run(files_to_sqlite(str(tmp_path / "p.sqlite")), capsys)
    assert not result.get("failed") and result["changed"]


def test_needed_libraries() -> None:
    assert prosody_migrate.needed_libraries({"type": "prosody_files"}, {"type": "sql"}) == ["lupa"]
    assert prosody_migrate.needed_libraries(
        {"type": "sql", "driver": "MySQL"}, {"type": "sql", "config": {"driver": "PostgreSQL"}}
    ) == ["PyMySQL", "psycopg"]


# real runs -------------------------------------------------------------------------------------
def test_files_to_sqlite_then_again_changes_nothing(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "prosody.sqlite")
    first = run(files_to_sqlite(db, verify=True), capsys)
    assert first["changed"] and not first.get("failed")
    assert first["verified"] is True and first["mismatches"] == []
    assert first["failures"] == [] and first["stopped"] is False
    assert {entry["host"] for entry in first["stores"]} == {"example.org", "conference.example.org"}
    assert all(set(entry) == STORE_KEYS for entry in first["stores"])
    assert set(first["discovered"]["example.org"]) >= {"accounts", "roster", "archive-archive"}
    totals = first["totals"]
    assert totals == {k: sum(e[k] for e in first["stores"]) for k in STORE_KEYS - {"host", "store", "type"}}
    keyval, archive = rows(db)
    assert totals["items_created"] == archive > 0
    assert totals["users_created"] > 0 and keyval > 0
    assert first["msg"].startswith("migrated 'source' (internal) to 'destination' (sql, SQLite3): ")

    second = run(files_to_sqlite(db), capsys)
    assert second["changed"] is False and not second.get("failed")
    assert second["totals"]["users_unchanged"] == totals["users_created"]
    assert second["totals"]["items_unchanged"] == archive
    assert "verified" not in second and "diff" not in second
    assert rows(db) == (keyval, archive)


def test_check_mode_reports_changes_and_writes_nothing(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "prosody.sqlite")
    checked = run(files_to_sqlite(db), capsys, check=True)
    assert checked["changed"] is True and not checked.get("failed")
    assert checked["totals"]["users_created"] > 0 and checked["totals"]["items_created"] > 0
    assert checked["msg"].startswith("would migrate ")
    assert not os.path.exists(db)
    real = run(files_to_sqlite(db), capsys)
    assert real["stores"] == checked["stores"]


def test_diff_shows_each_entry_and_masks_secrets(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    secrets = account_secrets(DEMO_DATA)
    assert len(secrets) >= 18  # six accounts with salt, stored_key and server_key
    result = run(files_to_sqlite(str(tmp_path / "p.sqlite")), capsys, check=True, diff=True)
    diffs = result["diff"]
    assert all(set(d) == {"before_header", "after_header", "before", "after"} for d in diffs)
    headers = {d["after_header"] for d in diffs}
    assert "example.org roster o'brien (source)" in headers
    assert "conference.example.org persistent (host-level data) (source)" in headers
    account = next(d for d in diffs if d["after_header"] == "example.org accounts o'brien (source)")
    assert account["before"] == ""
    assert json.loads(account["after"]) == {
        "iteration_count": 4096,
        "salt": "********",
        "server_key": "********",
        "stored_key": "********",
    }
    archive = next(d for d in diffs if d["after_header"] == "conference.example.org muc_log room1 (source)")
    assert re.fullmatch(r"archive: \d+ items added, 0 replaced\n", archive["after"])
    assert not any(secret in result["_raw"] for secret in secrets)


def test_diff_of_an_update_shows_before_and_after(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "p.sqlite")
    run(files_to_sqlite(db), capsys)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE prosody SET value = 'Old Name' "
            "WHERE store = 'account_details' AND user = 'user00004' AND key = 'name'"
        )
    result = run(files_to_sqlite(db), capsys, diff=True)
    assert result["changed"] and [d["after_header"] for d in result["diff"]] == [
        "example.org account_details user00004 (source)"
    ]
    (change,) = result["diff"]
    assert json.loads(change["before"])["name"] == "Old Name"
    assert json.loads(change["after"])["name"] == "User 4"
    details = next(e for e in result["stores"] if e["store"] == "account_details")
    assert details["users_updated"] == 1


def test_hosts_and_stores_narrow_the_run(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "p.sqlite")
    result = run(files_to_sqlite(db, hosts=["example.org"], stores=["roster", "archive"]), capsys)
    assert {(e["host"], e["store"]) for e in result["stores"]} == {
        ("example.org", "roster"),
        ("example.org", "archive"),
    }
    unknown = run(files_to_sqlite(db, stores=["rooster"]), capsys)
    assert unknown["failed"] and "unknown store(s) 'rooster'" in unknown["msg"]
    host = run(files_to_sqlite(db, hosts=["example.net"]), capsys)
    assert host["failed"] and "unknown host(s) 'example.net'" in host["msg"]


def test_source_hosts_table_names_the_stores(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = files_to_sqlite(str(tmp_path / "p.sqlite"))
    args["source"]["hosts"] = {"example.org": ["accounts", "archive-archive"]}
    result = run(args, capsys)
    assert [(e["store"], e["type"]) for e in result["stores"]] == [("accounts", "keyval"), ("archive", "archive")]
    assert result["discovered"] == {}


def corrupt_copy(tmp_path: Any) -> str:
    data = str(tmp_path / "data")
    shutil.copytree(DEMO_DATA, data)
    with open(os.path.join(data, "example%2eorg", "roster", "user00005.dat"), "w") as f:
        f.write("return { [[[ this is not Lua")
    return data


def test_corrupt_file_with_keep_going_migrates_the_rest(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data, db = corrupt_copy(tmp_path), str(tmp_path / "p.sqlite")
    args = files_to_sqlite(db, keep_going=True)
    args["source"]["path"] = data
    result = run(args, capsys)
    assert result["failed"] and result["changed"] and result["stopped"] is False
    (failure,) = result["failures"]
    assert (failure["host"], failure["store"], failure["user"], failure["scope"]) == (
        "example.org",
        "roster",
        "user00005",
        "user",
    )
    assert "user00005.dat" in failure["reason"]
    assert result["msg"].startswith("1 failure(s) migrating 'source' (internal) to 'destination' (sql, SQLite3): ")
    assert "host example.org, store roster, user user00005: " in result["msg"]
    roster = next(e for e in result["stores"] if e["store"] == "roster")
    assert (roster["users_created"], roster["users_failed"]) == (5, 1)
    assert result["totals"]["items_created"] == rows(db)[1] > 0


def test_corrupt_file_without_keep_going_stops(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = corrupt_copy(tmp_path)
    args = files_to_sqlite(str(tmp_path / "p.sqlite"))
    args["source"]["path"] = data
    result = run(args, capsys)
    assert result["failed"] and result["stopped"] is True
    assert len(result["failures"]) == 1
    assert "(the run stopped at the first failure; keep_going goes on past failures)" in result["msg"]


def test_wrong_password_fails_without_showing_it(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A MariaDB login refused, the password given inline and in a config file: it is nowhere in the output."""
    dest = {
        "type": "sql",
        "driver": "MySQL",
        "host": "127.0.0.1",
        "port": 3306,
        "username": "root",
        "password": WRONG_PASSWORD,
        "database": "pm_never_created",
    }
    inline = run({"source": {"type": "internal", "path": DEMO_DATA}, "destination": dest}, capsys)
    cfg = tmp_path / "migrator.cfg.lua"
    cfg.write_text(
        f'input {{ type = "internal", path = "{DEMO_DATA}" }}\n'
        f'output {{ type = "sql", driver = "MySQL", host = "127.0.0.1", port = 3306, username = "root",'
        f' password = "{WRONG_PASSWORD}", database = "pm_never_created" }}\n'
    )
    from_config = run({"config": str(cfg)}, capsys)
    for result in (inline, from_config):
        assert result["failed"] and not result["changed"]
        assert "cannot connect to" in result["msg"] and "Access denied" in result["msg"]
        assert WRONG_PASSWORD not in result["_raw"]
        assert WRONG_PASSWORD[:12] not in result["_raw"]


def test_ansible_diff_rendering() -> None:
    keyval = {"host": "h", "type": "keyval"}
    changes = [
        dict(keyval, store="roster", user="u", action="create", before=None, after=1),
        dict(keyval, store="s", user=None, action="update", before={"a": 1}, after={}),
        {"host": "h", "store": "mam", "user": "u", "type": "archive", "items_added": 2, "items_replaced": 1},
    ]
    assert prosody_migrate.ansible_diff(changes) == [
        {
            "before_header": "h roster u (destination)",
            "after_header": "h roster u (source)",
            "before": "",
            "after": "1\n",
        },
        {
            "before_header": "h s (host-level data) (destination)",
            "after_header": "h s (host-level data) (source)",
            "before": '{\n  "a": 1\n}\n',
            "after": "{}\n",
        },
        {
            "before_header": "h mam u (destination)",
            "after_header": "h mam u (source)",
            "before": "archive (other items)\n",
            "after": "archive: 2 items added, 1 replaced\n",
        },
    ]


def test_skip_unchanged_and_state_file(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, state = str(tmp_path / "prosody.sqlite"), str(tmp_path / "state" / "migrate.sqlite")
    first = run(files_to_sqlite(db, state_file=state, jobs=1), capsys)
    assert first["changed"] and os.path.isfile(state)
    with monkeypatch.context() as patch:
        forbid_reads(patch)  # any entry read now fails: the run must skip them all
        second = run(files_to_sqlite(db, state_file=state, jobs=1), capsys)
        assert (second["changed"], second.get("failed"), second["failures"]) == (False, None, [])
        assert second["totals"]["users_unchanged"] == first["totals"]["users_created"]
        assert second["totals"]["items_unchanged"] == first["totals"]["items_created"]
        compared = run(files_to_sqlite(db, state_file=state, skip_unchanged=False, jobs=1), capsys)
        assert compared["failed"] and "should have been skipped" in compared["msg"]
