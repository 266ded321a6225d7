# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the end-to-end test: a corpus made by real Prosody's storage code, a fresh
PostgreSQL database it is migrated into by our engine, and a real Prosody server reading it.

Everything is module-scoped (one corpus, one database, one server for all the tests); the
database is dropped and the server stopped at the end whatever happens. Each test's share of the
server's log is printed at its teardown, which pytest shows when that test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from e2e_support import CORPUS_ARGS, STORES, Server

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CORPUS_SCRIPT = REPO / "tests" / "corpus" / "make_corpus.lua"
CONFIG_TEMPLATE = HERE / "prosody.cfg.lua.in"
PROSODY = os.environ.get("PROSODY", "/usr/bin/prosody")
PG = {
    "host": os.environ.get("TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_PG_PORT", "5432")),
    "user": os.environ.get("TEST_PG_USER", "root"),
}

START_TIMEOUT = 20.0


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
def database(corpus: Path) -> Iterator[str]:
    """A fresh PostgreSQL database holding the corpus, migrated (and verified) by our engine."""
    name = f"prosody_e2e_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    try:
        report = run_migration(
            {"type": "internal", "path": str(corpus), "hosts": STORES},
            {"type": "sql", "driver": "PostgreSQL", "database": name, "host": PG["host"], "port": PG["port"],
             "username": PG["user"]},
            Options(verify=True),
        )  # fmt: skip
        assert not report.failed, (report.failures, report.mismatches)
        yield name
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(directory: Path, port: int, database: str) -> Path:
    fields = {"DIR": str(directory), "PORT": str(port), "DATABASE": database,
              "PGHOST": PG["host"], "PGPORT": str(PG["port"]), "PGUSER": PG["user"]}  # fmt: skip
    text = CONFIG_TEMPLATE.read_text(encoding="utf-8")
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    path = directory / "prosody.cfg.lua"
    path.write_text(text, encoding="utf-8")
    (directory / "data").mkdir()
    return path


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
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Debian's Prosody in the foreground on a free loopback port, reading the migrated database."""
    if not shutil.which(PROSODY):
        pytest.fail(f"{PROSODY} not found: install Debian's prosody package (make test-deps)")
    directory = tmp_path_factory.mktemp("prosody")
    port = _free_port()
    config = _write_config(directory, port, database)
    output = directory / "stdout.txt"
    with output.open("wb") as out:
        process = subprocess.Popen([PROSODY, "--config", str(config), "-F"], stdout=out, stderr=subprocess.STDOUT)
    running = Server(process, port, directory / "prosody.log")
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
