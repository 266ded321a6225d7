# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the fault, hostile-input and secrets tests: a corpus written by real Prosody's
code, a migration run in a child process that can be killed, and "the same data" through the backends.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, Optional

from ansible_collections.xmpp.prosody.plugins.module_utils import fsutil
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import Backend
from ansible_collections.xmpp.prosody.plugins.module_utils.compare import same_value
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import loads_dat, loads_list

from prosody_oracle import collections_path

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "corpus", "make_corpus.lua")
HOST, MUC = "example.org", "conference.example.org"

# The child: runs one migration, prints a line per finished entry (so the parent can kill it at a
# known point) and the report as JSON at the end. It runs at most WINDOW entries ahead of what the
# parent has read (the parent answers each line on stdin): a kill after entry k then lands while
# the child is anywhere up to entry k + WINDOW + 1, mid-write included, and never past it.
WINDOW = 8
CHILD = r"""
import json, sys
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration

args = json.loads(sys.argv[1])
window, done = int(sys.argv[2]), 0

def progress(event):
    global done
    if event.kind == "user":
        sys.stdout.write("user %s %s\n" % (event.store, json.dumps(event.user)))
        sys.stdout.flush()
        done += 1
        if done > window:
            sys.stdin.readline()

report = run_migration(args["source"], args["destination"], Options(progress=progress, **args["options"]))
sys.stdout.write("REPORT " + json.dumps(report.to_dict()) + "\n")
"""


def make_corpus(directory: str, users: int, messages: int, seed: int = 7) -> str:
    """A Prosody file store written by real Prosody's code (few SCRAM iterations: it is fast)."""
    subprocess.run(["lua5.4", CORPUS, directory, str(users), str(messages), str(seed), "16"], check=True)
    return directory


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = collections_path()
    return env


class ChildRun:
    """A migration in a child process; ``events`` the entries it reported done before it ended."""

    def __init__(self, source: dict[str, Any], destination: dict[str, Any], **options: Any) -> None:
        args = json.dumps({"source": source, "destination": destination, "options": options})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, args, str(WINDOW)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
        )
        self.events = 0
        self.report: Optional[dict[str, Any]] = None
        self.killed = False

    def run(self, kill_after: Optional[int] = None, kill_at: Optional[float] = None) -> ChildRun:
        """Read its output; SIGKILL it after ``kill_after`` entries or ``kill_at`` seconds."""
        assert self.proc.stdout is not None
        deadline = None if kill_at is None else time.monotonic() + kill_at
        if deadline is not None:
            os.set_blocking(self.proc.stdout.fileno(), False)
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                self._kill()
                break
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.005)
                continue
            if line.startswith("REPORT "):
                self.report = json.loads(line[7:])
            else:
                self.events += 1
                if kill_after is not None and self.events >= kill_after:
                    self._kill()
                    break
                self._answer()
        _out, err = self.proc.communicate(timeout=120)
        self.stderr = err
        if not self.killed:
            assert self.proc.returncode == 0, err
        return self

    def _answer(self) -> None:
        """Let the child go one entry further; it may have ended already."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.killed = True
        self.proc.wait(timeout=30)


# comparing -----------------------------------------------------------------------------------
def all_stores(backend: Backend) -> dict[str, list[tuple[str, str]]]:
    """Every (store, type) of every host a backend holds."""
    return {host: sorted(backend.stores(host)) for host in sorted(backend.hosts())}


def snapshot(backend: Backend, stores: dict[str, list[tuple[str, str]]]) -> Iterator[tuple[Any, ...]]:
    """(host, store, type, user, value or item list) of every entry, host-level data first."""
    for host, entries in stores.items():
        for store, type_ in entries:
            if type_ == "keyval":
                users = backend.keyval_users(host, store)
                yield host, store, type_, None, backend.keyval_get(host, store, None)
                for user in sorted(users):
                    yield host, store, type_, user, backend.keyval_get(host, store, user)
            else:
                users = backend.archive_users(host, store)
                yield host, store, type_, None, list(backend.archive_items(host, store, None))
                for user in sorted(users):
                    yield host, store, type_, user, list(backend.archive_items(host, store, user))


def assert_same_data(expected: dict[str, Any], actual: dict[str, Any]) -> int:
    """Every value and archive item of the source equal in the destination, none missing and none
    duplicated (item lists compare whole, in order); returns the number of entries compared."""
    with open_backend(expected) as a, open_backend(actual) as b:
        stores = all_stores(a)
        left, right = list(snapshot(a, stores)), list(snapshot(b, stores))
        assert all_stores(b) == stores
    assert [e[:4] for e in left] == [e[:4] for e in right]
    for x, y in zip(left, right):
        if x[2] == "archive":
            assert [i.key for i in x[4]] == [i.key for i in y[4]], f"{x[:4]}: items differ"
        assert same_value(x[4], y[4]), f"{x[:4]} differs"
    return len(left)


def assert_clean_file_store(path: str) -> int:
    """No temporary file anywhere, and every data file parses with the strict reader."""
    files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            assert not fsutil.is_temp_name(name), f"left behind: {full}"
            with open(full, "rb") as f:
                data = f.read()
            if name.endswith(".dat"):
                loads_dat(data, full, sandbox=False)
            elif name.endswith(".list"):
                loads_list(data, full, sandbox=False)
            else:
                raise AssertionError(f"not a data file: {full}")
            files += 1
    return files


def tree_hashes(path: str) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file and directory under path (and of path itself)."""
    out = {}
    for root, dirs, names in os.walk(path):
        out[root] = ("dir", os.stat(root).st_mode)
        for name in dirs + names:
            full = os.path.join(root, name)
            st = os.lstat(full)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    out[full] = (hashlib.sha256(f.read()).hexdigest(), st.st_mode)
            else:
                out[full] = ("other", st.st_mode)
    return out
