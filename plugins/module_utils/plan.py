# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run migrates: hosts and their stores, from the source's ``hosts`` table or discovered.

A store entry is written as in migrator.cfg.lua: ``"roster"`` (keyval), ``"archive-archive"``,
``"pep-pubsub"``; the type is what follows the last ``-`` when that is a run of letters and
digits (Prosody's pattern ``()%-(%w+)$``), keyval otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .errors import ProsodyMigrateError

if TYPE_CHECKING:  # the backends package imports ConfigError from here
    from .backends.base import Backend

STORE_TYPES = ("keyval", "archive", "pubsub")
_TYPE_SUFFIX = re.compile(r"-([A-Za-z0-9]+)\Z")


class ConfigError(ProsodyMigrateError):
    """A store definition or run option that cannot be used as given."""


@dataclass(frozen=True)
class StoreSpec:
    """One store to migrate: its name and type (keyval, archive or pubsub)."""

    name: str
    type: str = "keyval"

    @property
    def entry(self) -> str:
        """The store as migrator.cfg.lua writes it."""
        return self.name if self.type == "keyval" else f"{self.name}-{self.type}"


@dataclass
class HostPlan:
    host: str
    stores: list[StoreSpec] = field(default_factory=list)


@dataclass
class Plan:
    """Hosts in order, each with its stores; ``discovered`` holds what was found, not configured."""

    hosts: list[HostPlan] = field(default_factory=list)
    discovered: dict[str, list[str]] = field(default_factory=dict)

    def store_count(self) -> int:
        return sum(len(h.stores) for h in self.hosts)


def parse_store(entry: Any) -> StoreSpec:
    """A store entry (``"name"`` or ``"name-type"``) as Prosody's migrator reads it."""
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"a store entry must be a non-empty string, not {entry!r}")
    match = _TYPE_SUFFIX.search(entry)
    if not match:
        return StoreSpec(entry)
    name, type_ = entry[: match.start()], match[1]
    if type_ not in STORE_TYPES:
        raise ConfigError(f"store entry {entry!r}: unknown store type {type_!r} (known: {', '.join(STORE_TYPES)})")
    if not name:
        raise ConfigError(f"store entry {entry!r} has a type but no store name")
    return StoreSpec(name, type_)


def _sequence(value: Any, what: str) -> list[Any]:
    """A Lua sequence given as a list, or as the table {1: a, 2: b} the config reader may produce."""
    if value is None or value is True:
        return []
    if isinstance(value, Mapping):
        if not value:
            return []
        if set(value) != set(range(1, len(value) + 1)):
            raise ConfigError(f"{what} must be a list of store names")
        return [value[i] for i in range(1, len(value) + 1)]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    raise ConfigError(f"{what} must be a list of store names, not {value!r}")


def configured_hosts(source: Mapping[str, Any]) -> Optional[dict[str, list[StoreSpec]]]:
    """The source's ``hosts`` table as host → stores (empty: discover); None when none or empty.

    Besides Prosody's ``{host = {stores}}`` a plain list of host names is accepted, each host's
    stores being discovered.
    """
    hosts = source.get("hosts")
    if hosts is None or (isinstance(hosts, (Mapping, Sequence)) and not hosts):
        return None
    if isinstance(hosts, Mapping) and not all(isinstance(k, int) for k in hosts):
        out = {}
        # A Lua table has no order; sorting makes every run (and its report) list hosts alike.
        for host, stores in sorted(hosts.items(), key=lambda item: str(item[0])):
            if not isinstance(host, str) or not host:
                raise ConfigError(f"hosts: {host!r} is not a host name")
            out[host] = _unique(parse_store(e) for e in _sequence(stores, f"hosts[{host!r}]"))
        return out
    names = _sequence(hosts, "hosts")
    if not all(isinstance(h, str) and h for h in names):
        raise ConfigError("hosts must map host names to lists of stores")
    return {h: [] for h in names}


def _unique(specs: Iterable[StoreSpec]) -> list[StoreSpec]:
    return list(dict.fromkeys(specs))


def _discover_hosts(backend: Backend) -> list[str]:
    try:
        return sorted(backend.hosts())
    except NotImplementedError:
        raise ConfigError(
            f"the source ({backend.params.get('type')}) cannot list its hosts; name them in its 'hosts' table"
        ) from None


def _discover_stores(backend: Backend, host: str) -> list[StoreSpec]:
    try:
        found = sorted(set(backend.stores(host)))
    except NotImplementedError:
        raise ConfigError(
            f"the source ({backend.params.get('type')}) cannot list the stores of {host!r}; "
            "name them in its 'hosts' table"
        ) from None
    return [StoreSpec(name, type_) for name, type_ in found]


def build_plan(
    source: Mapping[str, Any],
    backend: Backend,
    hosts: Optional[Sequence[str]] = None,
    stores: Optional[Sequence[str]] = None,
) -> Plan:
    """The plan for a source definition, discovering what it leaves out, narrowed by hosts/stores.

    A ``stores`` name matches a store by its name (``archive``) or by its entry (``archive-archive``).
    """
    configured = configured_hosts(source)
    plan = Plan()
    host_names = _discover_hosts(backend) if configured is None else list(configured)
    if hosts is not None:
        unknown = [h for h in hosts if h not in host_names]
        if unknown:
            raise ConfigError(
                f"unknown host(s) {', '.join(map(repr, unknown))}; the source has: {', '.join(host_names) or 'none'}"
            )
        host_names = [h for h in host_names if h in set(hosts)]
    for host in host_names:
        specs = (configured or {}).get(host) or []
        if not specs:
            specs = _discover_stores(backend, host)
            plan.discovered[host] = [s.entry for s in specs]
        plan.hosts.append(HostPlan(host, specs))
    if stores is not None:
        _narrow_stores(plan, stores)
    return plan


def _narrow_stores(plan: Plan, wanted: Sequence[str]) -> None:
    known = _unique(s for h in plan.hosts for s in h.stores)
    matched = {w for w in wanted for s in known if w in (s.name, s.entry)}
    unknown = [w for w in wanted if w not in matched]
    if unknown:
        raise ConfigError(
            f"unknown store(s) {', '.join(map(repr, unknown))}; the plan has: "
            f"{', '.join(s.entry for s in known) or 'none'}"
        )
    for host in plan.hosts:
        host.stores = [s for s in host.stores if s.name in wanted or s.entry in wanted]
