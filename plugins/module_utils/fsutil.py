# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable file writes for data files that hold password hashes.

Writes go to a temporary file in the destination directory (a dot-name ending in TEMP_SUFFIX,
so nothing that looks for ``*.dat`` / ``*.list`` can take it for data), which is flushed,
fsynced, given its final mode and owner, renamed over the destination, and followed by an
fsync of the directory. With a ``Deferred`` the two fsyncs are put off: the rename still makes
each file appear whole or not at all to any reader, and ``Deferred.flush`` later fsyncs every
file written and directory changed, once each, so that they survive a power loss from then on.
Modes never keep a bit for "others": these files hold secrets.
Paths are bytes or str, as the caller holds them; OSError is left to the caller to name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Optional, Union

Path = Union[str, bytes]

DEFAULT_FILE_MODE = 0o640
DEFAULT_DIR_MODE = 0o750
FILE_MODE_MASK = 0o770  # no world bits, no setuid/setgid/sticky on data files
DIR_MODE_MASK = 0o2770  # a setgid directory stays setgid, so new files keep its group
TEMP_PREFIX = ".~xmpp-prosody-"
TEMP_SUFFIX = ".tmp"


class Owner(NamedTuple):
    """The mode, user and group a new file or directory is given (None: leave as created)."""

    mode: int
    uid: int | None = None
    gid: int | None = None


def owner_like(st: os.stat_result, mask: int) -> Owner:
    """The mode and ownership of an existing file, with the bits we never grant masked off."""
    return Owner(stat.S_IMODE(st.st_mode) & mask, st.st_uid, st.st_gid)


def is_temp_name(name: Path) -> bool:
    """Whether a directory entry is one of our temporary files (never data)."""
    text = os.fsdecode(name)
    return text.startswith(TEMP_PREFIX) and text.endswith(TEMP_SUFFIX)


def is_stale_temp(name: Path) -> bool:
    """Whether a temporary file was left by a process that is gone (a killed run), so it may go.

    The writer's process id is in the name: a live one may be a parallel worker or another run
    writing into the same directory right now, and its file is left alone.
    """
    if not is_temp_name(name):
        return False
    pid = os.fsdecode(name)[len(TEMP_PREFIX) :].partition("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def _temp_path(directory: Path) -> Path:
    # Short and fixed-length, whatever the destination's name: a long name must not overflow NAME_MAX.
    name = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"
    return os.path.join(directory, os.fsencode(name) if isinstance(directory, bytes) else name)


def fsync_dir(directory: Path) -> None:
    """Make a rename, creation or removal inside a directory durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# fsyncs issued at once by Deferred.flush: a journalling file system commits concurrent fsyncs
# together (ext4: 1,000 small files took 2.4-3.3 s one by one, 0.13 s over 8 threads).
FSYNC_THREADS = 16


class Deferred:
    """The files written and directories changed whose fsync waits for ``flush``."""

    def __init__(self) -> None:
        self.files: set[Path] = set()
        self.dirs: set[Path] = set()

    def flush(self) -> None:
        """fsync every file, then every directory (their entries name the files); OSError is left
        to the caller, and what was not flushed yet stays to be flushed."""
        _each(self.files, _fsync_file)
        _each(self.dirs, _fsync_present_dir)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return  # replaced or removed since: its directory's fsync covers it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_present_dir(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(directory)


def _each(pending: set[Path], sync: Callable[[Path], None]) -> None:
    """Run ``sync`` on every path, several at once; each one done leaves ``pending``. When any
    failed, the first failure (in path order) is raised once all have ended."""
    paths = sorted(pending, key=os.fsencode)
    if len(paths) < 2:
        outcomes = [_attempt(sync, path) for path in paths]
    else:
        outcomes = list(_pool().map(lambda path: _attempt(sync, path), paths))
    for path, error in zip(paths, outcomes):
        if error is None:
            pending.discard(path)
    errors = [error for error in outcomes if error is not None]
    if errors:
        raise errors[0]


_POOL: Optional[tuple[int, ThreadPoolExecutor]] = None  # (pid, threads) for Deferred.flush


def _pool() -> ThreadPoolExecutor:
    """The process's fsync threads, started once: a pool per flush spent about 5% of a run into
    the file store starting threads. A forked child gets a pool of its own (threads do not fork)."""
    global _POOL  # pylint: disable=global-statement
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="fsync"))
    return _POOL[1]


def _attempt(sync: Callable[[Path], None], path: Path) -> Optional[OSError]:
    try:
        sync(path)
    except OSError as exc:
        return exc
    return None


def _sync_dir(directory: Path, deferred: Optional[Deferred]) -> None:
    if deferred is None:
        fsync_dir(directory)
    else:
        deferred.dirs.add(directory)


def _chown(fd: int, owner: Owner) -> None:
    """Give an open file the wanted owner where we may; an unprivileged run keeps its own."""
    st = os.fstat(fd)
    uid = -1 if owner.uid is None or owner.uid == st.st_uid else owner.uid
    gid = -1 if owner.gid is None or owner.gid == st.st_gid else owner.gid
    if uid == -1 and gid == -1:
        return
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        if gid != -1:
            with contextlib.suppress(PermissionError):  # a member of the group may still hand it over
                os.fchown(fd, -1, gid)


def atomic_write(path: Path, data: bytes, owner: Owner, deferred: Optional[Deferred] = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file
    (with ``deferred``, a power loss before its flush may also leave an empty one)."""
    directory = os.path.dirname(path)
    tmp = _temp_path(directory)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            _chown(fd, owner)
            os.fchmod(fd, owner.mode)
            if deferred is None:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if deferred is not None:
        deferred.files.add(path)
    _sync_dir(directory, deferred)


def remove_file(path: Path, deferred: Optional[Deferred] = None) -> bool:
    """Remove a file durably (or at ``deferred``'s flush); False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    _sync_dir(os.path.dirname(path), deferred)
    return True


def make_dir(path: Path, owner: Owner, deferred: Optional[Deferred] = None) -> None:
    """Create one directory (its parent exists) with an exact mode and owner, durably."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if os.path.isdir(path):
            return
        raise
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        _chown(fd, owner)
        os.fchmod(fd, owner.mode)
    finally:
        os.close(fd)
    _sync_dir(os.path.dirname(path), deferred)
