# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures giving each test its own fresh database on the real servers, dropped afterwards.

``sql_params`` is parametrized over SQLite3, PostgreSQL and MySQL (MariaDB) and yields a store
definition as migrator.cfg.lua would give it. The servers are the machine's own: PostgreSQL at
127.0.0.1:5432 (trust auth, user root) and MariaDB at 127.0.0.1:3306 (root, empty password);
environment variables override them. A missing server fails the test, never skips it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest

PG = {
    "host": os.environ.get("TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_PG_PORT", "5432")),
    "username": os.environ.get("TEST_PG_USER", "root"),
    "admin_database": os.environ.get("TEST_PG_DATABASE", "test"),
}
MY = {
    "host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
    "username": os.environ.get("TEST_MYSQL_USER", "root"),
    "password": os.environ.get("TEST_MYSQL_PASSWORD", ""),
}
DRIVERS = ("SQLite3", "PostgreSQL", "MySQL")


def _unique_name() -> str:
    return "pm_" + uuid.uuid4().hex[:16]


def pg_admin() -> psycopg.Connection:
    return psycopg.connect(
        host=PG["host"], port=PG["port"], user=PG["username"], dbname=PG["admin_database"], autocommit=True
    )


def my_admin(database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=MY["host"],
        port=MY["port"],
        user=MY["username"],
        password=MY["password"],
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


def fresh_postgresql() -> Iterator[dict[str, Any]]:
    name = _unique_name()
    with pg_admin() as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    try:
        yield {
            "driver": "PostgreSQL",
            "database": name,
            "host": PG["host"],
            "port": PG["port"],
            "username": PG["username"],
        }
    finally:
        with pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_mysql() -> Iterator[dict[str, Any]]:
    name = _unique_name()
    admin = my_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield {
            "driver": "MySQL",
            "database": name,
            "host": MY["host"],
            "port": MY["port"],
            "username": MY["username"],
            "password": MY["password"],
        }
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def fresh_sqlite(tmp_path: Any) -> Iterator[dict[str, Any]]:
    # A relative name, so every test also goes through the data_path resolution.
    yield {"driver": "SQLite3", "database": "prosody.sqlite", "data_path": str(tmp_path)}


def fresh_database(driver: str, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A new, empty database for one driver."""
    if driver == "PostgreSQL":
        yield from fresh_postgresql()
    elif driver == "MySQL":
        yield from fresh_mysql()
    else:
        yield from fresh_sqlite(tmp_path)


@pytest.fixture(params=DRIVERS)
def sql_params(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A store definition pointing at a fresh database, for each driver in turn."""
    yield from fresh_database(request.param, tmp_path)


@pytest.fixture
def pg_params(tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from fresh_postgresql()


@pytest.fixture
def mysql_params(tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from fresh_mysql()


@pytest.fixture
def sqlite_params(tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from fresh_sqlite(tmp_path)
