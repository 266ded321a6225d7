# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs split over worker processes (Options.jobs): the same data, counts and failures as one process."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import fsutil, parallel
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils import test_engine as engine_tests
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_engine import (
    HOST,
    _corrupt,
    assert_same_data,
    counts,
    migrate,
)

# The engine tests' corpus and destinations, as fixtures of this module too.
corpus_dir, source = engine_tests.corpus_dir, engine_tests.source
sql_dest, sqlite_dest = engine_tests.sql_dest, engine_tests.sqlite_dest


def _files_dest(tmp_path: Any, name: str = "dest") -> dict[str, Any]:
    return {"type": "internal", "path": str(tmp_path / name)}


def test_workers_copy_what_one_process_copies(source: dict[str, Any], sql_dest: dict[str, Any], tmp_path: Any):
    report = migrate(source, sql_dest, jobs=2, verify=True)
    assert (report.failures, report.mismatches) == ([], [])
    assert (report.changed, report.failed, report.verified) == (True, False, True)
    assert_same_data(source, sql_dest)
    alone = migrate(source, _files_dest(tmp_path, "alone"), jobs=1)
    assert counts(report) == counts(alone)
    assert [(r.host, r.store, r.type) for r in report.stores] == [(r.host, r.store, r.type) for r in alone.stores]
    again = migrate(source, sql_dest, jobs=2)
    assert (again.changed, again.failed) == (False, False)
    assert counts(again)["users_unchanged"] == counts(report)["users_created"]


def test_workers_write_a_file_store(source: dict[str, Any], tmp_path: Any):
    dest = _files_dest(tmp_path)
    report = migrate(source, dest, jobs=3, verify=True)
    assert (report.failed, report.verified) == (False, True)
    assert_same_data(source, dest)
    leftovers = [n for _root, _dirs, names in os.walk(dest["path"]) for n in names if fsutil.is_temp_name(n)]
    assert leftovers == []


def test_keep_going_with_workers_reports_every_failure(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    path = _corrupt(source)
    report = migrate(source, sqlite_dest, jobs=2, keep_going=True)
    assert (report.failed, report.stopped) == (True, False)
    [failure] = report.failures
    assert (failure.host, failure.store, failure.user) == (HOST, "roster", "user00005")
    assert path in failure.reason
    assert report.store_result(HOST, "roster", "keyval").users_created == 11
    os.remove(path)
    assert_same_data(source, sqlite_dest)


def test_the_first_failure_stops_every_worker(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    _corrupt(source)
    report = migrate(source, sqlite_dest, jobs=2)
    assert (report.failed, report.stopped) == (True, True)
    assert [(f.store, f.user) for f in report.failures] == [("roster", "user00005")]
    # The worker that failed went no further (the other may have been ahead of it).
    later = [r for r in report.stores if r.host == HOST and r.store in ("vcard", "private", "archive")]
    assert sum(r.users_created for r in later) < 12 * 3


def test_a_worker_that_dies_fails_the_run(
    source: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = InternalBackend.keyval_get

    def die_on_one_user(self: InternalBackend, host: str, store: str, user: Any) -> Any:
        if store == "vcard" and user == "user00007":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_get(self, host, store, user)

    monkeypatch.setattr(InternalBackend, "keyval_get", die_on_one_user)
    with pytest.raises(parallel.WorkerError, match="killed by signal 9"):
        migrate(source, _files_dest(tmp_path), jobs=2)


@pytest.mark.parametrize("interval", [None, 3600.0])
def test_progress_adds_up_the_workers(
    source: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, interval: Any
):
    if interval is not None:  # every "user" event after a worker's first is held back
        monkeypatch.setattr(parallel, "_EVENT_INTERVAL", interval)
    events = []
    migrate(source, _files_dest(tmp_path), jobs=2, progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("start") == 1
    roster = [e for e in events if e.store == "roster" and e.kind == "store_done"]
    assert len(roster) == 1
    users = max(e.counts["users_done"] for e in events if e.store == "roster")
    assert users == 12


def test_a_bad_definition_fails_before_any_worker_starts(source: dict[str, Any], tmp_path: Any):
    from ansible_collections.xmpp.prosody.plugins.module_utils.plan import ConfigError

    with pytest.raises(ConfigError):
        migrate(source, _files_dest(tmp_path), jobs=2, stores=["no_such_store"])
    assert not os.path.exists(tmp_path / "dest")
