# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a ``migrator.cfg.lua`` as prosody-migrator does: Lua, run in the sandbox.

The file is a Lua chunk whose environment turns every global name into a store-defining
function: ``input { type = "internal", path = data_path }`` defines the store ``input``. Locals,
concatenation, comments and long strings work as in Lua; nothing else is reachable (``os``,
``io``, ``string``... are store-defining functions too, as they are for prosody-migrator). The
chunk runs in luasandbox's sandbox: text only, capped memory and instructions.

What ``load_config`` gives back, per store, differs from the raw Lua tables (``read_definitions``)
in three ways:

* the legacy types are renamed as prosody-migrator does: ``prosody_files`` → ``internal``,
  ``prosody_sql`` → ``sql``;
* a ``config = { ... }`` table (Prosody 13 sets each of its fields as a host option after the
  store's own ``sql`` settings) is merged into the store's own fields, its fields winning over
  fields of the same name, as they win in Prosody 13; the ``config`` key itself is dropped;
* ``hosts`` becomes a dict of host → list of store entries (``"roster"``, ``"archive-archive"``).

Differences from prosody-migrator, on purpose: precompiled (bytecode) config files are refused;
the string methods reachable through ``("x"):method()`` are the sandbox's few (no ``format``,
no pattern matching); every definition must be a table with a known ``type``, even one the run
does not use (prosody-migrator would fail later, or not at all). No error message quotes the
file's text or a string it computes, so no password can leak through one: syntax errors name
the line and what was expected, runtime errors Lua's own description with names but without
string constants.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .backends import ALIASES, BACKENDS, backend_params
from .luadata import LuaDataError
from .luasandbox import sandbox_load
from .plan import ConfigError

__all__ = ["DEFAULT_CONFIG", "ConfigError", "load_config", "read_definitions", "store_definition"]

DEFAULT_CONFIG = "/etc/prosody/migrator.cfg.lua"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a migrator config is a few lines; refuse to feed the sandbox more
KNOWN_TYPES = tuple(sorted(BACKENDS))
_CHUNK = "config"  # the chunk's name in Lua's messages: "config:LINE: ..."

_POSITIONED = re.compile(r"\A" + _CHUNK + r":(\d+): (.*)\Z", re.DOTALL)
_COMPILE, _RUN = "\x01C", "\x01R"  # the sandbox's marks: Lua could not compile / run the file
# What a syntax error may say after "near": Lua's own tokens, never a string, number or name.
_SAFE_NEAR = re.compile(
    r"\A(?:<eof>|'(?:and|break|do|else|elseif|end|false|for|function|goto|if|in|local|nil|not|or|repeat"
    r"|return|then|true|until|while|[-+*/%^#&~|<>=(){}\[\];:,.]{1,3})')\Z"
)
_NEAR = re.compile(r" near (.*)\Z", re.DOTALL)
# Runtime errors worth showing: Lua's own descriptions, which quote names, never values (but
# "(constant '...')", which is cut off below). Anything else (error("..."), a table) is hidden:
# the file's own code can make any text.
_RUNTIME = re.compile(
    r"\A(?:attempt to |bad argument #|stack overflow|'for' |number has no integer representation"
    r"|string length overflow|resulting string too large|table index is |wrong number of arguments)"
)
_QUOTED = re.compile(r"'([^']*)'")
_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_SYMBOL = re.compile(r"\A(?:<\w+>|[-+*/%^#&~|<>=(){}\[\];:,.]{1,3})\Z")  # a token Lua names: '=', '<eof>'
# Messages of the sandbox's own code, raised in the file's run without a position: exact texts,
# since the file could raise a message starting like one of them.
_TRUSTED_RUN = re.compile(
    r"\A(?:instruction limit exceeded \(endless loop\?\)|not enough memory|a table contains itself \(cycle\)"
    r"|tables nested deeper than \d+ levels|a (?:function|userdata|thread) cannot be stored as data"
    r"|a (?:function|userdata|thread|nil) used as a table key is not supported)\Z"
)
_HIDDEN = "the file raised an error (its message is not shown, as it may hold a secret)"


def read_definitions(path: str) -> dict[Any, Any]:
    """The raw ``{name: value}`` the file defines, as Lua values of our model (no checks)."""
    src = _read(path)
    try:
        value = sandbox_load(src, _CHUNK, "config")
    except LuaDataError as exc:
        raise ConfigError(f"{path}: {_describe(exc.reason)}") from None
    return value if isinstance(value, dict) else {}


def load_config(path: str) -> dict[str, dict[str, Any]]:
    """The stores a migrator.cfg.lua defines, each a plain dict ready for the engine."""
    definitions = read_definitions(path)
    stores: dict[str, dict[str, Any]] = {}
    for name in sorted(definitions, key=repr):
        if not isinstance(name, str):
            raise ConfigError(f"{path}: a store must be named by a string, not {type(name).__name__}")
        stores[name] = _store(path, name, definitions[name])
    return stores


