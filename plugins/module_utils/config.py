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

from collections.abc import Mapping
from typing import Any

from .backends import ALIASES, BACKENDS, backend_params
from .luadata import LuaDataError, lua_type
from .luaerrors import LUA_NAME
from .luasandbox import sandbox_load
from .plan import ConfigError

__all__ = ["DEFAULT_CONFIG", "ConfigError", "load_config", "read_definitions", "store_definition"]

DEFAULT_CONFIG = "/etc/prosody/migrator.cfg.lua"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a migrator config is a few lines; refuse to feed the sandbox more
KNOWN_TYPES = tuple(sorted(BACKENDS))
_CHUNK = "config"  # the chunk's name in Lua's messages: "config:LINE: ..."


def read_definitions(path: str) -> dict[Any, Any]:
    """The raw ``{name: value}`` the file defines, as Lua values of our model (no checks)."""
    src = _read(path)
    try:
        value = sandbox_load(src, _CHUNK, "config")
    except LuaDataError as exc:
        raise ConfigError(f"{path}: {exc.reason}") from None
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


def _store(path: str, name: str, definition: Any) -> dict[str, Any]:
    """One store's definition, checked and normalized (see the module notes)."""
    where = f"{path}: store {name!r}"
    if not isinstance(definition, dict):
        raise ConfigError(f"{where} is defined with a {lua_type(definition)}, not a table ({name} {{ ... }})")
    extra = definition.get("config")
    if extra is not None and not isinstance(extra, dict):
        raise ConfigError(f"{where}: 'config' must be a table, not a {lua_type(extra)}")
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
    if isinstance(value, str) and LUA_NAME.match(value):
        return repr(value)
    return f"(a {lua_type(value)})"


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
                raise ConfigError(f"{where}: hosts[{host!r}] holds a {lua_type(bad[0])} where a store name belongs")
        out[host] = entries
    return out


def _is_sequence(table: dict[Any, Any]) -> bool:
    return all(isinstance(k, int) for k in table) and set(table) == set(range(1, len(table) + 1))
