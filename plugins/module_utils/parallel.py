# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migration run split over worker processes, each migrating its share of the users.

Reading Prosody's files and converting stanzas is CPU work in Python, so one process uses one
core however fast the storage is. ``run`` forks ``jobs`` workers; worker i runs the ordinary
engine over the whole plan but takes only the users whose name hashes to i (``partition``), and
worker 0 also the host-level data. Every worker reads and writes through its own backends (its
own database connection, its own batches), so nothing is shipped between processes but progress
events and, at the end, each worker's report, which ``run`` adds up into one. A SQL destination
holds each batch until the batch ends and writes it then in one short transaction, so that on
SQLite3, which takes one writer at a time, the workers' reading overlaps instead of waiting on
the lock.

Before forking, the parent opens both stores and builds the plan once: a bad definition, an
unknown store or a wrong password fails there, as in a single-process run, and a SQL
destination's tables are created once rather than raced for. Without ``keep_going`` the first
failure in any worker stops every worker at its next user (a shared event); what the others
wrote before that is kept, as a single process keeps what it wrote before a failure.

Workers are forked (the engine is often running inside an Ansible module, whose code cannot be
re-imported by a fresh interpreter), before any connection of the parent is open.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Optional

from .errors import ProsodyMigrateError
from .report import ProgressEvent, Report, StoreResult

# More workers than cores only add contention; past a few, the database server is the limit.
MAX_JOBS = 4
_POLL = 0.5  # seconds between checks that the workers are still alive
_EVENT_INTERVAL = 0.2  # a worker forwards "user" events at most this often


