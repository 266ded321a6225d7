# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The floor of one migration: the raw cost of reading the source and bulk-loading the result.

Run by run_bench.py in a fresh process: ``floor.py SPEC.json``. SPEC holds ``source`` and
``dest`` (a kind, "files" / "sqlite" / "pg" / "mysql", and a store definition) and ``rows``, a
pickle of what the destination must end up holding (dumped from our migrator's destination, so
no conversion is counted). The read is raw: every file's bytes, or every row of both tables,
with no parsing. The load: one transaction of executemany for SQLite3, COPY for PostgreSQL,
multi-row INSERTs in one transaction for MariaDB, plain writes for files and one sync() at the
end (durable, as the SQL floors are by their COMMIT). Prints
``{"read_s": ..., "load_s": ...}`` on stdout.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".build", "collections"))

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.dialects import (  # noqa: E402
    MySQL,
    PostgreSQL,
    SQLite3,
)

DIALECTS = {"sqlite": SQLite3, "pg": PostgreSQL, "mysql": MySQL}
KV_COLS = ("host", "user", "store", "key", "type", "value")
AR_COLS = ("host", "user", "store", "key", "when", "with", "type", "value")
MYSQL_BATCH = 500  # rows per INSERT: ~1 MB statements, well under max_allowed_packet


def read_source(kind: str, definition: dict[str, Any]) -> int:
    """Read the source raw; returns the bytes (files) or rows (SQL) read."""
    if kind == "files":
        total = 0
        for top, _dirs, names in os.walk(definition["path"]):
            for name in names:
                with open(os.path.join(top, name), "rb") as f:
                    total += len(f.read())
        return total
    dialect = DIALECTS[kind](definition)
    conn = dialect.connect(create=False)
    count = 0
    with dialect.transaction(conn) as cur:
        for table in ("prosody", "prosodyarchive"):
            cur.execute(f'SELECT * FROM "{table}"')
            count += len(cur.fetchall())
    conn.close()
    return count


def load_files(root: str, files: list[tuple[str, bytes]]) -> None:
    made: set[str] = set()
    for rel, data in files:
        path = os.path.join(root, rel)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        with open(path, "wb") as f:
            f.write(data)
    # Durable at the end, as every SQL floor is by its one COMMIT: one sync() for all the files,
    # the cheapest way there (no fsync per file, no temporary file and rename).
    os.sync()


def load_sql(kind: str, definition: dict[str, Any], kv: list[tuple], ar: list[tuple]) -> None:
    dialect = DIALECTS[kind](definition)
    conn = dialect.connect(create=True)
    with dialect.transaction(conn) as cur:
        dialect.create_tables(cur, {"prosody", "prosodyarchive"})
    with dialect.transaction(conn) as cur:
        for table, cols, rows in (("prosody", KV_COLS, kv), ("prosodyarchive", AR_COLS, ar)):
            names = ", ".join(f'"{c}"' for c in cols)
            if kind == "pg":
                with cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
                    for row in rows:
                        copy.write_row(row)
            elif kind == "mysql":
                one = "(" + ", ".join(["%s"] * len(cols)) + ")"
                for start in range(0, len(rows), MYSQL_BATCH):
                    batch = rows[start : start + MYSQL_BATCH]
                    flat = [v for row in batch for v in row]
                    cur.execute(f'INSERT INTO "{table}" ({names}) VALUES ' + ", ".join([one] * len(batch)), flat)
            else:
                marks = ", ".join(["?"] * len(cols))
                cur.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)
    conn.close()


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    with open(spec["rows"], "rb") as f:
        rows = pickle.load(f)
    t0 = time.perf_counter()
    read_source(spec["source"]["kind"], spec["source"]["definition"])
    t1 = time.perf_counter()
    dest = spec["dest"]
    if dest["kind"] == "files":
        load_files(dest["definition"]["path"], rows["files"])
    else:
        load_sql(dest["kind"], dest["definition"], rows["kv"], rows["ar"])
    t2 = time.perf_counter()
    print(json.dumps({"read_s": t1 - t0, "load_s": t2 - t1}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
