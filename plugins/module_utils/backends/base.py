# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one small interface every storage backend gives the engine.

Names follow Prosody: a *host* (``example.com``), a *store* (``roster``, ``archive``), a *user*
(the local part, ``None`` for host-level data). Values are in the luadata model; archive
values are usually ``stanza.Element``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ProsodyMigrateError

# One entry: (host, store, kind "keyval" or "archive", user or None for the host-level entry).
Entry = tuple[str, str, str, Optional[str]]
# The fingerprint of an entry that is not there (no file, no row).
ABSENT = "absent"


class WritesLost(ProsodyMigrateError):
    """The writes held back since the last ``flush`` are gone (the connection dropped and could
    not be re-done on a new one, or the commit failed): every user written since then failed."""


@dataclass(frozen=True)
class RefusedEntry:
    """One entry (``kind`` "keyval" or "archive") the destination refused when its batch was written."""

    host: str
    store: str
    kind: str
    user: str | None
    reason: str


class EntriesRefused(ProsodyMigrateError):
    """Raised by ``flush`` of a batch held back until then (a SQL destination's): the
    destination refused these entries as the batch was written, each undone alone; the batch's
    other writes are durable."""

    def __init__(self, entries: list[RefusedEntry]) -> None:
        self.entries = list(entries)
        super().__init__(
            "; ".join(f"host {e.host!r}, store {e.store!r}, user {e.user!r}: {e.reason}" for e in self.entries)
        )


@dataclass(frozen=True)
class ArchiveItem:
    """One archived item as Prosody keeps it: its key, value (a stanza), time and peer."""

    key: str
    value: Any
    when: int | float
    with_: str | None = None