def default_jobs() -> int:
    """One worker per core, up to MAX_JOBS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_JOBS))


class WorkerError(ProsodyMigrateError):
    """A worker process could not run, or died."""


def run(
    source: Any,
    destination: Any,
    options: Any,
    jobs: int,
    single: Callable[[Any, Any, Any], Report],
    prepare: Callable[[Any, Any, Any], tuple[Report, dict[str, Any]]],
) -> Report:
    """Run ``single`` (engine.run_migration) in ``jobs`` workers and return the reports added up.

    ``prepare`` opens both stores and builds the plan in the parent (raising what a bad
    definition raises), and returns the report skeleton (discovered stores) the merge starts
    from and the options every worker takes from the parent besides its share.
    """
    merged, shared = prepare(source, destination, options)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    channel = ctx.Queue()
    workers = []
    for index in range(jobs):
        worker_options = replace(
            options,
            **shared,
            jobs=1,
            partition=(index, jobs),
            stop=stop,
            progress=_Forward(channel, index) if options.progress is not None else None,
        )
        process = ctx.Process(
            target=_work,
            args=(channel, index, single, source, destination, worker_options),
            name=f"prosody-migrator worker {index}",
            daemon=True,
        )
        workers.append(process)
    for stream in (sys.stdout, sys.stderr):  # a child would write out a copy of what is buffered
        if stream is not None:
            stream.flush()
    try:
        for process in workers:
            process.start()
        reports = _collect(channel, workers, options.progress, stop)
    finally:
        stop.set()
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        channel.close()
    return _merge(merged, reports)


def _work(channel: Any, index: int, single: Callable[..., Report], source: Any, destination: Any, options: Any) -> None:
    """A worker's whole life: one partition's run, its report (or its error) sent back."""
    try:
        report = single(source, destination, options)
    except ProsodyMigrateError as exc:
        channel.put(("error", index, str(exc)))
    except BaseException as exc:  # a worker reports whatever ended it (a bug, Ctrl-C)
        channel.put(("error", index, f"{type(exc).__name__}: {exc}"))
    else:
        channel.put(("report", index, report))
    channel.close()
    channel.join_thread()


class _Forward:
    """A worker's progress callback: sends events to the parent, "user" ones at most every 0.2 s.

    A "user" event held back is sent before the worker's next other event: the parent adds up
    the workers' counts from "user" events, so a store's last one must not be lost.
    """

    def __init__(self, channel: Any, index: int) -> None:
        self.channel, self.index = channel, index
        self.last = 0.0
        self.held: Optional[ProgressEvent] = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "user":
            now = time.monotonic()
            if now - self.last < _EVENT_INTERVAL:
                self.held = event
                return
            self.last = now
        elif self.held is not None:
            self.channel.put(("event", self.index, self.held))
        self.held = None
        self.channel.put(("event", self.index, event))


def _collect(
    channel: Any, workers: list[Any], progress: Optional[Callable[[ProgressEvent], None]], stop: Any
) -> list[Report]:
    """Wait for every worker's report, passing progress on; a worker's error stops them all."""
    reports: dict[int, Report] = {}
    combined = _Progress(progress, len(workers))
    errors: list[str] = []
    while len(reports) + len(errors) < len(workers):
        try:
            kind, index, payload = channel.get(timeout=_POLL)
        except queue.Empty:
            dead = [i for i, p in enumerate(workers) if p.exitcode is not None and i not in reports]
            if dead and channel.empty():
                # Exited without a word (killed): whatever it had not committed is lost; run()
                # stops the others on the way out.
                code = workers[dead[0]].exitcode
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                message = f"worker process {dead[0]} {how} before it finished its share of the users"
                raise WorkerError(message) from None
            continue
        if kind == "event":
            combined(index, payload)
        elif kind == "report":
            reports[index] = payload
        else:
            stop.set()
            errors.append(payload)
    if errors:
        raise WorkerError(errors[0])
    return [reports[i] for i in sorted(reports)]


_ENDS = frozenset({"store_done", "done"})  # progress events that end a step of the plan


class _Progress:
    """Worker events as one run's: counts added up over the workers. The end of a step (a store
    done, the run done) is told once every worker has got there, after all their "user" events
    of that step, so it carries the whole count."""

    def __init__(self, progress: Optional[Callable[[ProgressEvent], None]], jobs: int) -> None:
        self.progress = progress
        self.users: dict[tuple[str, Any, Any], list[int]] = {}
        self.items: dict[str, list[int]] = {}
        self.reached: dict[tuple[str, str, Any, Any], int] = {}
        self.jobs = jobs

    def __call__(self, index: int, event: ProgressEvent) -> None:
        if self.progress is None:
            return
        counts = dict(event.counts)
        users = self.users.setdefault((event.phase, event.host, event.store), [0] * self.jobs)
        users[index] = counts.get("users_done") or 0
        items = self.items.setdefault(event.phase, [0] * self.jobs)
        items[index] = counts.get("items_done") or 0
        if event.kind != "user":
            # The plan's steps are the same in every worker: one that begins something is told
            # when the first worker gets there, one that ends it when the last does.
            step = (event.kind, event.phase, event.host, event.store)
            self.reached[step] = reached = self.reached.get(step, 0) + 1
            if reached == self.jobs:
                del self.reached[step]
            if reached != (self.jobs if event.kind in _ENDS else 1):
                return
        counts["users_done"], counts["items_done"] = sum(users), sum(items)
        self.progress(replace(event, counts=counts))


def _merge(merged: Report, reports: list[Report]) -> Report:
    """The workers' reports as one: counts added, lists joined, flags combined."""
    for report in reports:
        merged.changed = merged.changed or report.changed
        merged.stopped = merged.stopped or report.stopped
        _add_stores(merged.stores, report.stores)
        merged.failures.extend(report.failures)
        merged.mismatches.extend(report.mismatches)
        for warning in report.warnings:
            merged.warn(warning)
    verified = [r.verified for r in reports if r.verified is not None]
    merged.verified = all(verified) if verified else None
    merged.failed = bool(merged.failures) or merged.verified is False
    return merged


def _add_stores(totals: list[StoreResult], results: list[StoreResult]) -> None:
    """Add a worker's per-store counts into ``totals``, keeping the plan's order of stores.

    Every worker goes through the plan in the same order, but a pubsub node's items appear only
    in the workers whose users have that node: a store new to ``totals`` goes right after the
    store that came before it in this worker's list.
    """
    index = {(r.host, r.store, r.type): i for i, r in enumerate(totals)}
    at = -1
    for result in results:
        key = (result.host, result.store, result.type)
        if key not in index:
            totals.insert(at + 1, StoreResult(*key))
            index = {(r.host, r.store, r.type): i for i, r in enumerate(totals)}
        at = index[key]
        totals[at].add(result)
