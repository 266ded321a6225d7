# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading migrator.cfg.lua: what real prosody-migrator's loader sees, errors a user can act on,
no secret in any message, and hostile files that fail fast without touching anything."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import luasandbox
from ansible_collections.xmpp.prosody.plugins.module_utils.config import (
    ConfigError,
    load_config,
    read_definitions,
    store_definition,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey, dumps
from ansible_collections.xmpp.prosody.plugins.module_utils.plan import ConfigError as PlanConfigError

from prosody_oracle import LuaSession, canon

PROSODY_EXAMPLE = "/etc/prosody/migrator.cfg.lua"
PASSWORD = "Pa55-w0rd'\"\\x-S3cret"  # quotes and a backslash, as a Lua string would hold them

# The loader real prosody-migrator runs (util.envload with its __index trick), then our
# documented normalization done in Lua on the tables it loaded: a store's `config` fields merged
# over its own, then the legacy type names mapped as the migrator's COMPAT loop maps them.
# Two frames per file: the canon of the raw definitions, then of the normalized ones.
ORACLE = r"""
local envloadfile = require "util.envload".envloadfile
handlers = {}
function handlers.configs(paths, out)
    for _, path in ipairs(paths) do
        local config = {}
        local env = setmetatable({}, { __index = function(t, k) return function(tbl) config[k] = tbl; end; end })
        local chunk = assert(envloadfile(path, env))
        chunk()
        out(canon.encode(config))
        for _, conf in pairs(config) do
            if type(conf) ~= "table" then conf = {} end
            if type(conf.config) == "table" then
                for option, value in pairs(conf.config) do conf[option] = value end
            end
            conf.config = nil
            if conf.type == "prosody_files" then conf.type = "internal"
            elseif conf.type == "prosody_sql" then conf.type = "sql" end
        end
        out(canon.encode(config))
    end
end
"""


@pytest.fixture(scope="module")
def oracle() -> Iterator[LuaSession]:
    session = LuaSession(ORACLE)
    yield session
    session.close()


def prosody_sees(oracle: LuaSession, paths: list[str]) -> list[tuple[bytes, bytes]]:
    """(raw, normalized) canon bytes of what real Prosody's loader gets from each file."""
    replies = oracle.call("configs", list(paths))
    return list(zip(replies[::2], replies[1::2]))


def as_lua(value: Any) -> Any:
    """Our normalized config as Lua holds it: lists (hosts' stores) as 1-based tables."""
    if isinstance(value, list):
        return {i: as_lua(v) for i, v in enumerate(value, 1)}
    if isinstance(value, dict):
        return {k: as_lua(v) for k, v in value.items()}
    return value


def write(tmp_path: Path, text: str | bytes, name: str = "migrator.cfg.lua") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


# ---------------------------------------------------------------------------------------------
# What the config says: as Prosody's loader sees it.

VHOST = [
    "accounts",
    "account_details",
    "roster",
    "vcard",
    "private",
    "blocklist",
    "privacy",
    "archive-archive",
    "offline-archive",
    "pubsub_nodes-pubsub",
    "pep-pubsub",
]
MUC = ["persistent", "config", "state", "muc_log-archive"]


def test_prosodys_example_config(oracle: LuaSession) -> None:
    expected = {
        "input": {
            "type": "internal",
            "path": "/var/lib/prosody",
            "hosts": {"example.com": VHOST, "conference.example.com": MUC},
        },
        "output": {"type": "sql", "driver": "SQLite3", "database": "/var/lib/prosody/prosody.sqlite"},
    }
    assert load_config(PROSODY_EXAMPLE) == expected
    [(raw, normalized)] = prosody_sees(oracle, [PROSODY_EXAMPLE])
    assert canon(read_definitions(PROSODY_EXAMPLE)) == raw
    assert canon(as_lua(expected)) == normalized


# Prosody 13's example, with what a real server adds: driver options in `config`, an upload
# component, legacy type names, long strings and comments, locals and concatenation.
PROSODY_13 = r"""
-- Prosody 13 style migrator config
local data_path = "/var/lib/prosody";
local db_password = [==[it's "quoted" \ and ]] not closed]==]  -- a long string keeps backslashes

local vhost = {
    "accounts",
    "account_details",
    "account_roles",
    "roster",
    "vcard",
    "private",
    "blocklist",
    "privacy",
    "archive-archive",
    "offline-archive",
    "pubsub_nodes-pubsub",
    "pep-pubsub",
    "cron",
    "smacks_h",
}
local muc = {
    "persistent",
    "config",
    "state",
    "muc_log-archive",
    "cron",
};

input {
    hosts = {
        ["example.com"] = vhost;
        ["conference.example.com"] = muc;
        ["upload.example.com"] = { "uploads-archive", "cron" };
    };
    type = "prosody_files";
    path = data_path;
}

output {
    type = "prosody_sql";
    driver = "PostgreSQL";
    database = "prosody";
    username = "prosody";
    password = db_password;
    host = "db" .. ".example.com";
    port = 5432;
    config = {
        sql_manage_tables = false;
        port = 6432; --[[ config's fields win over the store's own ]]
    };
}

--[=[
output {
    type = "sql";
    driver = "SQLite3";
    database = data_path.."/prosody.sqlite";
}
]=]
"""


def test_prosody_13_config_with_config_table_and_new_stores(oracle: LuaSession, tmp_path: Path) -> None:
    path = write(tmp_path, PROSODY_13)
    expected = {
        "input": {
            "type": "internal",
            "path": "/var/lib/prosody",
            "hosts": {
                "example.com": [*VHOST[:2], "account_roles", *VHOST[2:], "cron", "smacks_h"],
                "conference.example.com": [*MUC, "cron"],
                "upload.example.com": ["uploads-archive", "cron"],
            },
        },
        "output": {
            "type": "sql",
            "driver": "PostgreSQL",
            "database": "prosody",
            "username": "prosody",
            "password": 'it\'s "quoted" \\ and ]] not closed',
            "host": "db.example.com",
            "port": 6432,
            "sql_manage_tables": False,
        },
    }
    config = load_config(path)
    assert config == expected
    assert list(config["input"]["hosts"]["example.com"]) == expected["input"]["hosts"]["example.com"]
    [(raw, normalized)] = prosody_sees(oracle, [path])
    assert canon(read_definitions(path)) == raw
    assert canon(as_lua(config)) == normalized


def test_store_definition() -> None:
    config = {"output": {"type": "sql"}, "input": {"type": "internal"}, "archive": {"type": "internal"}}
    assert store_definition(config, "input") == {"type": "internal"}
    with pytest.raises(ConfigError) as info:
        store_definition(config, "nowhere", "/etc/prosody/migrator.cfg.lua")
    assert str(info.value) == (
        "/etc/prosody/migrator.cfg.lua: store 'nowhere' is not defined in the config "
        "(it defines: archive, input, output)"
    )


def test_one_config_error_type() -> None:
    assert ConfigError is PlanConfigError and issubclass(ConfigError, ProsodyMigrateError)


def test_hosts_as_lists_and_host_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'a { type = "internal", hosts = { "one.example", "two.example" } }\n'
        'b { type = "internal", hosts = { ["x.example"] = {} } }\n'
        'c { type = "internal", hosts = {} }\n',
    )
    assert load_config(path) == {
        "a": {"type": "internal", "hosts": ["one.example", "two.example"]},
        "b": {"type": "internal", "hosts": {"x.example": []}},
        "c": {"type": "internal", "hosts": {}},
    }


