# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the end-to-end test: a corpus made by real Prosody's storage code, a fresh
PostgreSQL database the role xmpp.prosody.prosody_migrate migrates it into (with ansible-playbook,
on localhost), and a real Prosody server reading it through the storage block the role wrote.

Everything is module-scoped (one corpus, one database, one server for all the tests); the
database is dropped and the server stopped at the end whatever happens. Each test's share of the
server's log is printed at its teardown, which pytest shows when that test fails.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e_support import CORPUS_ARGS, STORES, Migration, PlaybookRun, Server, ServerConfig

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CORPUS_SCRIPT = REPO / "tests" / "corpus" / "make_corpus.lua"
CONFIG_TEMPLATE = HERE / "prosody.cfg.lua.in"
PLAYBOOK = HERE / "migrate.yml"
# The ansible-playbook installed beside the Python running the tests (not resolved: that is the venv's bin).
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PROSODY = os.environ.get("PROSODY", "/usr/bin/prosody")
PG = {
    "host": os.environ.get("TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_PG_PORT", "5432")),
    "user": os.environ.get("TEST_PG_USER", "root"),
}

START_TIMEOUT = 20.0
PLAYBOOK_TIMEOUT = 180
RECAP = re.compile(r"^localhost\s+:\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prosody file store written by real Prosody's util.datamanager and mod_storage_internal."""
    data = tmp_path_factory.mktemp("corpus") / "data"
    subprocess.run(["lua5.4", str(CORPUS_SCRIPT), str(data), *CORPUS_ARGS], check=True, timeout=60)
    return data


@pytest.fixture(scope="module")
def source(corpus: Path) -> Iterator[InternalBackend]:
    """The corpus read by our file-store backend: what the server must give back."""
    backend = InternalBackend({"type": "internal", "path": str(corpus)})
    yield backend
    backend.close()


def _admin() -> psycopg.Connection:
    return psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=10, **PG)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped at the end."""
    name = f"prosody_e2e_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    try:
        yield name
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_config(tmp_path_factory: pytest.TempPathFactory) -> ServerConfig:
    """The test server's directory and prosody.cfg.lua, on the file store until the role switches it."""
    directory = tmp_path_factory.mktemp("prosody")
    port = _free_port()
    text = CONFIG_TEMPLATE.read_text(encoding="utf-8")
    for key, value in {"DIR": str(directory), "PORT": str(port)}.items():
        text = text.replace(f"@{key}@", value)
    path = directory / "prosody.cfg.lua"
    path.write_text(text, encoding="utf-8")
    (directory / "data").mkdir()  # empty: a server still on the file store would find no user
    return ServerConfig(directory, port, path, text)


def _collections(work: Path) -> Path:
    """A collections path where ansible_collections/xmpp/prosody is this checkout."""
    built = REPO / ".build" / "collections"
    if (built / "ansible_collections" / "xmpp" / "prosody").resolve() == REPO:
        return built
    link = work / "collections" / "ansible_collections" / "xmpp" / "prosody"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO, target_is_directory=True)
    return work / "collections"


def _destination(database: str) -> dict[str, Any]:
    """The PostgreSQL store's options, as the role is given them and writes them into Prosody's sql table."""
    return {"driver": "PostgreSQL", "database": database, "host": PG["host"], "port": PG["port"],
            "username": PG["user"]}  # fmt: skip