def store_definition(config: Mapping[str, Any], name: str, path: str | None = None) -> dict[str, Any]:
    """The definition of store ``name``; a ConfigError listing the defined stores if there is none."""
    definition = config.get(name)
    if not isinstance(definition, Mapping):
        where = f"{path}: " if path else ""
        defined = ", ".join(sorted(map(str, config))) or "none"
        raise ConfigError(f"{where}store {name!r} is not defined in the config (it defines: {defined})")
    return dict(definition)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            src = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    if len(src) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the config file is larger than {MAX_CONFIG_BYTES} bytes")
    if src.startswith(b"\x1bLua"):
        raise ConfigError(f"{path}: a precompiled (bytecode) Lua file is not accepted; give the config as text")
    return src


def _describe(reason: str) -> str:
    """Lua's message with its line number, stripped of anything that could quote the file's strings."""
    if reason.startswith(_COMPILE):
        return _describe_syntax(reason[len(_COMPILE) :])
    if reason.startswith(_RUN):
        return _describe_runtime(reason[len(_RUN) :])
    return f"the file cannot be run: {reason}"  # the sandbox's own trouble (no lupa, a limit)


def _describe_syntax(reason: str) -> str:
    """A compile error: the parser's text (names, tokens) and its line; the token only when it is no value."""
    match = _POSITIONED.match(reason)
    if not match:
        return f"the file cannot be compiled: {reason}"  # "not enough memory": no text of the file
    line, message = match[1], match[2]
    near = _NEAR.search(message)
    text = message[: near.start()] if near else message
    token = f" near {near[1]}" if near and _SAFE_NEAR.match(near[1]) else ""
    return f"line {line}: syntax error: {_mask_quotes(text)}{token}"


def _describe_runtime(reason: str) -> str:
    match = _POSITIONED.match(reason)
    if not match:
        return f"the file cannot be run: {reason}" if _TRUSTED_RUN.match(reason) else _HIDDEN
    line, message = match[1], match[2]
    if not _RUNTIME.match(message):
        return f"line {line}: {_HIDDEN}"
    constant = message.find("(constant '")
    if constant >= 0:  # Lua quotes the string itself: drop it and whatever follows
        message = message[:constant] + "(a string constant)"
    return f"line {line}: error while running the file: {_mask_quotes(message)}"


def _mask_quotes(message: str) -> str:
    """Keep quoted names and tokens (``global 'os'``, ``'='``); mask any other quoted text."""
    return _QUOTED.sub(lambda m: m[0] if _NAME.match(m[1]) or _SYMBOL.match(m[1]) else "'...'", message)


def _store(path: str, name: str, definition: Any) -> dict[str, Any]:
    """One store's definition, checked and normalized (see the module notes)."""
    where = f"{path}: store {name!r}"
    if not isinstance(definition, dict):
        raise ConfigError(f"{where} is defined with a {_lua_type(definition)}, not a table ({name} {{ ... }})")
    extra = definition.get("config")
    if extra is not None and not isinstance(extra, dict):
        raise ConfigError(f"{where}: 'config' must be a table, not a {_lua_type(extra)}")
    store = backend_params(definition)  # config's fields merged over the store's, legacy types renamed
    type_ = store.get("type")
    if type_ is None:
        raise ConfigError(f"{where} has no 'type' (known types: {', '.join(KNOWN_TYPES)})")
    if not isinstance(type_, str) or type_ not in BACKENDS:
        raise ConfigError(
            f"{where}: unknown type {_show_type(type_)} (known types: {', '.join(KNOWN_TYPES)}; "
            f"legacy names {', '.join(sorted(ALIASES))})"
        )
    if "hosts" in store:
        store["hosts"] = _hosts(where, store["hosts"])
    return store


def _show_type(value: Any) -> str:
    """A type name as the user wrote it (types are short words, not secrets), or just its kind."""
    if isinstance(value, str) and _NAME.match(value):
        return repr(value)
    return f"(a {_lua_type(value)})"


def _hosts(where: str, hosts: Any) -> Any:
    """``hosts`` as host → list of store entries; a plain list of host names stays a list."""
    if not isinstance(hosts, dict):
        return hosts  # the engine explains what it cannot use
    if hosts and _is_sequence(hosts):
        return [hosts[i] for i in range(1, len(hosts) + 1)]
    out: dict[Any, Any] = {}
    for host, entries in hosts.items():
        if isinstance(entries, dict):
            if entries and not _is_sequence(entries):
                raise ConfigError(f'{where}: hosts[{host!r}] must be a list of stores, like {{ "roster" }}')
            entries = [entries[i] for i in range(1, len(entries) + 1)]
            bad = [e for e in entries if not isinstance(e, str)]
            if bad:
                raise ConfigError(f"{where}: hosts[{host!r}] holds a {_lua_type(bad[0])} where a store name belongs")
        out[host] = entries
    return out


def _is_sequence(table: dict[Any, Any]) -> bool:
    return all(isinstance(k, int) for k in table) and set(table) == set(range(1, len(table) + 1))


def _lua_type(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "table"