def test_prosodys_global_semantics(oracle: LuaSession, tmp_path: Path) -> None:
    """Assignments are plain globals, a repeated name redefines, `name()` undefines, and the
    standard library is not there: `os`, `string`... are store-defining functions."""
    path = write(
        tmp_path,
        'base = "/srv"\n'
        'input { type = "internal", path = base .. "/one" }\n'
        'input { type = "internal", path = base .. "/two" }\n'
        'scratch { type = "internal" }\n'
        "scratch()\n"
        'output { type = "sql", database = type(1) }\n',
    )
    [(raw, _unused)] = prosody_sees(oracle, [path])
    definitions = read_definitions(path)
    assert canon(definitions) == raw
    # `type(1)` defined a store called "type" (and gave nil): Lua's own `type` is not there.
    assert definitions == {"input": {"type": "internal", "path": "/srv/two"}, "output": {"type": "sql"}, "type": 1}


names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n not in {"and", "do", "end", "for", "if", "in", "nil", "not", "or", "true", "false"}
)
texts = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=8).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from([PASSWORD, "]]", "\\", "'\"", "\x00", "--[[", "\r\n"]),
)
leaves = st.one_of(texts, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False))
tables = st.recursive(
    st.dictionaries(st.one_of(names, st.integers(1, 4)), leaves, max_size=4),
    lambda children: st.dictionaries(st.one_of(names, st.integers(1, 4)), st.one_of(leaves, children), max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(names, tables, min_size=1, max_size=3))
def test_any_definitions_read_as_prosody_reads_them(
    oracle: LuaSession, tmp_path_factory: pytest.TempPathFactory, stores: dict
) -> None:
    """Stores written as `name <table>` with any strings (quotes, backslashes, bytes that are not
    UTF-8, NUL), integers and floats come back as Prosody's loader gets them."""
    path = write(
        tmp_path_factory.mktemp("cfg"), b"".join(n.encode() + b" " + dumps(t) + b"\n" for n, t in stores.items())
    )
    [(raw, _unused)] = prosody_sees(oracle, [path])
    assert canon(read_definitions(path)) == raw == canon(stores)


def test_non_ascii_paths_and_passwords_survive_exactly(oracle: LuaSession, tmp_path: Path) -> None:
    text = (
        'local root = "/srv/données/prosody-\\u{1F600}"\n'
        'input { type = "internal", path = root }\n'
        "output { type = 'sql', driver = 'MySQL', database = \"db\", password = "
        + dumps(PASSWORD).decode()
        + ', username = [[ü\'\\"]], extra = "\\xff\\0end" }\n'
    )
    path = write(tmp_path, text, "répertoire é/migrator.cfg.lua")
    config = load_config(path)
    assert config["input"]["path"] == "/srv/données/prosody-\U0001f600"
    assert config["output"]["password"] == PASSWORD
    assert config["output"]["username"] == "ü'\\\""
    assert config["output"]["extra"] == "\udcff\x00end"
    [(raw, _unused)] = prosody_sees(oracle, [path])
    assert canon(read_definitions(path)) == raw


# ---------------------------------------------------------------------------------------------
# Errors a user can act on.


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope é" / "migrator.cfg.lua")
    assert error_of(missing) == f"cannot read the config file {missing}: No such file or directory"
    assert error_of(str(tmp_path)) == f"cannot read the config file {tmp_path}: Is a directory"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'input {\n\ttype = "internal",\n\tpath = "/x"\n\thosts = {}\n}\n')
    assert error_of(path) == f"{path}: line 4: syntax error: '}}' expected (to close '{{' at line 1)"