def _inventory(work: Path, corpus: Path, database: str, config: ServerConfig) -> dict[str, Any]:
    """localhost, on a local connection, with everything the role installs or writes under ``work``."""
    python = sys.executable  # it has lupa, psycopg and PyMySQL: the role's package installation is skipped
    service_log = str(work / "service.log")
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": python,
        "prosody_migrate_install_packages": False,
        # The migration runs through the module, not the prosody-migrator command; installing the command (and
        # its engine, file by file) would double each run's time, and the fleet test covers it. Its paths are
        # under work all the same.
        "prosody_migrate_install_command": False,
        "prosody_migrate_python": python,
        "prosody_migrate_bin_dir": str(work / "sbin"),
        "prosody_migrate_man_dir": str(work / "man"),
        "prosody_migrate_lib_dir": str(work / "lib"),
        "prosody_migrate_config_path": str(work / "etc" / "migrator.cfg.lua"),
        "prosody_migrate_config_owner": pwd.getpwuid(os.getuid()).pw_name,
        "prosody_migrate_config_group": grp.getgrgid(os.getgid()).gr_name,
        "prosody_migrate_backup_dir": str(work / "backup"),
        "prosody_migrate_run": True,
        "prosody_migrate_switch_storage": True,
        "prosody_migrate_prosody_config": str(config.path),
        # The test starts Prosody itself once the role is done: the role's stop and start are only recorded.
        "prosody_migrate_service_stop_command": ["sh", "-c", 'echo stop >> "$0"', service_log],
        "prosody_migrate_service_start_command": ["sh", "-c", 'echo start >> "$0"', service_log],
        "prosody_migrate_stores": {
            "input": {"type": "internal", "path": str(corpus), "hosts": STORES},
            "output": {"type": "sql", **_destination(database)},
        },
        "e2e_result_path": str(work / "result.json"),
    }
    return {"all": {"children": {"e2e": {"hosts": {"localhost": host}}}}}


def _play(work: Path, collections: Path, log: Path) -> PlaybookRun:
    """One ansible-playbook run of migrate.yml; its recap counts for localhost, its output in ``log``."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_HOME=str(work / "ansible-home"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="default",  # its PLAY RECAP is what the test reads
        ANSIBLE_LOCALHOST_WARNING="0",
    )
    env.pop("ANSIBLE_CONFIG", None)
    command = [str(ANSIBLE_PLAYBOOK), "-i", str(work / "inventory.json"), str(PLAYBOOK)]
    started = time.monotonic()
    # The exit code is judged by the caller, with the output at hand.
    done = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False
    )
    output = done.stdout + done.stderr
    log.write_text(output, encoding="utf-8")
    recap = RECAP.findall(output)
    counts = {key: int(value) for key, value in (pair.split("=") for pair in recap[-1].split())} if recap else {}
    return PlaybookRun(done.returncode, counts, output, time.monotonic() - started)


@pytest.fixture(scope="module")
def migration(
    corpus: Path, database: str, server_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Migration:
    """The role run twice on localhost: the first run migrates and switches the config, the second has nothing to do."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} not found: install ansible-core beside {sys.executable}")
    work = tmp_path_factory.mktemp("role")
    inventory = _inventory(work, corpus, database, server_config)
    (work / "inventory.json").write_text(json.dumps(inventory, ensure_ascii=False, indent=1), encoding="utf-8")
    collections = _collections(work)
    first = _play(work, collections, work / "run1.log")
    if first.returncode != 0:
        pytest.fail(f"the role's first run failed (rc {first.returncode}):\n{first.output}")
    result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    second = _play(work, collections, work / "run2.log")
    service = (work / "service.log").read_text(encoding="utf-8").splitlines()
    return Migration(first, second, result, service, _destination(database))


def _wait_listening(server: Server, output: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(
        f"Prosody did not listen on port {server.port} within {START_TIMEOUT}s (exit code"
        f" {server.process.poll()}).\n--- output ---\n{output.read_text(errors='replace')}\n"
        f"--- log ---\n{server.log_text()}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(migration: Migration, server_config: ServerConfig) -> Iterator[Server]:
    """Debian's Prosody in the foreground on a free loopback port, with the config the role switched to SQL."""
    if not shutil.which(PROSODY):
        pytest.fail(f"{PROSODY} not found: install Debian's prosody package (make test-deps)")
    if migration.second.returncode != 0:
        pytest.fail(f"the role's second run failed (rc {migration.second.returncode}):\n{migration.second.output}")
    directory = server_config.directory
    output = directory / "stdout.txt"
    with output.open("wb") as out:
        command = [PROSODY, "--config", str(server_config.path), "-F"]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    running = Server(process, server_config.port, directory / "prosody.log")
    try:
        _wait_listening(running, output)
        yield running
    finally:
        _stop(process)


@pytest.fixture
def server_log(server: Server) -> Iterator[Server]:
    """The server, printing what it logged during the test (shown by pytest when the test fails)."""
    start = server.log_size()
    yield server
    print(f"--- Prosody log during this test ({server.log}) ---")
    print(server.log_text(start))
