# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The prosody-migrator command: arguments and exit codes, real runs from a file store made by
real Prosody's code into SQLite3, the launcher script, and no secret in anything it prints."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import cli
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import loads_dat
from ansible_collections.xmpp.prosody.plugins.module_utils.report import ProgressEvent
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import MY, PG

from prosody_oracle import require_prosody

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
CORPUS = ROOT / "tests" / "corpus" / "make_corpus.lua"
LAUNCHER = ROOT / "scripts" / "prosody-migrator"
HOST, MUC = "example.org", "conference.example.org"
DB_PASSWORD = "Db-Pa55word-\"quoted'-\\back"
PLAIN_PASSWORD = "Plain-Account-Secret-0042"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the progress display is drawn."""

    def isatty(self) -> bool:
        return True


def run(*argv: str, stderr: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def lua_string(text: str) -> str:
    """A Lua long string holding text exactly (our passwords hold no "]==]")."""
    return f"[==[{text}]==]"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A Prosody data directory written by real Prosody's code: 5 users, 10 messages each."""
    require_prosody()
    data = tmp_path / "data"
    subprocess.run(["lua5.4", str(CORPUS), str(data), "5", "10"], check=True, capture_output=True)
    return data


def write_config(tmp_path: Path, data: Path, extra: str = "", name: str = "migrator.cfg.lua") -> str:
    path = tmp_path / name
    path.write_text(
        f"local data_path = {lua_string(str(data))}\n"
        'input { type = "internal", path = data_path }\n'
        f'output {{ type = "sql", driver = "SQLite3", database = {lua_string(str(tmp_path / "out.sqlite"))} }}\n'
        + extra,
        encoding="utf-8",
    )
    return str(path)


# ---------------------------------------------------------------------------------------------
# Arguments and exit codes.


@pytest.mark.parametrize("argv", [["a"], ["a", "b", "c"], ["--nosuch"], ["--hosts", ","], ["--config"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: prosody-migrator [options] [FROM TO]\n")
    assert "prosody-migrator: error: " in err


def test_wrong_number_of_stores_says_so() -> None:
    code, _unused, err = run("only-one")
    assert code == 2
    assert "incorrect number of parameters supplied: give FROM and TO, or neither" in err


def test_help_documents_options_and_exit_status() -> None:
    code, out, err = run("--help")
    assert code == 0 and err == ""
    for text in ("--config FILE", "--keep-going", "--check", "--diff", "--verify", "--json", "--hosts", "--stores"):
        assert text in out
    assert "exit status:" in out and "  2  usage or config error" in out and "/etc/prosody/migrator.cfg.lua" in out


def test_missing_config_exit_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.cfg.lua")
    code, out, err = run("--config", missing)
    assert (code, out) == (2, "")
    assert err == f"prosody-migrator: error: cannot read the config file {missing}: No such file or directory\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            '{ type = "sql", driver = "SQLite3", database = "%s/none.sqlite" }',
            "SQLite3 database '%s/none.sqlite' does not exist",
        ),
        ('{ type = "internal", path = "%s/none" }', "data directory '%s/none' does not exist or is not a directory"),
        ('{ type = "xep0227", path = "%s/none" }', "directory '%s/none' does not exist or is not a directory"),
    ],
)
def test_a_source_that_is_not_there_fails_and_writes_nothing(tmp_path: Path, source: str, message: str) -> None:
    """A mistyped source path is an error naming it, not a run that finds nothing to do."""
    config = tmp_path / "m.cfg.lua"
    config.write_text(f"input {source % tmp_path}\noutput {{ type = 'internal', path = '{tmp_path}/out' }}\n")
    code, out, err = run("--config", str(config))
    assert (code, out, err) == (1, "", f"prosody-migrator: failed: {message % tmp_path}\n")
    assert sorted(os.listdir(tmp_path)) == ["m.cfg.lua"]


def test_default_stores_are_input_and_output(tmp_path: Path) -> None:
    path = tmp_path / "m.cfg.lua"
    path.write_text('zeta { type = "internal" } alpha { type = "sql" } output { type = "sql" }\n')
    code, out, err = run("--config", str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"prosody-migrator: error: {path}: store 'input' not defined in the config (it defines: alpha, output, zeta)\n"
    )
    code, _unused, err = run("--config", str(path), "from", "to")
    assert code == 2 and "store 'from' and 'to' not defined" in err
    code, _unused, err = run("--config", str(path), "alpha", "alpha")
    assert code == 2 and "FROM and TO are the same store 'alpha'" in err