class Backend(abc.ABC):
    """A storage backend opened from a store definition (a migrator.cfg.lua entry)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)
        # Things found in the data that the user should hear about (never secrets).
        self.warnings: list[str] = []

    # keyval stores -------------------------------------------------------------------------
    @abc.abstractmethod
    def keyval_users(self, host: str, store: str) -> Iterator[str]:
        """Users holding a value in this keyval store (never the host-level entry)."""

    @abc.abstractmethod
    def keyval_get(self, host: str, store: str, user: str | None) -> Any:
        """One user's value (``user=None``: the host-level value); None when absent."""

    @abc.abstractmethod
    def keyval_set(self, host: str, store: str, user: str | None, value: Any, absent: bool = False) -> None:
        """Replace one user's value; None or an empty table removes it, as Prosody does. ``absent``:
        the caller knows the destination holds nothing of this entry, so nothing needs replacing."""

    # archive stores ------------------------------------------------------------------------
    @abc.abstractmethod
    def archive_users(self, host: str, store: str) -> Iterator[str]:
        """Users with at least one item in this archive store."""

    @abc.abstractmethod
    def archive_items(self, host: str, store: str, user: str | None) -> Iterator[ArchiveItem]:
        """One user's items, oldest first (the order Prosody returns them)."""

    def archive_keys(self, host: str, store: str, user: str | None) -> list[str]:
        """The keys of one user's items, in order; backends override this with a cheaper query."""
        return [item.key for item in self.archive_items(host, store, user)]

    def archive_unstorable(
        self, host: str, store: str, user: str | None, items: Iterable[ArchiveItem]
    ) -> dict[str, str]:
        """The items (by key) this destination cannot hold, each with a message naming the host,
        store, user, item and reason; the engine writes the others and fails these alone. The
        default, for a backend that holds any item (the file store), is none."""
        return {}

    @abc.abstractmethod
    def archive_write(
        self, host: str, store: str, user: str | None, items: Iterable[ArchiveItem], absent: bool = False
    ) -> None:
        """Append items in one transaction; an item whose key exists replaces the old one. ``absent``:
        the caller knows the destination holds no item of this archive, so nothing needs replacing."""

    # both kinds ----------------------------------------------------------------------------
    def store_empty(self, host: str, store: str, kind: str) -> bool:
        """Whether the store (``kind`` "keyval" or "archive") surely holds nothing for this host,
        no user's entry and no host-level one. False means it may hold something: the default,
        for a backend that cannot tell cheaply; the engine then reads each entry."""
        return False

    def kinds_empty(self) -> frozenset[str]:
        """The kinds of store ("keyval", "archive") this backend surely holds nothing of, for any
        host; none for a backend that cannot tell cheaply."""
        return frozenset()

    def fingerprints(self, entries: Sequence[Entry]) -> dict[Entry, str | None]:
        """A token per entry that changes whenever the entry's content changes: ABSENT when the
        entry is not there, None when this backend cannot tell (the entry is then always compared).

        Two equal tokens of an entry mean its content is the same; different tokens need not mean
        it differs. The engine skips an entry whose tokens on both sides are those it had when last
        found equal (state.py). The default, for a backend that cannot tell cheaply: None for all.
        """
        return {entry: None for entry in entries}

    def track_writes(self) -> None:  # noqa: B027 - optional: the default notes nothing
        """From now on, note what each write leaves, for ``written_fingerprints``."""

    def written_fingerprints(self, entries: Sequence[Entry]) -> dict[Entry, str | None]:
        """The fingerprints ``fingerprints`` would give now for entries whose last write replaced
        all of their content and is durable, computed from what was written, without reading;
        None where this backend cannot tell (the default: then ``fingerprints`` is asked). Each
        call forgets every write noted before it."""
        return {entry: None for entry in entries}

    def fingerprint_reads(self, entries: Sequence[Entry]) -> bool:
        """Note the fingerprints of these entries (and no others) as their reads go, for
        ``read_fingerprint``, in place of a query of their own; what was noted before is dropped.
        False when this backend cannot (the default: ``fingerprints`` is then asked)."""
        return False

    def read_fingerprint(self, entry: Entry) -> str | None:
        """The fingerprint ``fingerprints`` would give for the entry, from its rows as its last
        complete read (``fingerprint_reads``) got them, once; None when none was noted."""
        return None

    # batching ------------------------------------------------------------------------------
    def prepare_writes(self, defer_indexes: bool = False) -> bool:
        """Create what writing needs (a SQL schema's tables) ahead of time, so that parallel
        writers do not race to create it; whether that changed anything. ``defer_indexes``: what
        only speeds up reads (a SQL table's indexes) may wait for ``finish_writes``, where building
        it then is quicker."""
        return False

    def finish_writes(self) -> bool:
        """After a run's last write (every worker's), build what ``prepare_writes`` deferred;
        whether there was anything to build."""
        return False

    def start_batch(self) -> None:  # noqa: B027 - optional: a backend may always write through
        """From now on, writes may be held back (uncommitted, or not yet fsynced) until ``flush``.

        Each write stays all-or-nothing; ``close`` without ``flush`` drops what is held back,
        as a killed run would. Without this call every write is durable when it returns.
        """

    def flush(self) -> None:  # noqa: B027 - nothing held back by default
        """Make every write since the last flush durable; WritesLost (or another
        ProsodyMigrateError) when they could not be: then none of them is to be counted on.

        EntriesRefused when the writes were held back until now and the destination refused some
        of them: those alone failed (each named), every other write of the batch is durable.
        """

    def check_source(self) -> None:  # noqa: B027 - most backends find out when they are read
        """Raise a ProsodyMigrateError when this store, opened to be read from, is not there at
        all (rather than reading as empty: a mistyped path must not be a run with nothing to do)."""

    # discovery -----------------------------------------------------------------------------
    def hosts(self) -> Iterator[str]:
        """Hosts present in this backend, where it can enumerate them."""
        raise NotImplementedError(f"{type(self).__name__} cannot list hosts")

    def stores(self, host: str) -> Iterator[tuple[str, str]]:
        """(store, type) pairs present for a host, type being 'keyval' or 'archive'."""
        raise NotImplementedError(f"{type(self).__name__} cannot list stores")

    def close(self) -> None:  # noqa: B027 - an optional hook, not every backend holds resources
        """Release connections and files."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
