"""`make demo`: run the installed collection's codecs over the bundled Prosody data directory.

demo/data was written by real Prosody 0.12's own storage code (tests/corpus/make_corpus.lua):
a VirtualHost with accounts, rosters, vCards, private XML, blocklists and message archives, and
a MUC component with a room and its log. Every file is read with the codecs, written back in
Prosody's format and read again; every archived stanza goes through XML and back. The migration
of this directory to SQLite replaces this check once the engine lands.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote_to_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / ".venv" / "collections"))  # where `make demo` installed the collection

from ansible_collections.xmpp.prosody.plugins.module_utils import luadata  # noqa: E402
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError  # noqa: E402
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element  # noqa: E402

ARCHIVE_FIELDS = ("key", "when", "with")


def name(part: str) -> str:
    """Prosody's percent-encoded file name, decoded for display."""
    return unquote_to_bytes(part).decode("utf-8", "replace")


def check_dat(path: Path) -> int:
    """Read a keyval file, write it back, read that: the value must not change."""
    value = luadata.loads_dat(path.read_bytes(), str(path))
    again = luadata.loads_dat(luadata.dumps_dat(value), f"{path} (rewritten)")
    if again != value:
        raise SystemExit(f"{path}: value changed after a round trip")
    return 1


def check_list(path: Path) -> int:
    """Read an archive file; each item must survive Prosody's format and XML unchanged."""
    items = luadata.loads_list(path.read_bytes(), str(path))
    if luadata.loads_list(luadata.dumps_list(items), f"{path} (rewritten)") != items:
        raise SystemExit(f"{path}: items changed after a round trip")
    for index, item in enumerate(items, 1):
        source = f"{path} item {index}"
        stanza_table = {k: v for k, v in item.items() if k not in ARCHIVE_FIELDS}
        element = Element.deserialize(stanza_table, source)
        if Element.from_xml(element.to_xml(), source) != element:
            raise SystemExit(f"{source}: stanza changed after a trip through XML")
    return len(items)


def main() -> int:
    data = ROOT / "demo" / "data"
    counts: Counter[tuple[str, str, str]] = Counter()
    try:
        for path in sorted(data.rglob("*")):
            if path.suffix == ".dat":
                parts = path.relative_to(data).parts
                host, store = name(parts[0]), name(parts[1] if len(parts) == 3 else path.stem)
                counts[(host, store, "keyval")] += check_dat(path)
            elif path.suffix == ".list":
                host, store = (name(p) for p in path.relative_to(data).parts[:2])
                counts[(host, store, "archive")] += check_list(path)
    except ProsodyMigrateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Codec self-check of {data.relative_to(ROOT)} (written by Prosody 0.12):\n")
    print(f"{'host':<26} {'store':<16} {'type':<8} {'values/items':>12}")
    for (host, store, kind), n in sorted(counts.items()):
        print(f"{host:<26} {store:<16} {kind:<8} {n:>12}")
    print(f"\nAll {sum(counts.values())} values and archived stanzas read, rewritten and re-read unchanged.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