def test_unknown_host_or_store_exit_2(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    code, out, err = run("--config", config, "--hosts", "nosuch.example")
    assert (code, out) == (2, "")
    assert "unknown host(s) 'nosuch.example'" in err
    code, _unused, err = run("--config", config, "--stores", "nosuch")
    assert code == 2 and "unknown store(s) 'nosuch'" in err


# ---------------------------------------------------------------------------------------------
# Real runs.


def test_migrates_then_nothing_changes(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    code, out, err = run("--config", config)
    assert code == 0, out + err
    assert err == ""  # no terminal: no progress display; no -v: no logging
    assert out.startswith("Migrated 'input' (internal) to 'output' (sql, SQLite3)\n")
    for host, store, kind in [(HOST, "accounts", "keyval"), (HOST, "archive", "archive"), (MUC, "muc_log", "archive")]:
        assert any(line.split()[:3] == [host, store, kind] for line in out.splitlines()), out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1:] == ["34", "0", "0", "0", "60", "0", "0", "0"]
    assert out.endswith("\nchanged: 34 created entries in 10 stores; 60 archive items written\n")
    with sqlite3.connect(tmp_path / "out.sqlite") as db:
        assert db.execute("SELECT count(*) FROM prosodyarchive").fetchone() == (60,)

    code, out, _unused = run("--config", config)
    assert code == 0
    assert out.endswith("\nnothing changed\n")
    code, out, _unused = run("--config", config, "--verify")
    assert code == 0
    assert "verified: the destination holds what the source holds" in out


def test_prosody_root_flag_is_accepted(tmp_path: Path, data_dir: Path) -> None:
    """Scripts written for Prosody's migrator pass --root; the same command line must work."""
    code, out, _err = run("--config", write_config(tmp_path, data_dir), "--root", "--check", "input", "output")
    assert code == 0 and "(check mode: nothing written)" in out.splitlines()[0]


def test_check_writes_nothing(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, _unused = run("--config", config, "--check")
    assert code == 0
    assert "(check mode: nothing written)" in out.splitlines()[0]
    assert out.endswith("\nwould change: 34 created entries in 10 stores; 60 archive items to write\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_json_report_alone_on_stdout(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    code, out, err = run("--config", config, "--json", "--hosts", HOST, "--stores", "roster,archive")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["changed"] is True and report["failed"] is False and report["check"] is False
    assert sorted((s["host"], s["store"], s["type"]) for s in report["stores"]) == [
        (HOST, "archive", "archive"),
        (HOST, "roster", "keyval"),
    ]
    assert report["totals"]["users_created"] == 10 and report["totals"]["items_created"] == 50
    assert "diff" not in report
    code, out, _unused = run("--config", config, "--json")
    assert code == 0 and json.loads(out)["totals"]["users_created"] == 24  # the rest, only


def test_failures_exit_1_and_are_named(tmp_path: Path, data_dir: Path) -> None:
    broken = data_dir / "example%2eorg" / "roster" / "broken.dat"
    broken.write_text("return {\n")
    config = write_config(tmp_path, data_dir)
    code, out, _unused = run("--config", config, "--keep-going")
    assert code == 1
    lines = out.splitlines()
    failure = lines[lines.index("failures:") + 1]
    assert failure.startswith(f"  host {HOST}, store roster, user broken: ")
    assert "FAILED: 1 in example.org/roster" in out
    assert out.endswith("\nchanged: 34 created entries in 10 stores; 60 archive items written\n")

    (tmp_path / "out.sqlite").unlink()
    code, out, _unused = run("--config", config)
    assert code == 1
    assert "(stopped at the first failure; --keep-going goes on)" in out


def test_progress_only_on_a_terminal(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    terminal = Terminal()
    code, out, err = run("--config", config, stderr=terminal)
    assert code == 0
    assert "\rcopy: host 1/2 " in err and "| store " in err and " items (" in err
    assert err.endswith("\r\x1b[K")  # the status line is cleared before the summary
    assert "\r" not in out and out.endswith("changed: 34 created entries in 10 stores; 60 archive items written\n")


def test_status_line() -> None:
    counts = {
        "hosts_done": 0,
        "hosts_total": 2,
        "stores_done": 3,
        "stores_total": 13,
        "users_done": 4,
        "users_total": None,
        "items_done": 500,
    }
    event = ProgressEvent("user", HOST, "roster", "someone", counts)
    assert (
        cli.status_line(event, 2.0) == "copy: host 1/2 example.org | store 4/13 roster | users 4/? | 500 items (250/s)"
    )


def test_verbose_logs_to_stderr_and_restores_logging(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    code, _unused, err = run("--config", config, "-vv")
    assert code == 0
    assert "prosody-migrator: INFO: copying store 'input' (internal) to store 'output' (sql)" in err
    assert "prosody-migrator: DEBUG: copy: host example.org, store roster" in err
    assert (root.handlers, root.level) == (handlers, level)


# ---------------------------------------------------------------------------------------------
# Secrets: never printed.


def db_configs(tmp_path: Path, data: Path, broken: bool = False) -> str:
    """Stores on a server refusing us (PostgreSQL: no such role, MariaDB: wrong password) and on
    a closed port, all with a known password; ``broken`` adds a line failing on a password."""
    bad = f'badline {{ type = "sql", password = "{DB_PASSWORD[:8]}" + 1 }}\n' if broken else ""
    return write_config(
        tmp_path,
        data,
        f'pg {{ type = "sql", driver = "PostgreSQL", database = "prosody", host = "{PG["host"]}", '
        f'port = {PG["port"]}, username = "no_such_role_x", password = {lua_string(DB_PASSWORD)} }}\n'
        f'my {{ type = "sql", driver = "MySQL", database = "prosody", host = "{MY["host"]}", '
        f'port = {MY["port"]}, username = "{MY["username"]}", password = {lua_string(DB_PASSWORD)} }}\n'
        'nowhere { type = "sql", driver = "PostgreSQL", database = "prosody", host = "127.0.0.1", port = 1, '
        f'username = "prosody", password = {lua_string(DB_PASSWORD)} }}\n' + bad,
    )


@pytest.mark.parametrize("store", ["pg", "my", "nowhere"])
def test_no_database_password_in_any_output(tmp_path: Path, data_dir: Path, store: str) -> None:
    config = db_configs(tmp_path, data_dir)
    for extra in ([], ["--json"], ["--keep-going", "-vv", "--diff", "--verify"]):
        code, out, err = run("--config", config, *extra, "input", store, stderr=Terminal())
        assert code == 1, out + err
        assert "cannot connect to" in err
        for secret in (DB_PASSWORD, DB_PASSWORD[:12], "Pa55word"):
            assert secret not in out + err
        assert out == ""


def test_no_password_in_config_errors(tmp_path: Path, data_dir: Path) -> None:
    config = db_configs(tmp_path, data_dir, broken=True)
    code, out, err = run("--config", config, "-vv")
    assert (code, out) == (2, "")
    assert "line 7: error while running the file" in err
    assert DB_PASSWORD[:8] not in err


def test_no_account_secret_in_diff(tmp_path: Path, data_dir: Path) -> None:
    accounts = data_dir / "example%2eorg" / "accounts"
    (accounts / "plain.dat").write_text(f'return {{\n\t["password"] = "{PLAIN_PASSWORD}";\n}};\n')
    scram = loads_dat((accounts / "user00004.dat").read_bytes(), "user00004.dat")
    secrets = [PLAIN_PASSWORD, scram["stored_key"], scram["server_key"], scram["salt"]]
    config = write_config(tmp_path, data_dir)
    code, text, err = run("--config", config, "--diff", "--check", "-vv")
    assert code == 0 and "create host example.org, store accounts, user plain" in text
    code, as_json, _unused = run("--config", config, "--diff", "--json")
    assert code == 0 and any(d["user"] == "plain" for d in json.loads(as_json)["diff"])
    for secret in secrets:
        assert secret not in text + err + as_json


# ---------------------------------------------------------------------------------------------
# The launcher script.


def launch(args: list[str], env: dict[str, str] | None = None, script: Path = LAUNCHER) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_launcher_runs_the_checkout_it_sits_in(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    proc = launch(["--config", config])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("changed: 34 created entries in 10 stores; 60 archive items written\n")
    assert launch(["--config", config, "x"]).returncode == 2


def test_launcher_finds_an_installed_collection(tmp_path: Path) -> None:
    installed = tmp_path / "collections" / "ansible_collections" / "xmpp"
    installed.mkdir(parents=True)
    (installed / "prosody").symlink_to(ROOT)
    copied = tmp_path / "bin" / "prosody-migrator"
    copied.parent.mkdir()
    copied.write_bytes(LAUNCHER.read_bytes())
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), HOME=str(tmp_path))
    env.pop("PYTHONPATH", None)
    proc = launch(["--help"], env, copied)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: prosody-migrator")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tmp_path / "empty")
    proc = subprocess.run(
        [sys.executable, "-S", str(copied), "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "cannot find the xmpp.prosody collection" in proc.stderr
