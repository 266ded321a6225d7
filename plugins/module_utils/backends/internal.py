# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prosody's file store (``internal``: util.datamanager with mod_storage_internal's archives).

Layout under the data directory: ``<host>/<store>/<user>.dat`` (keyval), ``<host>/<store>/<user>.list``
(archive), ``<host>/<store>.dat`` / ``.list`` for host-level data (user None). Host and user names
are percent-encoded byte by byte (every byte but ASCII letters and digits, lowercase hex); store
names keep ``_`` as well. An encoded name holds only ``[A-Za-z0-9_%]``, so no name can reach
outside the data directory.

An archive item is kept as mod_storage_internal writes it: the stanza's preserialized table with
``key``, ``when`` and ``with`` added and ``attr.stamp`` set from ``when``; it is read back with the
fallbacks of its ``archive:find`` (the stamp when ``when`` is missing, the item's position when
``key`` is), and ``stamp`` / ``stamp_legacy`` are removed from the stanza as ``find`` removes them.
Unlike ``find``, an item whose text holds control characters or bytes that are not UTF-8 is read
as it is (``Element.deserialize(strict=False)``) rather than failing the whole archive; the file
store writes it back byte for byte.
"""

from __future__ import annotations

import math
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

from .. import fsutil
from ..errors import DecodeError, EncodeError, ProsodyMigrateError
from ..luadata import dumps_dat, dumps_list, dumps_stanza_item, loads_dat, loads_list
from ..stanza import Element
from .base import ABSENT, ArchiveItem, Backend, Entry

DAT = b".dat"
LIST = b".list"
GLOBAL_HOST = b"_global"  # where datamanager keeps host-less data; never a host of ours
ITEM_FIELDS = ("key", "when", "with")  # what mod_storage_internal adds to a stanza table
STAMP_ATTRS = ("stamp", "stamp_legacy")  # what archive:find removes from the stanza

_HOST_USER_UNSAFE = re.compile(rb"[^A-Za-z0-9]")
_STORE_UNSAFE = re.compile(rb"[^A-Za-z0-9_]")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# util.datetime.parse's Lua pattern, with Lua's %d (ASCII digits) and `.` matching anything.
_STAMP = re.compile(
    r"([0-9]{4})-?([0-9]{2})-?([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.?[0-9]*([Z+\-]?.*)", re.ASCII | re.DOTALL
)
_TZ = re.compile(r"([+\-])([0-9]{2}):?([0-9]*)", re.ASCII)


class InternalStoreError(ProsodyMigrateError):
    """The data directory, or a file in it, could not be used."""


# names -------------------------------------------------------------------------------------
def _percent(unsafe: re.Pattern[bytes], name: str, what: str) -> bytes:
    if not name and what != "user":
        # An empty host or store would collapse a path level (`<path>//<store>`) and alias another name;
        # an empty user is `<store>/.dat`, as datamanager writes it.
        raise InternalStoreError(f"an empty {what} name cannot be stored in Prosody's file store")
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InternalStoreError(f"{what} name {name!r} is not a string of bytes: {exc.reason}") from None
    return unsafe.sub(lambda m: b"%%%02x" % m[0][0], raw)


def encode_name(name: str, what: str = "host") -> bytes:
    """A host or user name as datamanager writes it in a path."""
    return _percent(_HOST_USER_UNSAFE, name, what)


def _encode_user(name: str) -> bytes:
    return encode_name(name, "user")


def encode_store(name: str) -> bytes:
    """A store name as datamanager writes it in a path (``_`` kept, for historical names)."""
    return _percent(_STORE_UNSAFE, name, "store")


def decode_name(raw: bytes) -> str:
    """A path component decoded as datamanager decodes it (either case of hex; anything else kept)."""
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw).decode("utf-8", "surrogateescape")


# times -------------------------------------------------------------------------------------
_DAYS: dict[int, str] = {}  # "YYYY-MM-DDT" by day since the epoch: an archive's items share few days
_DAYS_MAX = 4096
_TWO_DIGITS = [f"{n:02d}" for n in range(60)]  # indexing beats a :02d format spec threefold


def format_stamp(when: int | float) -> str:
    """util.datetime.datetime(when), the ``stamp`` mod_storage_internal stores beside ``when``."""
    if isinstance(when, float):
        if not math.isfinite(when):
            raise EncodeError(f"archive time {when!r} is not a finite number")
        # Prosody 0.12 on Lua 5.4 cannot format a fractional time at all; its stamp has whole seconds.
        when = math.floor(when)
    # strftime(gmtime()) costs more than the rest of an item's encoding: the date is formatted once
    # per day, the time of day is arithmetic (UTC has no leap seconds in POSIX time).
    day, second = divmod(when, 86400)
    date = _DAYS.get(day)
    if date is None:
        date = _format_day(day, when)
    return f"{date}{_TWO_DIGITS[second // 3600]}:{_TWO_DIGITS[second // 60 % 60]}:{_TWO_DIGITS[second % 60]}Z"


def _format_day(day: int, when: int) -> str:
    """The date part of ``when``'s stamp (its midnight is a date exactly when ``when`` is: same year)."""
    try:
        date = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
    except (OverflowError, OSError, ValueError):
        raise EncodeError(f"archive time {when!r} cannot be represented as a date") from None
    if len(_DAYS) >= _DAYS_MAX:
        _DAYS.clear()
    _DAYS[day] = date
    return date


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year - 719468