def test_syntax_error_shows_lua_tokens_but_no_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'local a = "x"\ninput = = 1\n')
    assert error_of(path) == f"{path}: line 2: syntax error: unexpected symbol near '='"
    path = write(tmp_path, 'input { type = "internal" } output { type = 0x }\n', "b.lua")
    assert error_of(path) == f"{path}: line 1: syntax error: malformed number"


def test_runtime_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'local dir = nil\n\ninput { type = "internal", path = dir .. "/data" }\n')
    assert (
        error_of(path)
        == f"{path}: line 3: error while running the file: attempt to concatenate a nil value (local 'dir')"
    )


def test_missing_and_unknown_types(tmp_path: Path) -> None:
    known = "known types: internal, sql, xep0227"
    path = write(tmp_path, 'input { path = "/x" }\n', "a.cfg.lua")
    assert error_of(path) == f"{path}: store 'input' has no 'type' ({known})"
    path = write(tmp_path, 'output { type = "mongodb" }\n', "b.cfg.lua")
    assert error_of(path) == (
        f"{path}: store 'output': unknown type 'mongodb' ({known}; legacy names prosody_files, prosody_sql)"
    )
    path = write(tmp_path, "output { type = 5 }\n", "c.cfg.lua")
    assert "unknown type (a number)" in error_of(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('input "internal"\n', "store 'input' is defined with a string, not a table (input { ... })"),
        ('input { type = "internal", config = "fast" }\n', "store 'input': 'config' must be a table, not a string"),
        (
            'input { type = "internal", hosts = { ["a.example"] = { roster = true } } }\n',
            "store 'input': hosts['a.example'] must be a list of stores, like { \"roster\" }",
        ),
        (
            'input { type = "internal", hosts = { ["a.example"] = { "roster", 7 } } }\n',
            "store 'input': hosts['a.example'] holds a number where a store name belongs",
        ),
        ("_ENV[1] { type = 'internal' }\n", "a store must be named by a string, not int"),
    ],
)
def test_malformed_definitions(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: {message}"


def test_boolean_store_names_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "_ENV[true] { type = 'internal' }\n")
    assert read_definitions(path) == {BoolKey(True): {"type": "internal"}}
    assert "a store must be named by a string" in error_of(path)


