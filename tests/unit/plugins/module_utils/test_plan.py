# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan (store entries, hosts, discovery, narrowing) and the backend factory."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import backends
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import backend_params, open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.plan import ConfigError, StoreSpec, build_plan, parse_store

from prosody_oracle import run_lua

CORPUS_HOSTS = ["conference.example.org", "example.org"]


ENTRIES = [
    ("roster", "roster", "keyval"),
    ("archive-archive", "archive", "archive"),
    ("muc_log-archive", "muc_log", "archive"),
    ("pep-pubsub", "pep", "pubsub"),
    ("pubsub_nodes-pubsub", "pubsub_nodes", "pubsub"),
    ("a-b-archive", "a-b", "archive"),  # the type is what follows the last dash
    ("name-", "name-", "keyval"),  # %w+ needs one character at least
    ("my-store-keyval", "my-store", "keyval"),
    ("caf\u00e9-archive", "caf\u00e9", "archive"),
]


def _lua_literal(text: str) -> str:
    return '"' + "".join(f"\\{b}" for b in text.encode()) + '"'


def test_store_entries_parse_as_prosody_does():
    parsed = [(parse_store(e).name, parse_store(e).type) for e, _name, _type in ENTRIES]
    assert parsed == [(n, t) for _entry, n, t in ENTRIES]
    # Prosody's migrator splits entries with this very code.
    script = "".join(
        f"""
        do local store = {_lua_literal(entry)}
        local p, typ = store:match("()%-(%w+)$")
        if typ then store = store:sub(1, p-1) else typ = "keyval" end
        io.write(store, "|", typ, "\\n") end
        """
        for entry, _name, _type in ENTRIES
    )
    assert run_lua(script).decode().splitlines() == [f"{n}|{t}" for _entry, n, t in ENTRIES]


@pytest.mark.parametrize("entry", ["foo-bar", "x-pep", "-archive", "", 3, None])
def test_bad_store_entries_are_refused(entry: Any):
    with pytest.raises(ConfigError) as caught:
        parse_store(entry)
    if entry == "foo-bar":
        assert "unknown store type 'bar'" in str(caught.value) and "keyval, archive, pubsub" in str(caught.value)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("plan") / "data")
    subprocess.run(["lua5.4", "tests/corpus/make_corpus.lua", path, "10", "2", "3", "16"], check=True)
    return path


def _plan(source: dict[str, Any], **narrow: Any) -> Any:
    with open_backend(source) as backend:
        return build_plan(source, backend, **narrow)


def test_configured_hosts_as_the_config_reader_gives_them(corpus: str):
    # A Lua list arrives as a table {1: ..., 2: ...}; duplicates are migrated once.
    source = {
        "type": "internal",
        "path": corpus,
        "hosts": {"example.org": {1: "roster", 2: "archive-archive", 3: "roster"}},
    }
    plan = _plan(source)
    assert [(h.host, h.stores) for h in plan.hosts] == [
        ("example.org", [StoreSpec("roster"), StoreSpec("archive", "archive")])
    ]
    assert plan.discovered == {}


def test_discovery_of_hosts_and_stores(corpus: str):
    plan = _plan({"type": "internal", "path": corpus})
    assert [h.host for h in plan.hosts] == CORPUS_HOSTS
    assert plan.discovered == {
        "conference.example.org": ["config", "muc_log-archive", "persistent"],
        "example.org": [
            "account_details",
            "accounts",
            "archive-archive",
            "blocklist",
            "offline-archive",
            "private",
            "roster",
            "vcard",
        ],
    }
    # A host listing no stores is discovered; a host given as a plain list too.
    plan = _plan(
        {"type": "internal", "path": corpus, "hosts": {"example.org": {}, "conference.example.org": ["config"]}}
    )
    assert plan.discovered == {"example.org": _plan({"type": "internal", "path": corpus}).discovered["example.org"]}
    plan = _plan({"type": "internal", "path": corpus, "hosts": ["conference.example.org"]})
    assert list(plan.discovered) == ["conference.example.org"]


def test_narrowing_by_host_and_store(corpus: str):
    source = {"type": "internal", "path": corpus}
    plan = _plan(source, hosts=["example.org"], stores=["roster", "archive-archive"])
    assert [(h.host, [s.entry for s in h.stores]) for h in plan.hosts] == [
        ("example.org", ["archive-archive", "roster"])
    ]
    plan = _plan(source, stores=["config", "archive"])
    assert [[s.entry for s in h.stores] for h in plan.hosts] == [["config"], ["archive-archive"]]
    with pytest.raises(ConfigError) as caught:
        _plan(source, hosts=["nope.example"])
    assert str(caught.value) == "unknown host(s) 'nope.example'; the source has: conference.example.org, example.org"
    with pytest.raises(ConfigError) as caught:
        _plan(source, stores=["rooster"])
    assert "unknown store(s) 'rooster'" in str(caught.value) and "roster" in str(caught.value)


def test_a_backend_that_cannot_enumerate_says_so(corpus: str, monkeypatch: pytest.MonkeyPatch):
    def cannot(self: Any) -> Any:
        raise NotImplementedError

    monkeypatch.setattr(InternalBackend, "hosts", cannot)
    with pytest.raises(ConfigError, match="cannot list its hosts; name them in its 'hosts' table"):
        run_migration({"type": "internal", "path": corpus}, {"type": "internal", "path": corpus + "-x"}, Options())


# the factory -----------------------------------------------------------------------------------
def test_open_backend_by_type_and_legacy_name(tmp_path: Any):
    assert isinstance(open_backend({"type": "internal", "path": str(tmp_path)}), InternalBackend)
    assert isinstance(open_backend({"type": "prosody_files", "path": str(tmp_path)}), InternalBackend)
    sql = open_backend({"type": "prosody_sql", "driver": "SQLite3", "database": str(tmp_path / "x.sqlite")})
    assert isinstance(sql, SqlBackend)


def test_config_table_is_merged_over_the_entry(tmp_path: Any):
    params = {"type": "sql", "driver": "PostgreSQL", "database": "x", "config": {"driver": "SQLite3", "database": "y"}}
    assert backend_params(params) == {"type": "sql", "driver": "SQLite3", "database": "y"}
    backend = open_backend({**params, "config": {**params["config"], "data_path": str(tmp_path)}})
    assert isinstance(backend, SqlBackend) and backend.params["driver"] == "SQLite3"


@pytest.mark.parametrize("params", [{"type": "mongodb"}, {}, {"type": 3}])
def test_unknown_types_name_the_known_ones(params: dict[str, Any]):
    with pytest.raises(ConfigError) as caught:
        open_backend(params)
    assert "internal, sql, xep0227" in str(caught.value)


def test_a_backend_module_not_written_yet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(backends.BACKENDS, "future", ("no_such_module_here", "FutureBackend"))
    with pytest.raises(ConfigError, match="store type 'future' is not available yet"):
        open_backend({"type": "future"})