def parse_stamp(stamp: object) -> int | None:
    """util.datetime.parse: seconds since the epoch of an XEP-0082 stamp, None when it is not one."""
    match = _STAMP.fullmatch(stamp) if isinstance(stamp, str) else None
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone = match[7]
    offset = 0
    if zone not in ("", "Z"):
        tz = _TZ.search(zone)
        if not tz:
            return None
        minutes = int(tz[3]) if len(tz[3]) == 2 else 0
        offset = (int(tz[2]) * 60 + minutes) * 60 * (-1 if tz[1] == "-" else 1)
    # os.time normalizes out-of-range fields (month 13, day 0, hour 25) the same linear way.
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    days = _days_from_civil(year, month, 1) + day - 1
    return days * 86400 + hour * 3600 + minute * 60 + second - offset


# the backend -------------------------------------------------------------------------------
def _is_empty(value: Any) -> bool:
    """What datamanager.store deletes instead of writing: nil, false or an empty table."""
    return value is None or value is False or (isinstance(value, dict) and not value)


def _is_time(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class InternalBackend(Backend):
    """Prosody's ``internal`` storage: a directory of Lua-serialized files."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        path = self.params.get("path")
        if not path or not isinstance(path, (str, bytes)):
            raise InternalStoreError("the internal store needs 'path', the data directory (Prosody's data_path)")
        self.path = os.fsdecode(path)
        self.root = os.fsencode(path)
        self._warned: set[str] = set()
        self._root_checked = False
        self._ready_dirs: set[bytes] = set()
        self._templates: dict[bytes, tuple[fsutil.Owner | None, fsutil.Owner | None]] = {}
        self._deferred: fsutil.Deferred | None = None  # fsyncs put off until flush (start_batch)

    # paths ---------------------------------------------------------------------------------
    def _host_dir(self, host: str) -> bytes:
        return os.path.join(self.root, encode_name(host))

    def _store_dir(self, host: str, store: str) -> bytes:
        return os.path.join(self._host_dir(host), encode_store(store))

    def _file(self, host: str, store: str, user: str | None, ext: bytes) -> bytes:
        if user is None:
            return os.path.join(self._host_dir(host), encode_store(store) + ext)
        return os.path.join(self._store_dir(host, store), _encode_user(user) + ext)

    def _source(self, path: bytes, host: str, store: str, user: str | None) -> str:
        return f"{os.fsdecode(path)} (host {host!r}, store {store!r}, user {user!r})"

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.warnings.append(message)

    # reading -------------------------------------------------------------------------------
    def _check_root(self) -> None:
        if not self._root_checked:
            if not os.path.isdir(self.root):
                raise InternalStoreError(f"data directory {self.path!r} does not exist or is not a directory")
            self._root_checked = True

    def check_source(self) -> None:
        self._check_root()

    def _read(self, path: bytes) -> bytes | None:
        self._check_root()
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InternalStoreError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None

    def _scan(self, directory: bytes) -> list[os.DirEntry[bytes]]:
        """Entries of a directory, minus our temporary files; none when it does not exist."""
        return list(self._each_entry(directory))

    def _each_entry(self, directory: bytes) -> Iterator[os.DirEntry[bytes]]:
        """``_scan``'s entries one at a time: a store directory holds a file per user, and only
        their names are kept (memory stays flat as users grow)."""
        self._check_root()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if not fsutil.is_temp_name(entry.name):
                        yield entry
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise InternalStoreError(f"cannot list {os.fsdecode(directory)}: {exc.strerror}") from None

    def _names(
        self, entries: Iterable[os.DirEntry[bytes]], ext: bytes, is_dir: bool, encode: Callable[[str], bytes], what: str
    ) -> list[str]:
        """Decoded names of the entries ``<name><ext>``; a name not in Prosody's encoding is reported."""
        names = set()
        for entry in entries:
            raw = entry.name
            if not raw.endswith(ext) or entry.is_dir() != is_dir or (is_dir and raw.startswith(b".")):
                continue
            stem = raw[: len(raw) - len(ext)]
            name = decode_name(stem)
            if _encodes_to(encode, name, stem):
                names.add(name)
            else:
                # Prosody would list this name, then look for it under its canonical file name, so this
                # file's data is never read by Prosody either; we report it instead of acting on it.
                canonical = os.fsdecode(encode(name) + ext) if name else "no file, an empty name is refused"
                self._warn(
                    f"{os.fsdecode(entry.path)}: not in Prosody's file name encoding; Prosody reads {what} "
                    f"{name!r} from {canonical!r}, so this file is skipped"
                )
        return sorted(names)

    def keyval_users(self, host: str, store: str) -> Iterator[str]:
        return iter(self._names(self._each_entry(self._store_dir(host, store)), DAT, False, _encode_user, "user"))

    def archive_users(self, host: str, store: str) -> Iterator[str]:
        return iter(self._names(self._each_entry(self._store_dir(host, store)), LIST, False, _encode_user, "user"))

    def keyval_get(self, host: str, store: str, user: str | None) -> Any:
        path = self._file(host, store, user, DAT)
        data = self._read(path)
        return None if data is None else loads_dat(data, self._source(path, host, store, user))

    def _load_list(self, path: bytes, source: str) -> list[Any] | None:
        data = self._read(path)
        return None if data is None else loads_list(data, source)

    def archive_items(self, host: str, store: str, user: str | None) -> Iterator[ArchiveItem]:
        path = self._file(host, store, user, LIST)
        source = self._source(path, host, store, user)
        for index, raw in enumerate(self._load_list(path, source) or (), 1):
            yield self._decode_item(raw, index, f"{source} item {index}")

    def archive_keys(self, host: str, store: str, user: str | None) -> list[str]:
        path = self._file(host, store, user, LIST)
        source = self._source(path, host, store, user)
        keys = []
        for index, raw in enumerate(self._load_list(path, source) or (), 1):
            where = f"{source} item {index}"
            keys.append(self._item_key(self._item_table(raw, where), index, where))
        return keys

    @staticmethod
    def _item_table(raw: Any, where: str) -> dict[Any, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("attr"), dict):
            raise DecodeError("not a stanza table (a table with an 'attr' table), as archive items must be", where)
        return raw

    @staticmethod
    def _item_key(raw: dict[Any, Any], index: int, where: str) -> str:
        key = raw.get("key")
        if key is None or key is False:
            return str(index)  # find's fallback: the item's position
        if not isinstance(key, str):
            raise DecodeError(f"archive key {key!r} is not a string", where)
        return key

    def _decode_item(self, raw: Any, index: int, where: str) -> ArchiveItem:
        table = self._item_table(raw, where)
        key = self._item_key(table, index, where)
        when = table.get("when")
        if when is None or when is False:
            when = parse_stamp(table["attr"].get("stamp"))
            if when is None:
                raise DecodeError("archive item has no 'when' and no parsable 'stamp'", where)
        elif not _is_time(when):
            raise DecodeError(f"archive time {when!r} is not a number", where)
        peer = table.get("with")
        if peer is not None and not isinstance(peer, str):
            raise DecodeError(f"archive peer ('with') {peer!r} is not a string", where)
        # The table was just read for this call alone, so find's removal of the stamps is done in
        # place; deserialize ignores the keys added beside the stanza's (ITEM_FIELDS).
        attr = table["attr"]
        for name in STAMP_ATTRS:
            if name in attr:
                del attr[name]
        # Not strict: a control character or bytes that are not UTF-8 in a stanza's text, which
        # Prosody's find refuses (failing the whole archive), are data to carry, not to lose; a
        # destination that cannot hold them says so per item (Backend.archive_unstorable).
        value = Element.deserialize(table, where, strict=False)
        return ArchiveItem(key, value, when, peer)  # positional arguments: quicker for a frozen dataclass

    def fingerprints(self, entries: Sequence[Entry]) -> dict[Entry, str | None]:
        """The entry's file as stat sees it: device, inode, size, mtime and ctime. Prosody and this
        backend replace a ``.dat`` file by a rename (a new inode) and append to a ``.list`` file
        (a new size), and any write sets the ctime, which no one can set back."""
        out: dict[Entry, str | None] = {}
        for entry in entries:
            host, store, kind, user = entry
            try:
                st = os.stat(self._file(host, store, user, LIST if kind == "archive" else DAT))
            except (FileNotFoundError, NotADirectoryError):
                out[entry] = ABSENT
            except (OSError, InternalStoreError):
                out[entry] = None
            else:
                regular = stat.S_ISREG(st.st_mode)
                out[entry] = (
                    f"file {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}" if regular else None
                )
        return out

    # writing -------------------------------------------------------------------------------
    def start_batch(self) -> None:
        if self._deferred is None:
            self._deferred = fsutil.Deferred()

    def flush(self) -> None:
        """fsync the files written and directories changed since the last flush, once each."""
        if self._deferred is None:
            return
        try:
            self._deferred.flush()
        except OSError as exc:
            where = os.fsdecode(exc.filename) if exc.filename else self.path
            raise InternalStoreError(f"cannot make the writes under {where} durable: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Flush what is held back: a file written is as good as durable once the backend closes."""
        self.flush()

    def _dir_templates(self, directory: bytes) -> tuple[fsutil.Owner | None, fsutil.Owner | None]:
        """(file, directory) ownership of an existing data file and subdirectory, scanned once.

        The same scan removes temporary files a killed run left there.
        """
        if directory not in self._templates:
            file_owner = dir_owner = None
            with os.scandir(directory) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if fsutil.is_temp_name(entry.name):
                        if fsutil.is_stale_temp(entry.name):
                            fsutil.remove_file(entry.path, self._deferred)
                    elif file_owner is None and entry.name.endswith((DAT, LIST)) and entry.is_file():
                        file_owner = fsutil.owner_like(entry.stat(), fsutil.FILE_MODE_MASK)
                    elif dir_owner is None and not entry.name.startswith(b".") and entry.is_dir():
                        dir_owner = fsutil.owner_like(entry.stat(), fsutil.DIR_MODE_MASK)
            self._templates[directory] = (file_owner, dir_owner)
        return self._templates[directory]

    def _make_dirs(self, directory: bytes) -> None:
        """Create the data directory and the host/store directories below it, as needed."""
        if directory in self._ready_dirs:
            return
        if directory == self.root:
            # A new data directory gets Prosody's default mode (umask can only narrow it).
            os.makedirs(directory, fsutil.DEFAULT_DIR_MODE, exist_ok=True)
        elif not os.path.isdir(directory):
            parent = os.path.dirname(directory)
            self._make_dirs(parent)
            sibling = self._dir_templates(parent)[1]
            if sibling is None:
                st = os.stat(parent)
                # A setgid parent passes its bit on, as mkdir(2) does for Prosody's own directories.
                sibling = fsutil.Owner(fsutil.DEFAULT_DIR_MODE | (st.st_mode & stat.S_ISGID), st.st_uid, st.st_gid)
            fsutil.make_dir(directory, sibling, self._deferred)
        self._ready_dirs.add(directory)

    def _write(self, path: bytes, data: bytes) -> None:
        directory = os.path.dirname(path)
        try:
            self._make_dirs(directory)
            try:
                owner = fsutil.owner_like(os.stat(path), fsutil.FILE_MODE_MASK)
            except FileNotFoundError:
                owner = self._dir_templates(directory)[0]
                if owner is None:
                    st = os.stat(directory)
                    owner = fsutil.Owner(fsutil.DEFAULT_FILE_MODE, st.st_uid, st.st_gid)
            else:
                self._dir_templates(directory)  # clears leftovers of a killed run
            fsutil.atomic_write(path, data, owner, self._deferred)
        except OSError as exc:
            raise InternalStoreError(f"cannot write {os.fsdecode(path)}: {exc.strerror or exc}") from None

    def _remove(self, path: bytes) -> None:
        try:
            fsutil.remove_file(path, self._deferred)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise InternalStoreError(f"cannot remove {os.fsdecode(path)}: {exc.strerror}") from None

    def keyval_set(self, host: str, store: str, user: str | None, value: Any, absent: bool = False) -> None:
        path = self._file(host, store, user, DAT)
        if _is_empty(value):
            self._remove(path)
        else:
            self._write(path, dumps_dat(value))

    def _encode_item(self, item: ArchiveItem, where: str, strings: dict[str, bytes]) -> bytes:
        """The text of the table mod_storage_internal's archive:append stores for an item."""
        if not isinstance(item.key, str):
            raise EncodeError(f"{where}: archive key {item.key!r} is not a string")
        if not isinstance(item.value, Element):
            raise EncodeError(f"{where}: item {item.key!r} is not a stanza; Prosody's file store archives stanzas only")
        if not _is_time(item.when):
            raise EncodeError(f"{where}: item {item.key!r} has a time {item.when!r} that is not a number")
        if item.with_ is not None and not isinstance(item.with_, str):
            raise EncodeError(f"{where}: item {item.key!r} has a peer {item.with_!r} that is not a string")
        attr = dict(item.value.attr)
        attr["stamp"] = format_stamp(item.when)
        fields = {"key": item.key, "when": item.when}
        if item.with_ is not None:
            fields["with"] = item.with_
        return dumps_stanza_item(item.value, attr, fields, strings)

    def archive_write(
        self, host: str, store: str, user: str | None, items: Iterable[ArchiveItem], absent: bool = False
    ) -> None:
        path = self._file(host, store, user, LIST)
        source = self._source(path, host, store, user)
        strings: dict[str, bytes] = {}  # dumps_list's, shared by the items (most of their strings recur)
        new = [(item.key, self._encode_item(item, source, strings)) for item in items]
        if not new:
            return
        # archive:append with a key drops the old item of that key and puts the new one last; doing
        # every append of this call at once keeps, for a key given twice, the last one in its place.
        last = {key: i for i, (key, _text) in enumerate(new)}
        old = None if absent or not os.path.isdir(self.root) else self._load_list(path, source)
        kept = [raw for raw in old or () if not (isinstance(raw, dict) and _str_in(raw.get("key"), last))]
        texts = [text for i, (key, text) in enumerate(new) if last[key] == i]
        self._write(path, b"".join([dumps_list(kept), *texts]))  # a list file is its items' texts in a row

    # discovery -----------------------------------------------------------------------------
    def hosts(self) -> Iterator[str]:
        entries = self._scan(self.root)
        for entry in entries:
            if entry.name == GLOBAL_HOST and entry.is_dir():
                self._warn(f"{os.fsdecode(entry.path)}: Prosody's host-less data is not migrated")
        return iter(self._names([e for e in entries if e.name != GLOBAL_HOST], b"", True, encode_name, "host"))

    def stores(self, host: str) -> Iterator[tuple[str, str]]:
        entries = self._scan(self._host_dir(host))
        found = set()
        for ext, kind in ((DAT, "keyval"), (LIST, "archive")):  # host-level data: <host>/<store>.dat
            found.update((store, kind) for store in self._names(entries, ext, False, encode_store, "store"))
        for store in self._names(entries, b"", True, encode_store, "store"):
            for entry in self._each_entry(self._store_dir(host, store)):
                if entry.name.endswith(DAT):
                    found.add((store, "keyval"))
                elif entry.name.endswith(LIST):
                    found.add((store, "archive"))
        return iter(sorted(found))

    # emptiness -------------------------------------------------------------------------------
    def store_empty(self, host: str, store: str, kind: str) -> bool:
        """No ``<user>.dat`` (keyval) or ``.list`` (archive) file in the store's directory and no
        host-level one: any such name counts, even one not in Prosody's encoding."""
        ext = DAT if kind == "keyval" else LIST
        if not os.path.isdir(self.root):
            return True
        if os.path.lexists(self._file(host, store, None, ext)):
            return False
        return not any(entry.name.endswith(ext) for entry in self._each_entry(self._store_dir(host, store)))

    def kinds_empty(self) -> frozenset[str]:
        """The kinds no host's store holds a file of; the walk ends once both are seen."""
        if not os.path.isdir(self.root):
            return frozenset(("keyval", "archive"))
        missing = {DAT: "keyval", LIST: "archive"}
        for host in self._each_entry(self.root):
            if not host.is_dir():
                continue
            for entry in self._each_entry(host.path):
                names = self._each_entry(entry.path) if entry.is_dir() else (entry,)
                for name in names:
                    missing.pop(name.name[name.name.rfind(b".") :], None)
                    if not missing:
                        return frozenset()
        return frozenset(missing.values())


def _encodes_to(encode: Callable[[str], bytes], name: str, raw: bytes) -> bool:
    """Whether ``raw`` is the canonical encoding of ``name`` (an empty host or store name has none)."""
    try:
        return encode(name) == raw
    except InternalStoreError:
        return False


def _str_in(key: object, keys: Mapping[str, int]) -> bool:
    """Lua's ``item.key == key`` for a string key: only an equal string matches."""
    return isinstance(key, str) and key in keys
