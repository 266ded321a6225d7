"""`make demo`: migrate the bundled Prosody data directory to SQLite with the installed command.

demo/data was written by real Prosody 0.12's own storage code (tests/corpus/make_corpus.lua):
a VirtualHost with accounts, rosters, vCards, private XML, blocklists and message archives, and
a MUC component with a room, its config and its log. The demo writes a migrator.cfg.lua in
Prosody's own format, runs `.venv/bin/prosody-migrator` on it (the console command `make demo`
installed from the built collection), runs it a second time to show that nothing changes, and
counts the rows that landed in the SQLite database.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ROOT / ".venv" / "bin" / "prosody-migrator"
WORK = ROOT / ".build" / "demo"

CONFIG = """-- Written by demo/demo.py, in the form of Prosody's own migrator.cfg.lua.
local data_path = {data!r}

local vhost = {{
\t"accounts", "account_details", "roster", "vcard", "private", "blocklist",
\t"archive-archive", "offline-archive", "pubsub_nodes-pubsub", "pep-pubsub",
}}
local muc = {{ "persistent", "config", "state", "muc_log-archive" }}

input {{
\ttype = "internal";
\tpath = data_path;
\thosts = {{
\t\t["example.org"] = vhost;
\t\t["conference.example.org"] = muc;
\t}};
}}

output {{
\ttype = "sql";
\tdriver = "SQLite3";
\tdatabase = {database!r};
}}
"""


def run(*args: str) -> None:
    """Run the migrator as a user would, showing its output."""
    print(f"$ prosody-migrator {' '.join(args)}", flush=True)
    subprocess.run([str(COMMAND), *args], check=True)
    print(flush=True)


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    database = WORK / "prosody.sqlite"
    database.unlink(missing_ok=True)
    config = WORK / "migrator.cfg.lua"
    config.write_text(CONFIG.format(data=str(ROOT / "demo" / "data"), database=str(database)), encoding="utf-8")

    print(f"Migrating demo/data (Prosody's file store) to {database.relative_to(ROOT)}\n")
    run("--config", str(config), "input", "output")
    print("Running it again: the destination already holds everything.\n")
    run("--config", str(config), "--verify", "input", "output")

    with sqlite3.connect(database) as db:
        keyval = db.execute('SELECT count(*) FROM "prosody"').fetchone()[0]
        archive = db.execute('SELECT count(*) FROM "prosodyarchive"').fetchone()[0]
    print(f"{database.relative_to(ROOT)} now holds {keyval} keyval rows and {archive} archived items;")
    print('point Prosody at it with storage = "sql" and sql = { driver = "SQLite3", database = ... }.')
    return 0


if __name__ == "__main__":
    sys.exit(main())
