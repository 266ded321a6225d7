# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Micro-benchmark of writing Prosody's file store: the Lua text of a data directory's values.

Run from the collection root: ``.venv/bin/python bench/bench_dump.py DIR [--repeat N]``, DIR a
data directory written by Prosody (e.g. /work/corpus/medium, or one made by
tests/corpus/make_corpus.lua). Every ``.list`` and ``.dat`` file under DIR is read once, then
written again in memory, N times (best kept, CPU time): the archives' item tables
(``dumps_list``), the keyval values (``dumps_dat``), and the archives as the SQL → files direction
writes them, from ArchiveItems (``InternalBackend._encode_item``, then ``dumps_list``). Prints a
Markdown table of CPU seconds and µs per item or file.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".build", "collections"))

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend  # noqa: E402
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import (  # noqa: E402
    dumps_dat,
    dumps_list,
    loads_dat,
    loads_list,
)


def read_files(root: str, pattern: str, load: Callable[[bytes, str], Any]) -> list[Any]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, pattern))):
        with open(path, "rb") as f:
            out.append(load(f.read(), path))
    return out


def read_archives(backend: InternalBackend) -> list[list[Any]]:
    """Every archive's items as ArchiveItems, one list per user."""
    archives = []
    for host in backend.hosts():
        for store, kind in backend.stores(host):
            if kind == "archive":
                for user in backend.archive_users(host, store):
                    archives.append(list(backend.archive_items(host, store, user)))
    return archives


def best_cpu(fn: Callable[[], Any], repeat: int) -> float:
    """Least CPU seconds (this process) of ``repeat`` calls."""
    best = float("inf")
    for _run in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a Prosody data directory")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tables = read_files(args.root, "*/*/*.list", loads_list)
    values = read_files(args.root, "*/*/*.dat", loads_dat) + read_files(args.root, "*/*.dat", loads_dat)
    backend = InternalBackend({"path": args.root})
    archives = read_archives(backend)
    n_items = sum(map(len, tables))

    def write_tables() -> None:
        for items in tables:
            dumps_list(items)

    def write_values() -> None:
        for value in values:
            dumps_dat(value)

    def write_archives() -> None:
        for items in archives:
            dumps_list([backend._encode_item(item, "bench") for item in items])

    rows = (
        ("archive item tables (dumps_list)", n_items, "item", write_tables),
        ("keyval values (dumps_dat)", len(values), "file", write_values),
        ("ArchiveItems encoded and written", n_items, "item", write_archives),
    )
    print(f"{args.root}: {len(tables)} .list files, {n_items} items; {len(values)} .dat files.")
    print(f"Python {sys.version.split()[0]}, best of {args.repeat}.\n")
    print("| writing | CPU s | µs each |")
    print("| --- | ---: | ---: |")
    for label, count, unit, run in rows:
        seconds = best_cpu(run, args.repeat)
        print(f"| {label} | {seconds:.3f} | {seconds / count * 1e6:.2f} per {unit} |")


if __name__ == "__main__":
    main()