# Files breaking on the line holding the password, every way Lua can report it. (Names in the
# code, `global 'os'`, are shown: they are code, not values; a syntax error's "near" token is
# not, even a name, as an unquoted password would be one.)
LEAKY = {
    "unfinished-string": 'output {\n\ttype = "sql",\n\tpassword = "PW\n}\n',
    "invalid-escape": 'output {\n\ttype = "sql",\n\tpassword = "PW\\q",\n}\n',
    "missing-comma": 'output {\n\ttype = "sql"\n\tpassword = "PW"\n}\n',
    "string-after-string": 'output {\n\tpassword = "PW" "PW",\n}\n',
    "unquoted": "output {\n\tpassword = NAME !,\n}\n",
    "unquoted-number": "output {\n\tpassword = 12345678 NAME,\n}\n",
    "long-string": "output {\n\tpassword = [[PW]] ]],\n}\n",
    "arithmetic-on-constant": 'output {\n\tpassword = "PW" + 1,\n}\n',
    "arithmetic-on-local": 'local pw = "PW"\noutput {\n\tpassword = -pw,\n}\n',
    "compare": 'output {\n\tpassword = "PW" < 1,\n}\n',
    "index-by-constant": 'local t = {}\noutput {\n\tpassword = t["PW"].x,\n}\n',
    "call-constant": 'output {\n\tpassword = ("PW")(),\n}\n',
    "method": 'output {\n\tpassword = ("PW"):nosuch(),\n}\n',
    "rep-argument": 'output {\n\tpassword = ("x"):rep("PW"),\n}\n',
    "function-value": 'output { type = "sql", password = "PW", f = function() end }\n',
}


@pytest.mark.parametrize("name", sorted(LEAKY))
@pytest.mark.parametrize("password", ["Hunter2-Secret", PASSWORD.replace('"', "")])
def test_no_password_in_any_error(tmp_path: Path, name: str, password: str) -> None:
    """A file breaking where the password is: its line is named, the password never shown."""
    text = LEAKY[name].replace("PW", password).replace("NAME", "Hunter2Secret")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    shown = f"{info.value!s} {info.value!r} {info.value.args!r}"
    for secret in (password, "Hunter2Secret", "Hunter2", "S3cret", "12345678"):
        assert secret not in shown
    assert shown.startswith(path + ": ")


def test_line_numbers_are_kept_when_the_password_is_hidden(tmp_path: Path) -> None:
    path = write(tmp_path, 'local a = 1\n\noutput {\n\ttype = "sql",\n\tpassword = "Hunter2-Secret\n}\n')
    assert error_of(path) == f"{path}: line 5: syntax error: unfinished string"
    path = write(tmp_path, 'local a = 1\noutput { password = "Hunter2-Secret" + 1 }\n', "b.lua")
    assert error_of(path) == f"{path}: line 2: error while running the file: attempt to add a 'string' with a 'number'"
    path = write(tmp_path, 'local t = {}\noutput { password = t["Hunter2-Secret"].x }\n', "c.lua")
    assert error_of(path) == (
        f"{path}: line 2: error while running the file: attempt to index a nil value (field '...')"
    )


# ---------------------------------------------------------------------------------------------
# Hostile configs: fail fast, name the file, touch nothing.

HOSTILE = {
    "endless-loop": "while true do end",
    "endless-recursion": "local function f() return f() end f()",
    "deep-recursion": "local function f() return 1 + f() end f()",
    "os-execute": 'os.execute("touch MARKER")',
    "io-open": 'local f = io.open("MARKER", "w") f:write("x") f:close()',
    "require": 'require("os").execute("touch MARKER")',
    "load": "load(\"os.execute('touch MARKER')\")()",
    "dofile": 'dofile("MARKER")',
    "huge-string": 'input { type = "internal", path = ("x"):rep(2^31) }',
    "growing-table": "local t = {} for i = 1, 1e9 do t[i] = {i} end",
    "string-dump": "input { x = ('').dump(function() end) }",
    "gsub": 'input { x = ("x"):gsub(".", print) }',
    "debug": "debug.sethook() while true do end",
    "bytecode": "\x1bLuaT\x00\x19\x93\r\n\x1a\n",
}


@pytest.mark.parametrize("mode", ["inprocess", "subprocess"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_configs_fail_fast_and_touch_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, name: str
) -> None:
    marker = tmp_path / "MARKER"
    path = write(tmp_path, HOSTILE[name].replace("MARKER", str(marker)))
    monkeypatch.setenv(luasandbox.ISOLATION_ENV, mode)
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    elapsed = time.monotonic() - start
    assert str(info.value).startswith(path + ": ")
    assert elapsed < 10, f"{name} took {elapsed:.1f} s"
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == before


def test_limits_are_reported(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "while true do end")).endswith(
        ": the file cannot be run: instruction limit exceeded (endless loop?)"
    )
    assert error_of(write(tmp_path, "os.execute('x')", "b.lua")).endswith(
        ": line 1: error while running the file: attempt to index a function value (global 'os')"
    )


def test_oversized_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"-- " + b"x" * (5 * 1024 * 1024))
    assert error_of(path) == f"{path}: the config file is larger than {4 * 1024 * 1024} bytes"
