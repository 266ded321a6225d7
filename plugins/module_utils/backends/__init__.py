# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opening a backend from a store definition, as a migrator.cfg.lua entry gives it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..plan import ConfigError
from .base import Backend

# type -> (module, class); modules are imported on first use, so a driver's libraries are only
# needed when a store of that type is opened.
BACKENDS = {
    "internal": ("internal", "InternalBackend"),
    "sql": ("sql", "SqlBackend"),
    "xep0227": ("xep0227", "Xep0227Backend"),
}
# The old names prosody-migrator still accepts.
ALIASES = {"prosody_files": "internal", "prosody_sql": "sql"}


def backend_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A store definition with its ``config`` table (Prosody 13's driver options) merged over it."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"a store definition must be a table, not {type(params).__name__}")
    merged = {k: v for k, v in params.items() if k != "config"}
    extra = params.get("config")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise ConfigError(f"a store definition's 'config' must be a table, not {type(extra).__name__}")
        merged.update(extra)
    type_ = merged.get("type")
    merged["type"] = ALIASES.get(type_, type_) if isinstance(type_, str) else type_
    return merged


def open_backend(params: Mapping[str, Any]) -> Backend:
    """The backend a store definition names by its ``type`` (internal, sql, xep0227)."""
    merged = backend_params(params)
    type_ = merged["type"]
    known = ", ".join(sorted(BACKENDS))
    if type_ is None:
        raise ConfigError(f"the store definition has no 'type' (known types: {known})")
    if not isinstance(type_, str) or type_ not in BACKENDS:
        raise ConfigError(f"unknown store type {type_!r} (known types: {known}; legacy prosody_files, prosody_sql)")
    module_name, class_name = BACKENDS[type_]
    qualified = f"{__name__}.{module_name}"
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            raise ConfigError(f"store type {type_!r} is not available yet") from None
        raise ConfigError(
            f"store type {type_!r} needs the Python module {exc.name!r}, which is not installed"
        ) from None
    backend_class = getattr(module, class_name, None)
    if backend_class is None:
        raise ConfigError(f"store type {type_!r} is not available yet")
    return backend_class(merged)
