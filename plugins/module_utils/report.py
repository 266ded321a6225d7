# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a migration run reports: per-store counts, failures, warnings, verification and diff.

Secrets never leave through a report: diff values go through ``mask_secrets`` and every text
(failure reasons, warnings) through a ``Scrubber`` that knows the secrets seen in the data.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .luadata import BoolKey
from .stanza import Element

MASK = "********"
# Names whose value is a secret wherever they appear: SCRAM's stored data, plain passwords,
# anything called a secret or a token.
_SECRET_NAMES = frozenset({"password", "stored_key", "server_key", "salt"})
_SECRET_PARTS = re.compile(r"password|passwd|secret|token", re.IGNORECASE)
_HEX_KEY = re.compile(r".*_key\Z", re.IGNORECASE | re.DOTALL)
_HEX = re.compile(r"[0-9A-Fa-f]{16,}\Z")
# Matches the keys (joined by newlines) of every table that has a key is_secret may take, and more.
_MAYBE_SECRET = re.compile(r"password|passwd|secret|token|salt|_key(?=\n|\Z)", re.IGNORECASE)
_MIN_SECRET = 4  # shorter strings would mask ordinary words in messages
_PREFIX = 12  # a secret's prefix this long (an error message's truncated preview) is masked too


def is_secret(key: Any, value: Any) -> bool:
    """Whether a table field looks like it holds a secret."""
    if not isinstance(key, str):
        return False
    if key.lower() in _SECRET_NAMES or _SECRET_PARTS.search(key):
        return True
    return bool(_HEX_KEY.match(key)) and isinstance(value, str) and bool(_HEX.match(value))


def mask_secrets(value: Any) -> Any:
    """A copy of a value with every secret-looking field's value replaced by MASK, recursively."""
    if not isinstance(value, dict):
        return value
    return {k: MASK if is_secret(k, v) else mask_secrets(v) for k, v in value.items()}


def find_secrets(value: Any, found: set[str]) -> None:
    """Add the strings held in secret-looking fields of a value (at any depth) to ``found``."""
    stack = [value]
    while stack:
        table = stack.pop()
        if not isinstance(table, dict):
            continue
        if _keys_clear(table):
            # The usual table (a roster, a vCard): one search of all its keys clears them.
            stack.extend([v for v in table.values() if isinstance(v, dict)])
            continue
        for k, v in table.items():
            if is_secret(k, v):
                _collect_strings(v, found)
            elif isinstance(v, dict):
                stack.append(v)


# Whether a small table's keys leave out every secret's name, by its keys in order: a roster's
# contacts, vCard fields and the like repeat a few key sets, each searched once.
_CLEAR_KEYS: dict[tuple[Any, ...], bool] = {}
_CLEAR_KEYS_MAX = 4096
_SMALL_TABLE = 8


def _keys_clear(table: dict[Any, Any]) -> bool:
    """Whether none of the table's keys may name a secret (one search of them all)."""
    if len(table) > _SMALL_TABLE:
        return not _MAYBE_SECRET.search("\n".join([k for k in table if isinstance(k, str)]))
    keys = tuple(table)
    clear = _CLEAR_KEYS.get(keys)
    if clear is None:
        clear = not _MAYBE_SECRET.search("\n".join([k for k in keys if isinstance(k, str)]))
        if len(_CLEAR_KEYS) < _CLEAR_KEYS_MAX:
            _CLEAR_KEYS[keys] = clear
    return clear


def _collect_strings(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        if len(value) >= _MIN_SECRET:
            found.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_strings(v, found)


class Scrubber:
    """Removes known secrets, and their truncated previews, from text that goes into a report.

    ``secrets`` (the configuration's passwords) are kept for the whole run; ``recent`` holds the
    secrets ``learn`` found in the data, until ``forget``: the engine forgets them once no text
    can quote them any more (the entries holding them are committed), so memory does not grow
    with the number of accounts.
    """

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.recent: set[str] = set()

    def add(self, secret: Any) -> None:
        if isinstance(secret, str) and len(secret) >= _MIN_SECRET:
            self.secrets.add(secret)

    def learn(self, value: Any) -> None:
        """Remember the secrets a value holds, until ``forget``."""
        find_secrets(value, self.recent)

    def forget(self) -> None:
        """Drop the secrets learnt from the data; the configuration's stay."""
        self.recent.clear()

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets | self.recent, key=len, reverse=True):
            text = _mask_in(text, secret)
        return text


def _mask_in(text: str, secret: str) -> str:
    """Mask the secret in text, and any run of ``_PREFIX`` or more of its leading characters."""
    if len(secret) <= _PREFIX:
        return text.replace(secret, MASK)
    head = secret[:_PREFIX]
    out, start = [], 0
    while True:
        at = text.find(head, start)
        if at < 0:
            break
        end = at + _PREFIX
        while end < len(text) and end - at < len(secret) and text[end] == secret[end - at]:
            end += 1
        out.append(text[start:at] + MASK)
        start = end
    out.append(text[start:])
    return "".join(out)


