# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Micro-benchmark of the Lua data codec: strict reader vs lupa sandbox reader vs writer, and
archive items read by the general reader vs by shape (luashape.py).

Run from the collection root: ``.venv/bin/python bench/bench_luadata.py [--quick] [--corpus DIR]``.
The corpus is built in memory: archive (``.list``) files of MAM items shaped as
mod_storage_internal stores them (a preserialized message stanza with ``key``, ``when``, ``with``,
``attr.stamp`` and a body, some with more children) and keyval (``.dat``) files shaped as rosters
and accounts. Prints Markdown tables; the second one gives µs per archive item, parsing alone and
the whole read (``InternalBackend.archive_items``: parsing plus decoding into ArchiveItems), with
the general reader alone ("before") and with shapes ("after"). With ``--corpus``, that second table
is measured on every ``*.list`` file under DIR instead (a data directory written by Prosody, e.g.
one made by tests/corpus/make_corpus.lua).
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".build", "collections"))

from ansible_collections.xmpp.prosody.plugins.module_utils import luadata, luashape  # noqa: E402
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend  # noqa: E402
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import (  # noqa: E402
    dumps_dat,
    dumps_list,
    loads_dat,
    loads_list,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.luasandbox import (  # noqa: E402
    isolation_mode,
    sandbox_load,
)

WORDS = "the quick brown fox jumps over lazy dog héllo wörld 👋 ok yes no maybe later".split(" ")  # noqa: SIM905


def mam_item(rng: random.Random, i: int) -> dict:
    when = 1_700_000_000 + i * 37 + rng.random()
    peer = f"contact{rng.randrange(50)}@example.org"
    body = " ".join(rng.choice(WORDS) for _word in range(rng.randrange(3, 30)))
    children: list[Any] = [
        {"name": "body", "attr": {}, 1: body},
        {"name": "active", "attr": {"xmlns": "http://jabber.org/protocol/chatstates"}},
        {"name": "origin-id", "attr": {"xmlns": "urn:xmpp:sid:0", "id": f"{rng.getrandbits(64):016x}"}},
    ]
    if rng.random() < 0.3:
        children.append({"name": "markable", "attr": {"xmlns": "urn:xmpp:chat-markers:0"}})
    if rng.random() < 0.05:
        children.append({"name": "request", "attr": {"xmlns": "urn:xmpp:receipts"}})
    stanza = {"name": "message", "attr": {"to": "alice@example.com", "from": peer + "/phone", "type": "chat"}}
    stanza["attr"]["id"] = f"m{i}"
    stanza["attr"]["stamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    for n, child in enumerate(children, 1):
        stanza[n] = child
    stanza.update({"key": f"{rng.getrandbits(64):016x}-{i}", "when": when, "with": peer})
    return stanza


def roster(rng: random.Random, size: int) -> dict:
    value: dict = {False: {"version": rng.randrange(1, 500), "pending": {}}}
    for n in range(size):
        value[f"contact{n}@example.org"] = {
            "subscription": rng.choice(["both", "to", "from", "none"]),
            "name": f"Contact {n}",
            "groups": {rng.choice(["Friends", "Work", "Family"]): True},
        }
    return value


def account(rng: random.Random) -> dict:
    return {
        "iteration_count": 10000,
        "salt": f"{rng.getrandbits(128):032x}",
        "stored_key": f"{rng.getrandbits(160):040x}",
        "server_key": f"{rng.getrandbits(160):040x}",
        "created": 1_600_000_000 + rng.randrange(10**8),
    }


def corpus(quick: bool) -> tuple[list[bytes], int, list[bytes], int, list[list[dict]], list[dict]]:
    rng = random.Random(42)
    archives = [[mam_item(rng, f * 1000 + i) for i in range(200)] for f in range(5 if quick else 25)]
    dats = [roster(rng, rng.randrange(5, 80)) for _file in range(50 if quick else 200)]
    dats += [account(rng) for _file in range(200 if quick else 800)]
    list_files = [dumps_list(items) for items in archives]
    dat_files = [dumps_dat(v) for v in dats]
    return list_files, sum(map(len, archives)), dat_files, len(dat_files), archives, dats


def timed(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per call of fn, best of repeated runs over at least min_time."""
    best = float("inf")
    spent = 0.0
    while spent < min_time:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
    return best


@contextlib.contextmanager
def general_reader() -> Iterator[None]:
    """loads_list with the general reader alone, as before luashape."""
    by_shape = luashape.read_list
    luashape.read_list = lambda data: luadata._parse(data, luadata._LIST_START)[0]
    try:
        yield
    finally:
        luashape.read_list = by_shape


def write_store(root: str, list_files: list[bytes]) -> None:
    """The .list files as one host's archive store of an internal data directory."""
    store = os.path.join(root, "example%2eorg", "archive")
    os.makedirs(store)
    for i, data in enumerate(list_files):
        with open(os.path.join(store, f"user{i:05d}.list"), "wb") as f:
            f.write(data)


def per_item(root: str, min_time: float) -> None:
    """Print µs per item, before and after, of parsing and of the whole read of the archives under root."""
    paths = sorted(glob.glob(os.path.join(root, "*", "*", "*.list")))
    datas = []
    for path in paths:
        with open(path, "rb") as f:
            datas.append(f.read())
    n_items = sum(len(loads_list(data, "x.list")) for data in datas)
    backend = InternalBackend({"path": root})
    entries = [
        (host, store, user)
        for host in backend.hosts()
        for store, kind in backend.stores(host)
        if kind == "archive"
        for user in backend.archive_users(host, store)
    ]

    def parse() -> None:
        for i, data in enumerate(datas):
            loads_list(data, f"a{i}.list")

    def read() -> None:
        for host, store, user in entries:
            for _item in backend.archive_items(host, store, user):
                pass

    rows = []
    for label, run in (("parse (loads_list)", parse), ("whole read (archive_items)", read)):
        with general_reader():
            before = timed(run, min_time)
        after = timed(run, min_time)
        rows.append((label, before / n_items * 1e6, after / n_items * 1e6))
    print(f"Archives read per item: {len(datas)} .list files under {root}, {n_items} items.\n")
    print("| archive items | general reader µs/item | by shape µs/item | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for label, before, after in rows:
        print(f"| {label} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")


def main() -> None:
    quick = "--quick" in sys.argv
    min_time = 0.5 if quick else 2.0
    list_files, n_items, dat_files, n_dats, archives, dats = corpus(quick)
    list_bytes = sum(map(len, list_files))
    dat_bytes = sum(map(len, dat_files))

    def strict_lists() -> None:
        for i, data in enumerate(list_files):
            loads_list(data, f"a{i}.list")

    def strict_dats() -> None:
        for i, data in enumerate(dat_files):
            loads_dat(data, f"u{i}.dat")

    def sandbox_lists() -> None:
        for i, data in enumerate(list_files):
            sandbox_load(data, f"a{i}.list", "list")

    def sandbox_dats() -> None:
        for i, data in enumerate(dat_files):
            sandbox_load(data, f"u{i}.dat", "dat")

    def write_lists() -> None:
        for items in archives:
            dumps_list(items)

    def write_dats() -> None:
        for value in dats:
            dumps_dat(value)

    rows = []
    for label, _kind, count, size, reader, sandbox in (
        ("archive items (.list)", "read", n_items, list_bytes, strict_lists, sandbox_lists),
        ("keyval values (.dat)", "read", n_dats, dat_bytes, strict_dats, sandbox_dats),
    ):
        t_strict = timed(reader, min_time)
        t_sandbox = timed(sandbox, min_time)
        rows.append((label, "strict reader", count / t_strict, size / t_strict / 1e6, ""))
        rows.append((f"{label}", f"lupa sandbox ({isolation_mode()})", count / t_sandbox, size / t_sandbox / 1e6, ""))
        rows.append((f"{label}", "ratio strict/sandbox", None, None, f"{t_sandbox / t_strict:.2f}x"))
    for label, count, size, writer in (
        ("archive items (.list)", n_items, list_bytes, write_lists),
        ("keyval values (.dat)", n_dats, dat_bytes, write_dats),
    ):
        t_write = timed(writer, min_time)
        rows.append((label, "writer", count / t_write, size / t_write / 1e6, ""))

    print(f"Corpus: {len(list_files)} .list files, {n_items} items, {list_bytes / 1e6:.2f} MB; ", end="")
    print(f"{n_dats} .dat files, {dat_bytes / 1e6:.2f} MB. Python {sys.version.split()[0]}.\n")
    print("| data | path | items/s | MB/s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, path, rate, mbs, note in rows:
        rate_s = f"{rate:,.0f}" if rate is not None else ""
        mbs_s = f"{mbs:.1f}" if mbs is not None else ""
        print(f"| {label} | {path} | {rate_s} | {mbs_s} | {note} |")
    print()
    if "--corpus" in sys.argv:
        per_item(sys.argv[sys.argv.index("--corpus") + 1], min_time)
        return
    root = tempfile.mkdtemp(prefix="bench_luadata-")
    try:
        write_store(root, list_files)
        per_item(root, min_time)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
