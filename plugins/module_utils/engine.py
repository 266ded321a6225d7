# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy engine: moves a Prosody server's data from one storage backend to another.

``run_migration(source, destination, options)`` takes two store definitions as migrator.cfg.lua
holds them and returns a ``report.Report``. It works as Prosody's migrator does (values are
replaced, archive items replaced by key, users only in the destination are left alone) with
these differences:

* it compares with the destination first (``compare.same_value``) and writes only what differs,
  so a second run writes nothing; an archive is read once per user on each side and written in
  one ``archive_write``. As an append goes to the end, the source items after the first one that
  differs (or is out of place) are written again behind it, so the source's order is kept. A
  store the destination holds nothing of when the run comes to it (``Backend.store_empty``, the
  usual first run) is not read entry by entry: every entry is missing there. On a destination
  that held nothing of a kind at all as the run began (``Backend.kinds_empty``, asked once,
  before any worker writes), no store of that kind is asked;
* host-level data (user None) is migrated once, never again as a user called "";
* for a pubsub service (``pubsub_nodes-pubsub``) the items of each node, archive ``pubsub_<node>``
  held at host level, come along (Prosody's migrator looks for them under the wrong names);
* an absent or empty source value is nothing to migrate: the destination's value is kept
  (Prosody's migrator would delete the destination's host-level value);
* an archive item the destination cannot hold (``Backend.archive_unstorable``: a stanza with a
  control character or bytes that are not UTF-8, which XML cannot carry) is not written: it is a
  failure of its own naming the item, counted in ``items_failed``, and the user's other items
  are written (a re-run writes nothing again and fails the same items, never calls them
  unchanged). Prosody's migrator stops at such an item and loses the rest of the archive;
* a failure stops the run (or, with ``keep_going``, is recorded and the run goes on); either way
  the report comes back with ``failed`` set, ``stopped`` telling which. Errors in the setup (a
  store definition that cannot be opened, an unknown host or store name) raise instead:
  ``plan.ConfigError`` or another ``ProsodyMigrateError``.

``verify`` reads the destination back after the copy and lists what differs in
``Report.mismatches`` (``verified`` False also sets ``failed``); with ``check`` it is a verify-only
run comparing the destination as it is. Warnings come from the backends' ``warnings`` lists and
from the file store's archive quota.

Writes are batched (``Backend.start_batch``): a SQL destination commits once per BATCH_ROWS rows,
BATCH_ENTRIES entries or BATCH_SECONDS seconds, at the end of each store and of the run, each user's write under a
savepoint of its own; a file destination fsyncs what it wrote at those same points. When a
batch is lost (``WritesLost``, or a failing flush), every user written in it is a failure of its
own, taken back out of the created/updated counts; a re-run writes them again. A SQL destination
holds each batch until the flush, where an entry it refuses (``EntriesRefused``) becomes a
failure of its own in the same way, the batch's other entries being written. As one worker of
several (``Options.partition``) it does so with its own share of the users.

With ``Options.state`` (a file, state.py), an entry whose fingerprints on both sides
(``Backend.fingerprints``) are those it had when a run last found it equal, or wrote it and saw
the batch made durable, is skipped without reading it: counted unchanged, as a compare would
count it. Only the copy phase skips; verify reads everything. Nothing is recorded for an entry
that failed, has items the destination cannot hold, or was written in a batch that was lost,
nor in check mode (which still skips what the state allows).

Memory is bounded by one user's store: users are enumerated lazily and nothing is kept per host
(a SQL destination also holds one batch's rows until its flush).
"""

from __future__ import annotations

import operator
import os
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple, Optional

from . import parallel
from .backends import backend_params, open_backend
from .backends.base import ArchiveItem, Backend, EntriesRefused, Entry, RefusedEntry, WritesLost
from .compare import same_item, same_value
from .errors import ProsodyMigrateError
from .plan import ConfigError, Plan, StoreSpec, build_plan
from .report import Failure, ProgressEvent, Report, Scrubber, StoreResult, jsonable, mask_secrets
from .state import NOTHING, Record, StateError, Tracker, Written, open_state

__all__ = ["ConfigError", "Options", "ProgressEvent", "Report", "run_migration"]

# mod_storage_internal's storage_archive_item_limit default: past it Prosody stores no new items.
FILE_ARCHIVE_LIMIT = 10000
PUBSUB_SERVICE_STORE = "pubsub_nodes"  # mod_pubsub's node list; its "users" are node names
# A batch is flushed (committed, fsynced) at this many rows (keyval entries plus archive items
# written) or this many seconds, whichever comes first: a commit costs milliseconds, so these
# make it a small part of the run, while a crash loses at most this much work, which a re-run redoes.
BATCH_ROWS = 2000
BATCH_SECONDS = 2.0
# ...or this many entries: each held entry costs about a kilobyte besides its rows (its deletes,
# its record for the state), so a batch of one-row entries (accounts, vCards) stays small too.
BATCH_ENTRIES = 500
# With a state file, the users of a store are fingerprinted (and looked up in the state) this many
# at a time, ahead of copying them: one query per run of users rather than one per user.
PLAN_USERS = 200


@dataclass
class Options:
    """How to run: ``check`` writes nothing, ``diff`` records what changes, ``verify`` reads the
    destination back, ``keep_going`` records failures and goes on, ``hosts``/``stores`` narrow
    the plan, ``progress`` is called with each ProgressEvent, ``jobs`` > 1 splits the users over
    that many worker processes (parallel.py), ``state`` names the file that lets unchanged
    entries be skipped (state.py; None: every entry is compared)."""

    check: bool = False
    diff: bool = False
    verify: bool = False
    keep_going: bool = False
    hosts: Optional[Sequence[str]] = None
    stores: Optional[Sequence[str]] = None
    progress: Optional[Callable[[ProgressEvent], None]] = None
    # Worker processes sharing the users (parallel.py); a diff is always recorded by one process.
    jobs: int = 1
    # Set in a worker: (index, count) takes only the users whose name hashes to index (index 0
    # also the host-level data), and ``stop``, an Event shared by the workers, ends the run at the
    # next user once set (any worker's first failure sets it, keep_going being off).
    partition: Optional[tuple[int, int]] = None
    stop: Optional[Any] = None
    state: Optional[str] = None
    # Set in a worker by the parent: the kinds of store the destination held nothing of at all
    # as the run began (Backend.kinds_empty), taken before any worker wrote.
    empty_kinds: Optional[frozenset[str]] = None


class _Stop(Exception):
    """Internal: the first failure ends a run without keep_going."""


class _Written(NamedTuple):
    """One entry written in the open batch: the count it went into, and its archive items added
    and replaced (counted in items_created and items_updated)."""

    host: str
    store: str
    type: str
    user: Optional[str]
    counted: str
    added: int = 0
    replaced: int = 0
    record: Optional[Written] = None  # what to record in the state once the batch is durable


def _absent(value: Any) -> bool:
    """What Prosody's stores treat as no value: nil or an empty table."""
    return value is None or (isinstance(value, dict) and not value)


def _node_names(value: Any) -> list[str]:
    """The node names a pubsub node list holds: its string keys."""
    return sorted(k for k in value if isinstance(k, str)) if isinstance(value, dict) else []


class _Run:
    """One run over a plan; ``phase`` is "copy" or "verify"."""

    def __init__(
        self,
        src: Backend,
        dst: Backend,
        plan: Plan,
        options: Options,
        report: Report,
        scrub: Scrubber,
        tracker: Optional[Tracker] = None,
    ) -> None:
        self.src, self.dst, self.plan = src, dst, plan
        self.options, self.report, self.scrub = options, report, scrub
        self.tracker = tracker
        self.phase = "copy"
        self.counts: dict[str, Optional[int]] = {}
        self._results: dict[tuple[str, str, str], StoreResult] = {}
        self._dst_is_files = dst.params.get("type") == "internal"
        self._dst_root = getattr(dst, "root", None) if self._dst_is_files else None
        # The store being done, (host, store, kind), when the destination held nothing of it as it
        # began (Backend.store_empty), and the last entry taken as absent there since: see _absent_in_dst.
        self._empty: Optional[tuple[str, str, str]] = None
        self._empty_last: Optional[str] = None
        self._node_prefixes: tuple[str, ...] = ()  # of the stores the host's pubsub stores put node items in
        # The entries written since the last flush.
        self._pending: list[_Written] = []
        self._pending_rows = 0
        self.writes_kept = 0  # entries written and not taken back since (refused, or lost with a batch)
        self._batch_start = time.monotonic()

    # running ----------------------------------------------------------------------------------
    def run(self, phase: str) -> None:
        self.phase = phase
        self.counts = {
            "hosts_done": 0,
            "hosts_total": len(self.plan.hosts),
            "stores_done": 0,
            "stores_total": self.plan.store_count(),
            "users_done": 0,
            "users_total": None,
            "items_done": 0,
        }
        self._emit("start")
        if self._writing():
            self.dst.start_batch()
        try:
            for host_plan in self.plan.hosts:
                self._emit("host", host_plan.host)
                self._node_prefixes = tuple(_node_prefix(s.name) for s in host_plan.stores if s.type == "pubsub")
                for spec in host_plan.stores:
                    self._store(host_plan.host, spec)
                self.counts["hosts_done"] += 1
            self._flush()
        except _Stop:
            self._flush(stopping=True)  # what was written before the failure is kept
            raise
        finally:
            self._emit("done")

    # batches ----------------------------------------------------------------------------------
    def _writing(self) -> bool:
        return self.phase == "copy" and not self.options.check

    def _wrote(self, written: _Written, rows: int) -> None:
        """Note one entry's write; flush when the batch is full."""
        self._pending.append(written)
        self.writes_kept += 1
        self._pending_rows += rows
        if (
            self._pending_rows >= BATCH_ROWS
            or len(self._pending) >= BATCH_ENTRIES
            or time.monotonic() - self._batch_start >= BATCH_SECONDS
        ):
            self._flush()

    def _flush(self, stopping: bool = False) -> None:
        """Commit (or fsync) the batch; when that fails, every user in it fails. Entries refused
        at the flush (a batch held until then) fail alone: without keep_going the run stops here,
        at the end of the batch, not at the entry."""
        if not self._writing():
            self.scrub.forget()
            return
        try:
            self.dst.flush()
        except EntriesRefused as exc:
            for entry in exc.entries:
                self._refused(entry)
            self._durable()  # the batch's other entries were written
            if not self.options.keep_going and not stopping:
                raise _Stop from None
        except ProsodyMigrateError as exc:
            self._lose(self.scrub(str(exc)))
            if not self.options.keep_going and not stopping:
                raise _Stop from None
        else:
            self._durable()
        finally:
            if self.tracker is not None:
                self.tracker.save(force=stopping)
            self._pending.clear()
            self._pending_rows = 0
            self._batch_start = time.monotonic()
            self.scrub.forget()  # no text can quote the batch's entries any more

    def _durable(self) -> None:
        """The batch's pending entries are durable: the state may record them."""
        if self.tracker is not None:
            self.tracker.flushed([w.record for w in self._pending if w.record is not None])

    def _lose(self, reason: str) -> None:
        """The batch's writes are gone: each user in it becomes a failure, no longer created/updated."""
        if self.tracker is not None:
            self.tracker.lost()
        for written in self._pending:
            self._unwrite(written, f"written, but the batch holding the write was lost: {reason}")
        self.writes_kept -= len(self._pending)
        self._pending.clear()

    def _refused(self, entry: RefusedEntry) -> None:
        """One entry of the batch was refused when the batch was written: it alone fails."""
        reason = f"refused when its batch was written: {self.scrub(entry.reason)}"
        key = (entry.host, entry.store, entry.kind, entry.user)
        written = next((w for w in self._pending if (w.host, w.store, w.type, w.user) == key), None)
        if written is None:  # not noted as written in this batch (a backend's mistake): reported all the same
            written = _Written(entry.host, entry.store, entry.kind, entry.user, "users_failed")
            self._result(entry.host, entry.store, entry.kind).users_failed += 1
        else:
            self._pending.remove(written)
            self.writes_kept -= 1
        self._unwrite(written, reason)

    def _unwrite(self, written: _Written, reason: str) -> None:
        """An entry counted as written was not: a failure of its own, taken out of the
        created/updated counts (its items into items_failed) and counted in users_failed."""
        host, store, type_, user = written.host, written.store, written.type, written.user
        self.report.failures.append(Failure(host, store, user, reason, "host" if user is None else "user"))
        result = self._result(host, store, type_)
        if written.counted != "users_failed":
            setattr(result, written.counted, getattr(result, written.counted) - 1)
            result.users_failed += 1
        result.items_created -= written.added
        result.items_updated -= written.replaced
        result.items_failed += written.added + written.replaced

    def _emit(self, kind: str, host: Optional[str] = None, store: Optional[str] = None, user: Any = None) -> None:
        if self.options.progress is not None:
            self.options.progress(ProgressEvent(kind, host, store, user, dict(self.counts), self.phase))

    def _result(self, host: str, store: str, type_: str) -> StoreResult:
        key = (host, store, type_)
        if key not in self._results:
            self._results[key] = self.report.store_result(host, store, type_)
        return self._results[key]

    def _guard(
        self, host: str, store: str, user: Optional[str], scope: str, type_: str, action: Callable[[], Any]
    ) -> Any:
        """Run one unit of work; a ProsodyMigrateError becomes a failure (or a mismatch when verifying)."""
        try:
            return action()
        except ProsodyMigrateError as exc:
            self._failed(host, store, user, scope, type_, exc)
            return None
        finally:
            if not self._pending:
                self.scrub.forget()  # nothing held back can fail later and quote this unit's secrets

    def _failed(self, host: str, store: str, user: Optional[str], scope: str, type_: str, exc: Exception) -> None:
        """Record a unit's failure (a mismatch when verifying); _Stop unless keep_going."""
        reason = self.scrub(str(exc))
        if isinstance(exc, WritesLost):
            self._lose(reason)  # the users written before this one in the batch failed too
        if self.phase == "verify":
            self.report.mismatches.append(Failure(host, store, user, f"cannot verify: {reason}", scope))
            return
        self.report.failures.append(Failure(host, store, user, reason, scope))
        if scope != "store":
            self._result(host, store, type_).users_failed += 1
        if not self.options.keep_going:
            raise _Stop from None

    # stores -----------------------------------------------------------------------------------
    def _store(self, host: str, spec: StoreSpec) -> None:
        self.counts["users_done"], self.counts["users_total"] = 0, None
        self._emit("store", host, spec.name)
        kind = "archive" if spec.type == "archive" else "keyval"
        if self.phase == "copy":
            self._result(host, spec.name, kind)
        self._empty, self._empty_last = None, None
        try:
            if self._empty_at_start(spec.name, kind) or self.dst.store_empty(host, spec.name, kind):
                self._empty = (host, spec.name, kind)
        except ProsodyMigrateError:
            pass  # unknown: each entry is read, and a failure to read it is reported there
        if spec.type == "archive":
            self._archive_store(host, spec.name)
        else:
            self._keyval_store(host, spec.name, spec.type == "pubsub")
        self._flush()
        if self.tracker is not None:
            self.tracker.save()
            self.tracker.forget()
        self.counts["stores_done"] += 1
        self._emit("store_done", host, spec.name)

    def _users(
        self, host: str, store: str, type_: str, list_users: Callable[[], Iterator[str]], planned: bool = False
    ) -> Iterator[str]:
        """A store's users, read lazily; a failure to list them is a store-level failure.

        ``planned``: with a state, PLAN_USERS users at a time are taken ahead and planned
        (Tracker.plan); a failure to list the rest comes after those taken are done."""
        users = self._guard(host, store, None, "store", type_, lambda: iter(list_users()))
        if users is None:
            return
        hint = operator.length_hint(users, -1)
        self.counts["users_total"] = hint if hint >= 0 else None
        ahead = PLAN_USERS if planned and self._planning() else 1
        exhausted, failed = False, None
        while not exhausted:
            taken: list[str] = []
            while len(taken) < ahead:
                try:
                    user = next(users)
                except StopIteration:
                    exhausted = True
                    break
                except ProsodyMigrateError as exc:
                    exhausted, failed = True, exc
                    break
                if self._mine(user):
                    taken.append(user)
            if planned:
                self._plan_entries(host, store, type_, list(taken))
            for user in taken:
                if self.options.stop is not None and self.options.stop.is_set():
                    raise _Stop  # another worker failed
                yield user
                self.counts["users_done"] += 1
                self._emit("user", host, store, user)
        if failed is not None:
            self._guard(host, store, None, "store", type_, lambda: _raise(failed))

    def _empty_at_start(self, store: str, kind: str) -> bool:
        """Whether the destination held nothing of this kind as the run began, and nothing this
        run wrote since can be in this store: other workers write other users (worker 0 alone the
        host-level data), this process each store once, in its turn, but for a pubsub store's node
        items, which go to stores of their own. Spares a query that reads every row of the host
        on MySQL (no index leads with the store), with other stores' rows there by now."""
        if self.phase != "copy" or kind not in (self.options.empty_kinds or ()):
            return False
        return not store.startswith(self._node_prefixes)

    def _planning(self) -> bool:
        return self.tracker is not None and self.tracker.active and self.phase == "copy"

    def _plan_entries(self, host: str, store: str, kind: str, users: list[Optional[str]]) -> None:
        """Decide which of the entries ahead to skip (with a state, copying only)."""
        if not users or not self._planning():
            return
        may_hold = self._empty != (host, store, kind) and not self._dst_missing()
        try:
            self.tracker.plan(host, store, kind, users, may_hold)  # type: ignore[union-attr]
        except WritesLost as exc:
            # The destination lost the batch while answering: the batch's users failed.
            self._lose(self.scrub(str(exc)))
            if not self.options.keep_going:
                raise _Stop from None

    def _skipped(self, entry: Entry) -> Optional[Record]:
        """The state's record of an entry to skip, else None."""
        if self.tracker is None or self.phase != "copy":
            return None
        return self.tracker.skip(entry)

    def _mine(self, user: str) -> bool:
        """Whether this run takes the user: always, unless it is one worker of several."""
        if self.options.partition is None:
            return True
        index, count = self.options.partition
        return zlib.crc32(user.encode("utf-8", "surrogateescape")) % count == index

    def _host_level(self) -> bool:
        """Whether this run takes the host-level data (one worker of several: the first)."""
        return self.options.partition is None or self.options.partition[0] == 0

    def _takes_host_entry(self, archive: str) -> bool:
        """Whether this run takes the archive's host-level entry: the first worker, but for a
        pubsub service's node items in the plan, the worker of the node, which writes them with
        the node list (two workers writing the one entry would double its items)."""
        prefix = _node_prefix(PUBSUB_SERVICE_STORE)
        if archive.startswith(prefix) and prefix in self._node_prefixes:
            return self._mine(archive[len(prefix) :])
        return self._host_level()

    def _keyval_store(self, host: str, store: str, pubsub: bool) -> None:
        # A pubsub node list is never skipped: its value names the nodes whose items come along.
        service = pubsub and store == PUBSUB_SERVICE_STORE
        prefix = _node_prefix(store)
        if self._host_level():
            if not pubsub:
                self._plan_entries(host, store, "keyval", [None])
            value = self._guard(host, store, None, "host", "keyval", lambda: self._keyval(host, store, None))
            if pubsub and not service:
                self._node_items(host, prefix, _node_names(value), None)
        listed = self._users(host, store, "keyval", lambda: self.src.keyval_users(host, store), not pubsub)
        for user in listed:
            value = self._guard(host, store, user, "user", "keyval", lambda u=user: self._keyval(host, store, u))
            if service:
                # mod_pubsub: the node list's "user" is the node, its items are host-level data.
                self._node_items(host, prefix, [user], None)
            elif pubsub:
                # mod_pep: the account's node list; each node's items are in that account's archive.
                self._node_items(host, prefix, _node_names(value), user)

    def _node_items(self, host: str, prefix: str, nodes: list[str], user: Optional[str]) -> None:
        for node in nodes:
            store = prefix + node
            self._plan_entries(host, store, "archive", [user])
            self._guard(
                host,
                store,
                user,
                "host" if user is None else "user",
                "archive",
                lambda s=store: self._archive(host, s, user),
            )

    def _archive_store(self, host: str, store: str) -> None:
        if self._takes_host_entry(store):
            self._plan_entries(host, store, "archive", [None])
            self._guard(host, store, None, "host", "archive", lambda: self._archive(host, store, None))
        for user in self._users(host, store, "archive", lambda: self.src.archive_users(host, store), True):
            self._guard(host, store, user, "user", "archive", lambda u=user: self._archive(host, store, u))

    def _dst_missing(self) -> bool:
        """Whether the destination is a file store not created yet (read as empty, not an error:
        the internal backend refuses to read a missing data directory, rightly so for a source).
        Once there, it is taken to stay: asked for every entry, the stat was 1% of a run."""
        if self._dst_root is None:
            return False
        if os.path.isdir(self._dst_root):
            self._dst_root = None
            return False
        return True

    def _absent_in_dst(self, host: str, store: str, kind: str, user: Optional[str]) -> bool:
        """Whether the destination surely holds nothing for this entry, without reading it.

        So when its store was empty as it began (the usual first run) and this run wrote nothing
        to the entry since: the run writes each entry of a store once, in the order the source
        lists them, host-level data first. That order is checked rather than trusted (a source
        listing a user twice, or a user "" that SQL keeps as host-level data, ends the shortcut
        for the rest of the store), so it needs no memory of the users written. Only the store's
        own entries qualify: a pubsub node's items are another store, read as ever.
        """
        if self._empty != (host, store, kind):
            return False
        rank = "" if user is None else user
        if user == "" or (self._empty_last is not None and rank <= self._empty_last):
            self._empty = None
            return False
        self._empty_last = rank
        return True

    def _dst_get(self, host: str, store: str, user: Optional[str]) -> Any:
        if self._dst_missing() or self._absent_in_dst(host, store, "keyval", user):
            return None
        return self.dst.keyval_get(host, store, user)

    def _dst_items(self, host: str, store: str, user: Optional[str]) -> Iterator[ArchiveItem]:
        if self._dst_missing() or self._absent_in_dst(host, store, "archive", user):
            return iter(())
        return self.dst.archive_items(host, store, user)

    # keyval -----------------------------------------------------------------------------------
    def _keyval(self, host: str, store: str, user: Optional[str]) -> Any:
        """Copy (or verify) one keyval value; returns the source's value (None when skipped)."""
        entry = (host, store, "keyval", user)
        skipped = self._skipped(entry)
        if skipped is not None:
            if skipped is not NOTHING or user is not None:  # as an absent value is counted below
                self._result(host, store, "keyval").users_unchanged += 1
            return None
        return self._untracked_on_failure(entry, self._keyval_compared)

    def _untracked_on_failure(self, entry: Entry, compare: Callable[[Entry], Any]) -> Any:
        """``compare(entry)``; when it raises, the state records nothing for the entry."""
        try:
            return compare(entry)
        except BaseException:
            if self.tracker is not None:
                self.tracker.failed(entry)
            raise

    def _keyval_compared(self, entry: Entry) -> Any:
        host, store, _kind, user = entry
        value = self.src.keyval_get(host, store, user)
        self.scrub.learn(value)
        if _absent(value):
            if user is not None and self.phase == "copy":
                self._result(host, store, "keyval").users_unchanged += 1
            return None
        current = self._dst_get(host, store, user)
        self.scrub.learn(current)
        same = same_value(value, current)
        if self.phase == "verify":
            if not same:
                what = "is missing from" if _absent(current) else "differs in"
                self._mismatch(host, store, user, f"the value {what} the destination")
            return value
        result = self._result(host, store, "keyval")
        if same:
            result.users_unchanged += 1
            if self.tracker is not None:
                self.tracker.equal(entry)
            return value
        created = _absent(current)
        if not self.options.check:
            self.dst.keyval_set(host, store, user, value, absent=current is None)
        if created:
            result.users_created += 1
        else:
            result.users_updated += 1
        self.report.changed = True
        if self.options.diff:
            self.report.diff.append(
                {
                    "host": host,
                    "store": store,
                    "user": user,
                    "type": "keyval",
                    "action": "create" if created else "update",
                    "before": None if created else jsonable(mask_secrets(current)),
                    "after": jsonable(mask_secrets(value)),
                }
            )
        if not self.options.check:
            # A table is a row per field in SQL: a batch of 2000 rosters was 60,000 rows, held for replay.
            rows = len(value) if isinstance(value, dict) else 1
            record = self.tracker.written(entry, True) if self.tracker is not None else None
            counted = "users_created" if created else "users_updated"
            self._wrote(_Written(host, store, "keyval", user, counted, record=record), rows)
        return value

    def _mismatch(self, host: str, store: str, user: Optional[str], reason: str) -> None:
        self.report.mismatches.append(Failure(host, store, user, reason, "user" if user is not None else "host"))

    # archives ---------------------------------------------------------------------------------
    def _source_items(self, host: str, store: str, user: Optional[str]) -> dict[str, ArchiveItem]:
        """One user's source items by key, in order; a repeated key keeps its last item, moved to
        the end, as the destination's append leaves it."""
        items: dict[str, ArchiveItem] = {}
        for item in self.src.archive_items(host, store, user):
            items.pop(item.key, None)
            items[item.key] = item
            self.counts["items_done"] += 1
        return items

    def _archive(self, host: str, store: str, user: Optional[str]) -> None:
        """Copy (or verify) one user's archive: read both sides once, write what differs at once."""
        entry = (host, store, "archive", user)
        record = self._skipped(entry)
        if record is NOTHING:
            return  # nothing held here, as for an empty archive below
        if record is not None:
            result = self._result(host, store, "archive")
            result.users_unchanged += 1
            result.items_unchanged += record.items
            self._quota_warning(host, store, user, record.dst_items)
            return
        self._untracked_on_failure(entry, self._archive_compared)

    def _archive_compared(self, entry: Entry) -> None:
        host, store, _kind, user = entry
        wanted = self._source_items(host, store, user)
        if not wanted:
            return  # nothing held here, at host level or for a node without items
        current = {item.key: item for item in self._dst_items(host, store, user)}
        added = [key for key in wanted if key not in current]
        replaced = [key for key, item in wanted.items() if key in current and not same_item(item, current[key])]
        if self.phase == "verify":
            self._verify_archive(host, store, user, wanted, current, added, replaced)
            return
        result = self._result(host, store, "archive")
        unstorable = self._unstorable(host, store, user, wanted, added + replaced)
        if unstorable:
            added = [key for key in added if key not in unstorable]
            replaced = [key for key in replaced if key not in unstorable]
        new = _tail(wanted, set(added) | set(replaced), current)
        self._quota_warning(host, store, user, len(current) + len(added))
        if new:
            try:
                if not self.options.check:
                    self.dst.archive_write(host, store, user, new, absent=not current)
            except ProsodyMigrateError:
                result.items_failed += len(added) + len(replaced)
                raise
            self.report.changed = True
            if self.options.diff:
                self.report.diff.append(
                    {
                        "host": host,
                        "store": store,
                        "user": user,
                        "type": "archive",
                        "action": "update" if current else "create",
                        "items_added": len(added),
                        "items_replaced": len(replaced),
                    }
                )
        result.items_created += len(added)
        result.items_updated += len(replaced)
        result.items_unchanged += len(wanted) - len(added) - len(replaced)
        if unstorable:
            counted = "users_failed"
        elif not new:
            counted = "users_unchanged"
        else:
            counted = "users_updated" if current else "users_created"
        setattr(result, counted, getattr(result, counted) + 1)
        record = None
        if self.tracker is not None:
            # What a skip of this entry would report: its items, and the destination's for the quota.
            counted_items = (len(wanted), len(current) + len(added))
            if unstorable:
                self.tracker.failed(entry)  # a re-run must fail those items again
            elif not new:
                self.tracker.equal(entry, *counted_items)
            elif not self.options.check:
                record = self.tracker.written(entry, not current, *counted_items)
        if new and not self.options.check:
            self._wrote(_Written(host, store, "archive", user, counted, len(added), len(replaced), record), len(new))
        if unstorable and not self.options.keep_going:
            # The rest of the archive is written; the user still counts as failed, and the run
            # stops here unless told to keep going, as for any other failure.
            raise _Stop

    def _unstorable(
        self, host: str, store: str, user: Optional[str], wanted: dict[str, ArchiveItem], keys: list[str]
    ) -> dict[str, str]:
        """Take out of ``wanted`` the items (among ``keys``, those to write) that the destination
        cannot hold, each recorded as a failure and counted in ``items_failed``; returns them."""
        if not keys:
            return {}
        found = self.dst.archive_unstorable(host, store, user, [wanted[key] for key in keys])
        scope = "host" if user is None else "user"
        for key, reason in found.items():
            wanted.pop(key, None)
            self.report.failures.append(Failure(host, store, user, self.scrub(reason), scope))
        self._result(host, store, "archive").items_failed += len(found)
        return found

    def _verify_archive(
        self,
        host: str,
        store: str,
        user: Optional[str],
        wanted: dict[str, ArchiveItem],
        current: dict[str, ArchiveItem],
        added: list[str],
        replaced: list[str],
    ) -> None:
        if added or replaced:
            self._mismatch(
                host,
                store,
                user,
                f"{len(added)} of {len(wanted)} items missing from the destination and {len(replaced)} "
                f"different (first: key {(added or replaced)[0]!r})",
            )
        elif [key for key in current if key in wanted] != list(wanted):
            self._mismatch(host, store, user, "the destination holds the items in a different order")

    def _quota_warning(self, host: str, store: str, user: Optional[str], count: int) -> None:
        if self._dst_is_files and count >= FILE_ARCHIVE_LIMIT:
            whose = "the host-level archive" if user is None else f"user {user!r}"
            self.report.warn(
                f"host {host!r}, store {store!r}: {whose} holds {count} items in the file store; Prosody adds no "
                f"new items to an archive holding storage_archive_item_limit (default {FILE_ARCHIVE_LIMIT}) or more"
            )


def _node_prefix(store: str) -> str:
    """What a pubsub store's node names follow in the names of their item archives."""
    return "pubsub_" if store == PUBSUB_SERVICE_STORE else store + "_"


def _raise(exc: BaseException) -> Any:
    raise exc


def _tail(wanted: dict[str, ArchiveItem], changed: set[str], current: dict[str, ArchiveItem]) -> list[ArchiveItem]:
    """The items to write: from the first one that differs on, every source item, in order.

    An append goes to the end of the destination's archive, so items after a changed one are
    written again behind it to keep the source's order; when the destination's order already
    differs from the source's, the items from the first out-of-place one on are written too.
    """
    keys = list(wanted)
    start = next((i for i, key in enumerate(keys) if key in changed), len(keys))
    held = [key for key in current if key in wanted]
    # The destination's own order of the source's items agrees with the source up to `agree`.
    agree = next((i for i, (a, b) in enumerate(zip(held, keys)) if a != b), min(len(held), len(keys)))
    if start == len(keys) and agree >= len(held):
        return []
    return [wanted[key] for key in keys[min(start, agree) :]]


def _collect_warnings(report: Report, scrub: Scrubber, *backends: Optional[Backend]) -> None:
    for backend in backends:
        for message in getattr(backend, "warnings", None) or ():
            report.warn(scrub(str(message)))


def _new_report(source: Mapping[str, Any], destination: Mapping[str, Any], options: Options) -> tuple[Report, Scrubber]:
    report = Report(check=options.check, diff_enabled=options.diff)
    scrub = Scrubber()
    for definition in (source, destination):
        scrub.add(backend_params(definition).get("password"))
    return report, scrub


@contextmanager
def _opened(
    source: Mapping[str, Any], destination: Mapping[str, Any], options: Options, report: Report, scrub: Scrubber
) -> Iterator[tuple[Backend, Backend, Plan]]:
    """Both stores open and the plan built; on the way out, their warnings collected and both closed."""
    src = dst = None
    try:
        src = open_backend(source)
        src.check_source()
        dst = open_backend(destination)
        plan = build_plan(backend_params(source), src, options.hosts, options.stores)
        report.discovered = plan.discovered
        yield src, dst, plan
    finally:
        _collect_warnings(report, scrub, src, dst)
        for backend in (dst, src):
            if backend is not None:
                try:
                    backend.close()
                except ProsodyMigrateError as exc:  # the run's own flush reported it already
                    report.warn(scrub(str(exc)))


def _planned(
    source: Mapping[str, Any], destination: Mapping[str, Any], options: Options
) -> tuple[Report, dict[str, Any]]:
    """The report a parallel run starts from, both stores opened (a bad one raises) and planned,
    and the options its workers share (what the destination held as the run began)."""
    report, scrub = _new_report(source, destination, options)
    with _opened(source, destination, options, report, scrub) as (_src, dst, _plan):
        report.changed = _prepare(dst, options)
        empty_kinds = _kinds_empty(dst)
    return report, {"empty_kinds": empty_kinds}


def _prepare(dst: Backend, options: Options) -> bool:
    """The destination made ready for the run's writers (Backend.prepare_writes), but in check
    mode; whether that changed it. Its indexes wait for finish_writes unless the run verifies too: each
    worker verifies its own share once it has copied it, and those reads need them."""
    if options.check:
        return False
    # On failure, each writer's writes meet the same error and report it per entry.
    with suppress(ProsodyMigrateError):
        return dst.prepare_writes(defer_indexes=not options.verify)
    return False


def _kinds_empty(dst: Backend) -> frozenset[str]:
    """Backend.kinds_empty, or none when the destination cannot say (each store is asked then)."""
    try:
        return dst.kinds_empty()
    except ProsodyMigrateError:
        return frozenset()


def _tracker(
    source: Mapping[str, Any],
    destination: Mapping[str, Any],
    options: Options,
    src: Backend,
    dst: Backend,
    report: Report,
    scrub: Scrubber,
) -> Optional[Tracker]:
    """The state file's tracker, or None (no state asked for, none yet in check mode, or unusable:
    then a warning, and every entry is compared)."""
    if options.state is None:
        return None
    try:
        state = open_state(options.state, source, destination, writable=not options.check)
    except StateError as exc:
        report.warn(scrub(f"{exc}; this run compares every entry (no skipping of unchanged entries)"))
        return None
    if state is None:
        return None
    return Tracker(state, src, dst, lambda message: report.warn(scrub(message)))


def run_migration(
    source: Mapping[str, Any], destination: Mapping[str, Any], options: Optional[Options] = None
) -> Report:
    """Migrate what the source definition's plan names into the destination; see the module notes."""
    options = options or Options()
    if options.jobs > 1 and options.partition is None and not options.diff:
        report = parallel.run(source, destination, options, options.jobs, run_migration, _planned)
        if not options.check:  # after every worker's last write, what prepare_writes deferred
            with open_backend(destination) as dst:
                report.changed = dst.finish_writes() or report.changed
        return report
    own = options.partition is None  # else the parent prepares and finishes for its workers
    report, scrub = _new_report(source, destination, options)
    with _opened(source, destination, options, report, scrub) as (src, dst, plan):
        prepared = own and _prepare(dst, options)
        tracker = _tracker(source, destination, options, src, dst, report, scrub)
        if options.empty_kinds is None:
            options = replace(options, empty_kinds=_kinds_empty(dst))
        run = _Run(src, dst, plan, options, report, scrub, tracker)
        try:
            run.run("copy")
            if options.verify:
                run.run("verify")
                report.verified = not report.mismatches
        except _Stop:
            report.stopped = True
            if options.stop is not None:
                options.stop.set()  # the other workers stop at their next user
        finally:
            if tracker is not None:
                tracker.close()
        if not options.check and run.writes_kept == 0:
            report.changed = False  # every write was taken back (refused when its batch went in, or lost)
        report.changed = report.changed or prepared
        if own and not options.check:
            report.changed = dst.finish_writes() or report.changed
    report.failed = bool(report.failures) or report.verified is False
    return report