def jsonable(value: Any) -> Any:
    """A value of the luadata model as JSON can carry it, for display.

    Tables become objects with string keys (integers as decimal text, booleans as ``true``/
    ``false``), stanzas their XML text, non-finite floats their name, and bytes that are not
    UTF-8 ``\\xNN`` escapes.
    """
    if isinstance(value, dict):
        return {_json_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Element):
        return _text(value.to_xml())
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, BoolKey):
        return "true" if key.value else "false"
    if isinstance(key, str):
        return _text(key)
    return repr(key)


def _text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


@dataclass
class StoreResult:
    """Counts for one store of one host.

    ``users_*`` count entries (a user's value or archive; the host-level one counts as one),
    ``items_*`` archive items (zero for keyval stores).
    """

    host: str
    store: str
    type: str
    users_created: int = 0
    users_updated: int = 0
    users_unchanged: int = 0
    users_failed: int = 0
    items_created: int = 0
    items_updated: int = 0
    items_unchanged: int = 0
    items_failed: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.users_created or self.users_updated)

    def add(self, other: StoreResult) -> None:
        """Add another result's counts to these (a worker's, for the same store)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# The count fields of a StoreResult, in order.
COUNTS = tuple(name for name in StoreResult.__dataclass_fields__ if name.startswith(("users_", "items_")))


@dataclass
class Failure:
    """Something that could not be migrated or verified: ``user`` is None for host-level data
    (``scope`` "host") or for a whole store (``scope`` "store")."""

    host: str
    store: str
    user: Optional[str]
    reason: str
    scope: str = "user"


@dataclass
class ProgressEvent:
    """A step of a run, for a progress display.

    ``kind``: "start" (the plan is known), "host", "store" (a store begins), "user" (one entry
    done), "store_done", "done". ``phase``: "copy" or "verify". ``counts``: ``hosts_done``,
    ``hosts_total``, ``stores_done``, ``stores_total``, ``users_done`` and ``users_total`` (for the
    current store; total None when the backend cannot tell cheaply), ``items_done`` (archive items
    read so far in this phase). Rates are the reader's to compute from its own clock.
    """

    kind: str
    host: Optional[str] = None
    store: Optional[str] = None
    user: Optional[str] = None
    counts: dict[str, Optional[int]] = field(default_factory=dict)
    phase: str = "copy"


@dataclass
class Report:
    """The result of run_migration; ``to_dict`` gives its JSON form."""

    changed: bool = False
    failed: bool = False
    stopped: bool = False
    check: bool = False
    stores: list[StoreResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    discovered: dict[str, list[str]] = field(default_factory=dict)
    verified: Optional[bool] = None
    mismatches: list[Failure] = field(default_factory=list)
    diff: list[dict[str, Any]] = field(default_factory=list)
    diff_enabled: bool = False

    def store_result(self, host: str, store: str, type_: str) -> StoreResult:
        """The result entry of a store, created on first use."""
        for result in reversed(self.stores):
            if result.host == host and result.store == store and result.type == type_:
                return result
        result = StoreResult(host, store, type_)
        self.stores.append(result)
        return result

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def totals(self) -> dict[str, int]:
        """The per-store counts summed over the run."""
        return {k: sum(getattr(r, k) for r in self.stores) for k in COUNTS}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the CLI's ``--json`` and the Ansible module's result).

        ``{"changed": bool (something was, or in check mode would be, written), "failed": bool
        (a failure, or verification found mismatches), "stopped": bool (the run ended at its first failure,
        keep_going being off), "check": bool, "stores": [{"host", "store", "type" ("keyval" or
        "archive"; a pubsub entry reports its node list as keyval and each node's items as an
        archive store), "users_created", "users_updated", "users_unchanged", "users_failed",
        "items_created", "items_updated", "items_unchanged", "items_failed"}], "totals": {the
        same counts summed}, "failures": [{"host", "store", "user" (null: host-level or the whole
        store), "scope" ("user", "host", "store"), "reason"}], "warnings": [str], "discovered":
        {host: [store entries as migrator.cfg.lua writes them, "store" or "store-archive"]},
        "verified": bool or null (not asked), "mismatches": [like failures]}``, plus, when the
        diff was asked for, ``"diff": [{"host", "store", "user", "type": "keyval", "action":
        "create" | "update", "before", "after"} | {"host", "store", "user", "type": "archive",
        "action", "items_added", "items_replaced"}]`` with secret-looking fields masked.
        """
        out: dict[str, Any] = {
            "changed": self.changed,
            "failed": self.failed,
            "stopped": self.stopped,
            "check": self.check,
            "stores": [asdict(r) for r in self.stores],
            "totals": self.totals(),
            "failures": [asdict(f) for f in self.failures],
            "warnings": list(self.warnings),
            "discovered": {h: list(s) for h, s in self.discovered.items()},
            "verified": self.verified,
            "mismatches": [asdict(m) for m in self.mismatches],
        }
        if self.diff_enabled:
            out["diff"] = [dict(d) for d in self.diff]
        return out
