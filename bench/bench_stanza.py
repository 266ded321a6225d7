# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Micro-benchmark of the stanza codec: deserialize (lenient and strict), to_xml, from_xml.

Run from the collection root: ``.venv/bin/python bench/bench_stanza.py [--quick] [--corpus DIR]
[--against OLD_STANZA_PY]``. The corpus is built in memory: preserialized message stanzas shaped
as archive items are once mod_storage_internal's fields (``key``, ``when``, ``with``) and
``attr.stamp`` are removed, as backends/internal.py hands them to ``Element.deserialize``. With
``--corpus``, the stanzas are instead those of every ``*.list`` file under DIR (a data directory
written by Prosody, e.g. /tmp/perf/medium). With ``--against``, another version of stanza.py
(``git show HEAD:plugins/module_utils/stanza.py > /tmp/old_stanza.py``) is timed on the same
corpus, and the speed-up of the current one is shown. Prints a Markdown table.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import random
import sys
from types import ModuleType
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".build", "collections"))

from bench_luadata import timed  # noqa: E402 - this directory is on sys.path when a bench runs

from ansible_collections.xmpp.prosody.plugins.module_utils import stanza as current  # noqa: E402
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import loads_list  # noqa: E402

WORDS = "the quick brown fox jumps over lazy dog héllo wörld 👋 ok yes no <maybe> later & so".split(" ")  # noqa: SIM905
ITEM_FIELDS = ("key", "when", "with")
STAMP_ATTRS = ("stamp", "stamp_legacy")


def message(rng: random.Random, i: int) -> dict[Any, Any]:
    """A preserialized chat message as archives hold them, some with chat states, receipts, replies."""
    peer = f"contact{rng.randrange(50)}@example.org"
    body = " ".join(rng.choice(WORDS) for _word in range(rng.randrange(3, 30)))
    attr = {"to": "alice@example.com", "from": peer + "/phone", "type": "chat", "id": f"m{i}", "xml:lang": "en"}
    children: list[Any] = [{"name": "body", "attr": {}, 1: body}]
    if rng.random() < 0.3:
        children.append({"name": "active", "attr": {"xmlns": "http://jabber.org/protocol/chatstates"}})
    if rng.random() < 0.3:
        children.append({"name": "origin-id", "attr": {"xmlns": "urn:xmpp:sid:0", "id": f"{rng.getrandbits(64):x}"}})
    if rng.random() < 0.1:
        reply = {"name": "reply", "attr": {"xmlns": "urn:xmpp:reply:0", "to": peer, "id": f"r{i}"}}
        fallback = {"name": "fallback", "attr": {"xmlns": "urn:xmpp:fallback:0", "for": "urn:xmpp:reply:0"}}
        fallback[1] = {"name": "body", "attr": {"start": "0", "end": "5"}}
        children += [reply, fallback]
    table: dict[Any, Any] = {"name": "message", "attr": attr}
    for n, child in enumerate(children, 1):
        table[n] = child
    return table


def built_corpus(quick: bool) -> list[dict[Any, Any]]:
    rng = random.Random(42)
    return [message(rng, i) for i in range(5_000 if quick else 20_000)]


def read_corpus(directory: str) -> list[dict[Any, Any]]:
    """The stanza tables of every archive file under directory, as internal.py's _decode_item passes them."""
    tables = []
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.list"), recursive=True)):
        with open(path, "rb") as f:
            for item in loads_list(f.read(), path, sandbox=False):
                table = {k: v for k, v in item.items() if k not in ITEM_FIELDS}
                table["attr"] = {k: v for k, v in item["attr"].items() if k not in STAMP_ATTRS}
                tables.append(table)
    return tables


def load_module(path: str) -> ModuleType:
    """Another stanza.py, imported beside the current one (its relative imports resolve the same)."""
    name = current.__name__ + "_against"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def operations(module: ModuleType, tables: list[dict[Any, Any]]) -> list[tuple[str, Callable[[], Any]]]:
    """The operations timed, each over the whole corpus, using module's Element."""
    element = module.Element
    elements = [element.deserialize(t, "bench", strict=False) for t in tables]
    texts = [e.to_xml() for e in elements]

    def lenient() -> None:
        for table in tables:
            element.deserialize(table, "bench", strict=False)

    def strict() -> None:
        for table in tables:
            element.deserialize(table, "bench")

    def to_xml() -> None:
        for e in elements:
            e.to_xml()

    def from_xml() -> None:
        for text in texts:
            element.from_xml(text, "bench")

    return [
        ("deserialize(strict=False)", lenient),
        ("deserialize(strict=True)", strict),
        ("to_xml", to_xml),
        ("from_xml", from_xml),
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    min_time = 0.5 if quick else 2.0
    args = sys.argv[1:]
    corpus = args[args.index("--corpus") + 1] if "--corpus" in args else None
    against = args[args.index("--against") + 1] if "--against" in args else None
    tables = read_corpus(corpus) if corpus else built_corpus(quick)
    old = load_module(against) if against else None

    # Same results first: a faster codec that disagrees is no codec.
    if old is not None:
        for table in tables:
            ours = current.Element.deserialize(table, "bench", strict=False)
            theirs = old.Element.deserialize(table, "bench", strict=False)
            assert ours.preserialize() == theirs.preserialize() and ours.to_xml() == theirs.to_xml(), table

    n = len(tables)
    n_elements = sum(_count_elements(current.Element.deserialize(t, "b", strict=False)) for t in tables)
    print(f"Corpus: {n} stanzas, {n_elements} elements ({corpus or 'built in memory'}). ", end="")
    print(f"Python {sys.version.split()[0]}.\n")
    print("| operation | µs/stanza | stanzas/s | before µs/stanza | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    before = dict(operations(old, tables)) if old else {}
    for label, fn in operations(current, tables):
        t_new = timed(fn, min_time)
        row = f"| {label} | {t_new / n * 1e6:.2f} | {n / t_new:,.0f} |"
        if label in before:
            t_old = timed(before[label], min_time)
            row += f" {t_old / n * 1e6:.2f} | {t_old / t_new:.2f}x |"
        else:
            row += " | |"
        print(row)


def _count_elements(root: Any) -> int:
    count, stack = 0, [root]
    while stack:
        element = stack.pop()
        count += 1
        stack.extend(c for c in element.children if not isinstance(c, str))
    return count


if __name__ == "__main__":
    main()
