# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark our ``prosody-migrator`` against Prosody's real ``/usr/bin/prosody-migrator``.

Run from the collection root: ``.venv/bin/python bench/run_bench.py [--sizes small,medium]
[--skip-real] [--directions ...] [--real-directions ...] [--module-directions ...]
[--real-budget SECONDS] [--workdir DIR] [--keep]``.

For each size a corpus is written by real Prosody's storage code (tests/corpus/make_corpus.lua),
then for each direction, each into a fresh destination (a new file, directory or database):
our command (scripts/prosody-migrator, a subprocess, as a user runs it), the real migrator,
the floor (bench/floor.py: raw read of the source plus a bulk load of the rows our run wrote)
a second run of ours over the unchanged destination, and (--module-directions) the same job
through the Ansible module (``ansible localhost -m xmpp.prosody.prosody_migrate``) into a fresh
destination, for the module's overhead over the command. Our first and second runs share a state
file of their own (--state), new for each direction: the first is a true first run, the second
skips what the first recorded. Every child's wall time, CPU time and
peak RSS come from wait4's rusage. After each of our runs the destination's entries and archive
items are counted against what the corpus holds: a broken migration is reported, not timed.

The SQLite3 and PostgreSQL sources of "SQLite3 → files" and "PostgreSQL → MariaDB" are the
destinations our own "files → SQLite3" and "files → PostgreSQL" runs wrote. The real migrator
drops to the ``prosody`` user, so its files are handed to that user first. It is skipped when
a smaller size of the same run predicts more than --real-budget seconds for it (the table says
so). Results: a Markdown table printed and written to bench/results/bench-<timestamp>.md, with
the raw numbers beside it as JSON. The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.dialects import (  # noqa: E402
    MySQL,
    PostgreSQL,
    SQLite3,
)

PYTHON = sys.executable
OURS = [PYTHON, os.path.join(ROOT, "scripts", "prosody-migrator")]
# The same job through the Ansible module, on localhost, in this interpreter.
MODULE = [
    os.path.join(os.path.dirname(PYTHON), "ansible"),
    "localhost",
    "-i",
    "localhost,",
    "-c",
    "local",
    "-e",
    f"ansible_python_interpreter={PYTHON}",
    "-m",
    "xmpp.prosody.prosody_migrate",
]
REAL = ["/usr/bin/prosody-migrator"]
TIME = "/usr/bin/time"
CORPUS = os.path.join(ROOT, "tests", "corpus", "make_corpus.lua")
FLOOR = os.path.join(HERE, "floor.py")
RESULTS = os.path.join(HERE, "results")

SIZES = {"tiny": (50, 5), "small": (1000, 10), "medium": (1000, 100), "large": (10000, 100)}
HOST, MUC = "example.org", "conference.example.org"
VHOST_STORES = ["accounts", "account_details", "roster", "vcard", "private", "blocklist"]
VHOST_ARCHIVES = ["archive-archive", "offline-archive"]
MUC_STORES = ["persistent", "config", "muc_log-archive"]
# (label, source kind, destination kind); a SQL source is the destination of an earlier direction.
DIRECTIONS = [
    ("files→SQLite3", "files", "sqlite"),
    ("files→PostgreSQL", "files", "pg"),
    ("files→MariaDB", "files", "mysql"),
    ("SQLite3→files", "sqlite", "files"),
    ("PostgreSQL→MariaDB", "pg", "mysql"),
]
DIALECTS = {"sqlite": SQLite3, "pg": PostgreSQL, "mysql": MySQL}
PG = {"host": "127.0.0.1", "username": "root"}
MY = {"host": "127.0.0.1", "username": "root", "password": ""}


@dataclass
class Measure:
    """One child process: wall and CPU seconds, peak RSS in MiB, exit status."""

    wall: float
    cpu: float
    rss_mb: float
    status: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Counts:
    entries: int  # keyval (host, user, store) entries
    items: int  # archive items
    rows: Optional[int] = None  # SQL rows of both tables (None for files)


@dataclass
class Result:
    size: str
    direction: str
    rows: Optional[int] = None
    ours: Optional[Measure] = None
    ours_ok: str = ""
    second: Optional[Measure] = None
    second_ok: str = ""
    real: Optional[Measure] = None
    real_ok: str = ""
    real_note: str = ""
    floor: Optional[Measure] = None
    module: Optional[Measure] = None
    module_ok: str = ""
    notes: list[str] = field(default_factory=list)


# running children ----------------------------------------------------------------------------
def measure(cmd: list[str], log: str, env: Optional[dict[str, str]] = None) -> Measure:
    """Run cmd to completion; stdout+stderr go to log."""
    # Through /usr/bin/time, a small process: Linux counts the RSS a child had before exec (a
    # copy of its parent's) in its peak, so a direct child of this growing process would inherit
    # our peak. wait4's CPU time covers time's children.
    rss_file = log + ".rss"
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", rss_file, *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(rss_file) as f:
        rss_kb = int(f.read().split()[-1])
    return Measure(wall, ru.ru_utime + ru.ru_stime, rss_kb / 1024, proc.returncode)


def lua_value(value: Any, indent: str = "") -> str:
    if isinstance(value, dict):
        inner = indent + "  "
        parts = [f"{inner}[{lua_value(k)}] = {lua_value(v, inner)};" for k, v in value.items()]
        return "{\n" + "\n".join(parts) + "\n" + indent + "}"
    if isinstance(value, list):
        return "{ " + ", ".join(lua_value(v) for v in value) + " }"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: str, stores: dict[str, dict[str, Any]]) -> None:
    hosts = {HOST: VHOST_STORES + VHOST_ARCHIVES, MUC: MUC_STORES}
    with open(path, "w") as f:
        for name, definition in stores.items():
            f.write(f"{name} {lua_value(dict(definition, hosts=hosts))}\n")


def give_to_prosody(path: str) -> None:
    """The real migrator setuid()s to prosody: it must read and write there."""
    subprocess.run(["chown", "-R", "prosody:prosody", path], check=True)


# stores --------------------------------------------------------------------------------------
class Stores:
    """Fresh destinations, all removed by cleanup()."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.databases: list[tuple[str, str]] = []
        # File trees done with, removed at cleanup: for a minute or more after many files are
        # deleted, ext4 without a journal skips their inodes one by one when it allocates new ones
        # (recently_deleted), which made creating 10,000 files take 4 s of system time instead
        # of 0.2-0.9 s, and would charge that to whichever run came next.
        self.trash: list[str] = []
        self.tag = f"bench{os.getpid()}"

    def fresh(self, kind: str, label: str) -> dict[str, Any]:
        name = f"{self.tag}_{label}".lower()
        if kind == "files":
            path = os.path.join(self.workdir, name)
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            return {"type": "internal", "path": path}
        if kind == "sqlite":
            path = os.path.join(self.workdir, name + ".sqlite")
            if os.path.exists(path):
                os.unlink(path)
            return {"type": "sql", "driver": "SQLite3", "database": path}
        self.drop(kind, name)
        self._admin(kind, f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" if kind == "mysql" else ""))
        self.databases.append((kind, name))
        if kind == "pg":
            return {"type": "sql", "driver": "PostgreSQL", "database": name, **PG}
        return {"type": "sql", "driver": "MySQL", "database": name, **MY}

    def _admin(self, kind: str, statement: str) -> None:
        if kind == "pg":
            import psycopg

            with psycopg.connect(host=PG["host"], user=PG["username"], dbname="postgres", autocommit=True) as conn:
                conn.execute(statement)
        else:
            import pymysql

            conn = pymysql.connect(host=MY["host"], user=MY["username"], password=MY["password"], autocommit=True)
            with conn.cursor() as cur:
                cur.execute(statement)
            conn.close()

    def drop(self, kind: str, name: str) -> None:
        self._admin(kind, f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if kind == "pg" else ""))

    def cleanup_except(self, keep: dict[str, dict[str, Any]]) -> None:
        """Drop every database but the ones later directions read from."""
        kept = {d.get("database") for d in keep.values()}
        for kind, name in list(self.databases):
            if name not in kept:
                self.drop(kind, name)
                self.databases.remove((kind, name))

    def discard(self, path: str) -> None:
        """A file tree no longer needed, removed at cleanup (see trash)."""
        self.trash.append(path)

    def cleanup(self) -> None:
        for kind, name in self.databases:
            self.drop(kind, name)
        self.databases.clear()
        for path in self.trash:
            shutil.rmtree(path, ignore_errors=True)
        self.trash.clear()


def kind_of(definition: dict[str, Any]) -> str:
    if definition["type"] == "internal":
        return "files"
    return {"SQLite3": "sqlite", "PostgreSQL": "pg", "MySQL": "mysql"}[definition["driver"]]


def sql_query(definition: dict[str, Any], statements: list[str]) -> list[list[tuple]]:
    dialect = DIALECTS[kind_of(definition)](definition)
    conn = dialect.connect(create=False)
    try:
        with dialect.transaction(conn) as cur:
            out = []
            for statement in statements:
                cur.execute(statement)
                out.append(list(cur.fetchall()))
            return out
    finally:
        conn.close()


def count(definition: dict[str, Any]) -> Counts:
    """What a store holds: keyval entries, archive items, SQL rows."""
    if definition["type"] == "internal":
        entries = items = 0
        for top, _dirs, names in os.walk(definition["path"]):
            for name in names:
                if name.endswith(".dat"):
                    entries += 1
                elif name.endswith(".list"):
                    with open(os.path.join(top, name), "rb") as f:
                        items += sum(1 for line in f if line.startswith(b"item("))
        return Counts(entries, items)
    try:
        (e,), (i,), (r,) = sql_query(
            definition,
            [
                'SELECT COUNT(*) FROM (SELECT DISTINCT "host", "user", "store" FROM "prosody") AS t',
                'SELECT COUNT(*) FROM "prosodyarchive"',
                'SELECT COUNT(*) FROM "prosody"',
            ],
        )
    except Exception as exc:  # a destination the run never created: report, don't crash
        print(f"  count failed: {exc}", file=sys.stderr)
        return Counts(-1, -1, None)
    return Counts(e[0], i[0], r[0] + i[0])


def expected(users: int, messages: int) -> Counts:
    """What make_corpus.lua writes (see there): keyval entries and archive items."""
    rooms = max(1, users // 50)
    entries = 5 * users + users // 3 + rooms + 1
    items = users * messages + users // 10 + rooms * min(messages, 50)
    return Counts(entries, items)


def check(definition: dict[str, Any], want: Counts) -> tuple[str, Counts]:
    got = count(definition)
    if (got.entries, got.items) == (want.entries, want.items):
        return "ok", got
    return f"WRONG: {got.entries} entries/{got.items} items, want {want.entries}/{want.items}", got


def dump_rows(definition: dict[str, Any], path: str) -> None:
    """What the destination holds, for the floor to bulk-load."""
    if definition["type"] == "internal":
        root = definition["path"]
        files = []
        for top, _dirs, names in os.walk(root):
            for name in names:
                full = os.path.join(top, name)
                with open(full, "rb") as f:
                    files.append((os.path.relpath(full, root), f.read()))
        rows: dict[str, Any] = {"files": files}
    else:
        kv, ar = sql_query(
            definition,
            [
                'SELECT "host", "user", "store", "key", "type", "value" FROM "prosody"',
                'SELECT "host", "user", "store", "key", "when", "with", "type", "value" FROM "prosodyarchive" '
                'ORDER BY "sort_id"',
            ],
        )
        rows = {"kv": kv, "ar": ar}
    with open(path, "wb") as f:
        pickle.dump(rows, f, protocol=pickle.HIGHEST_PROTOCOL)


# one direction -------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args, self.workdir = args, workdir
        self.stores = Stores(workdir)
        self.results: list[Result] = []
        self.sources: dict[str, dict[str, Any]] = {}  # kind -> our destination usable as a source
        self.source_rows: dict[str, Optional[int]] = {}

    def run_size(self, size: str) -> None:
        users, messages = SIZES[size]
        data = os.path.join(self.workdir, f"corpus-{size}")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        print(f"== {size}: corpus U={users} M={messages}", file=sys.stderr)
        subprocess.run(["lua5.4", CORPUS, data, str(users), str(messages), "1", "1"], check=True)
        give_to_prosody(data)
        self.sources = {"files": {"type": "internal", "path": data}}
        self.source_rows = {"files": None}
        want = expected(users, messages)
        for label, src_kind, dst_kind in DIRECTIONS:
            if self.args.directions and label not in self.args.directions:
                continue
            if src_kind not in self.sources:
                self._make_source(size, src_kind, want)
            self.results.append(self.run_direction(size, label, src_kind, dst_kind, want))
            self.stores.cleanup_except(self.sources)

    def _make_source(self, size: str, kind: str, want: Counts) -> None:
        """A SQL source made with ours (files → kind), untimed."""
        dest = self.stores.fresh(kind, f"{size}_src_{kind}")
        cfg = os.path.join(self.workdir, f"{size}-src-{kind}.cfg.lua")
        write_config(cfg, {"input": self.sources["files"], "output": dest})
        m = measure([*OURS, "--config", cfg, "--no-state", "input", "output"], cfg + ".log")
        ok, got = check(dest, want)
        if m.status or ok != "ok":
            raise SystemExit(f"making the {kind} source failed ({ok}); see {cfg}.log")
        self.sources[kind], self.source_rows[kind] = dest, got.rows

    def run_direction(self, size: str, label: str, src_kind: str, dst_kind: str, want: Counts) -> Result:
        print(f"-- {size} {label}", file=sys.stderr)
        res = Result(size, label)
        source = self.sources[src_kind]
        if src_kind != "files":
            res.notes.append(f"source: {label.split('→')[0]} written by ours (files→{label.split('→')[0]})")
        tag = f"{size}_{dst_kind}_{src_kind}"
        base = os.path.join(self.workdir, f"{size}-{src_kind}-{dst_kind}")

        # ours, then ours again over the unchanged destination
        dest = self.stores.fresh(dst_kind, f"{tag}_ours")
        write_config(base + ".ours.cfg.lua", {"input": source, "output": dest})
        state = base + ".state.sqlite"
        for stale in (state, state + "-journal"):
            if os.path.exists(stale):
                os.unlink(stale)
        cmd = [*OURS, "--config", base + ".ours.cfg.lua", "--state", state, "input", "output"]
        res.ours = measure(cmd, base + ".ours.log")
        res.ours_ok, got = check(dest, want) if res.ours.status == 0 else (f"exit {res.ours.status}", None)
        res.rows = got.rows if got and got.rows is not None else self.source_rows.get(src_kind)
        res.second = measure(cmd, base + ".ours2.log")
        res.second_ok, _detail = check(dest, want) if res.second.status == 0 else (f"exit {res.second.status}", None)

        if self.args.module_directions is None or label in self.args.module_directions:
            self._module(res, source, dst_kind, tag, base, want)

        # the floor: raw read of the source, bulk load of what ours wrote
        rows_file = base + ".rows.pickle"
        dump_rows(dest, rows_file)
        floor_dest = self.stores.fresh(dst_kind, f"{tag}_floor")
        spec = {
            "source": {"kind": src_kind, "definition": source},
            "dest": {"kind": dst_kind, "definition": floor_dest},
            "rows": rows_file,
        }
        with open(base + ".floor.json", "w") as f:
            json.dump(spec, f)
        res.floor = measure([PYTHON, FLOOR, base + ".floor.json"], base + ".floor.log")
        if res.floor.status == 0:
            with open(base + ".floor.log") as f:
                res.floor.extra = json.loads(f.read().strip().splitlines()[-1])
        os.unlink(rows_file)
        if dst_kind == "files":
            self.stores.discard(floor_dest["path"])
            res.notes.append("floor load: plain file writes, one sync() at the end")

        # the real migrator
        if dst_kind == "sqlite" and src_kind == "files":
            self.sources.setdefault("sqlite", dest)
            self.source_rows.setdefault("sqlite", res.rows)
        if dst_kind == "pg" and src_kind == "files":
            self.sources.setdefault("pg", dest)
            self.source_rows.setdefault("pg", res.rows)
        self._real(res, size, source, dst_kind, tag, base, want)
        return res

    def _module(self, res: Result, source: dict, dst_kind: str, tag: str, base: str, want: Counts) -> None:
        """The same job as ours, through the Ansible module, into a fresh destination."""
        dest = self.stores.fresh(dst_kind, f"{tag}_module")
        cfg = base + ".module.cfg.lua"
        write_config(cfg, {"input": source, "output": dest})
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".build", "collections")}
        args = json.dumps({"config": cfg, "from": "input", "to": "output"})
        res.module = measure([*MODULE, "-a", args], base + ".module.log", env)
        res.module_ok, _got = check(dest, want) if res.module.status == 0 else (f"exit {res.module.status}", None)
        if dst_kind == "files":
            self.stores.discard(dest["path"])

    def _real(self, res: Result, size: str, source: dict, dst_kind: str, tag: str, base: str, want: Counts) -> None:
        if self.args.skip_real:
            res.real_note = "skipped (--skip-real)"
            return
        if self.args.real_directions is not None and res.direction not in self.args.real_directions:
            res.real_note = "skipped (not in --real-directions)"
            return
        if dst_kind != "files" and kind_of(source) != "files":
            # Prosody 0.12's migrator loads mod_storage_sql once per host, with the first sql
            # settings it sees: a sql→sql run reads and writes the source database (tried: it
            # says "Done!" and the destination stays empty).
            res.real_note = "n/a: Prosody 0.12 cannot migrate sql→sql"
            return
        predicted = self._predict(res)
        if predicted is not None and self.args.real_budget and predicted > self.args.real_budget:
            res.real_note = f"skipped: predicted {predicted:.0f} s > budget {self.args.real_budget:.0f} s"
            return
        if predicted is None and size == "large" and self.args.real_budget:
            res.real_note = "skipped: no smaller size in this run to predict its time from"
            return
        dest = self.stores.fresh(dst_kind, f"{tag}_real")
        write_config(base + ".real.cfg.lua", {"input": source, "output": dest})
        give_to_prosody(self.workdir)
        res.real = measure([*REAL, "--config", base + ".real.cfg.lua", "input", "output"], base + ".real.log")
        res.real_ok, got = check(dest, want) if res.real.status == 0 else (f"exit {res.real.status}", None)
        if got and (got.entries, got.items) == (want.entries + 1, want.items) and dst_kind == "files":
            # The host-level "persistent" store is written a second time, as user "" (persistent/.dat).
            res.real_ok = "ok (+1 entry: host-level data again as user '')"
        if dst_kind == "files":
            self.stores.discard(dest["path"])
        elif dst_kind == "sqlite":
            os.unlink(dest["database"])

    def _predict(self, res: Result) -> Optional[float]:
        """The real migrator's time at this size, from its rows/s at a smaller size of this run."""
        for earlier in self.results:
            if earlier.direction == res.direction and earlier.real and earlier.rows and res.rows:
                return earlier.real.wall * res.rows / earlier.rows
        return None


# the report ----------------------------------------------------------------------------------
def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def rate(rows: Optional[int], m: Optional[Measure]) -> str:
    return "-" if not rows or not m or not m.wall else f"{rows / m.wall:,.0f}"


def render(results: list[Result], header: str) -> str:
    lines = [header, ""]
    lines.append(
        "| size | direction | SQL rows | ours wall s | ours CPU s | ours RSS MB | ours rows/s | "
        "real wall s | real CPU s | real RSS MB | real rows/s | **real/ours** (wall) | real/ours (CPU) | "
        "floor s (read+load) | **ours/floor** | 2nd run s | 2nd/1st | module s | module - ours s | check |"
    )
    lines.append("|" + "---|" * 20)
    notes: list[str] = []
    for r in results:
        o, s, rl, fl = r.ours, r.second, r.real, r.floor
        floor_s = fl.extra["read_s"] + fl.extra["load_s"] if fl and fl.extra else None
        floor_txt = f"{fmt(floor_s, 2)} ({fmt(fl.extra['read_s'], 2)}+{fmt(fl.extra['load_s'], 2)})" if floor_s else "-"
        checks = [f"ours {r.ours_ok}", f"2nd {r.second_ok}"]
        if r.module:
            checks.append(f"module {r.module_ok}")
        if rl:
            checks.append(f"real {r.real_ok}")
        lines.append(
            "| "
            + " | ".join(
                [
                    r.size,
                    r.direction,
                    f"{r.rows:,}" if r.rows else "-",
                    fmt(o and o.wall),
                    fmt(o and o.cpu),
                    fmt(o and o.rss_mb, 0),
                    rate(r.rows, o),
                    fmt(rl and rl.wall) if rl else r.real_note or "-",
                    fmt(rl and rl.cpu),
                    fmt(rl and rl.rss_mb, 0),
                    rate(r.rows, rl),
                    ratio(rl and rl.wall, o and o.wall),
                    ratio(rl and rl.cpu, o and o.cpu),
                    floor_txt,
                    ratio(o and o.wall, floor_s),
                    fmt(s and s.wall),
                    ratio(s and s.wall, o and o.wall),
                    fmt(r.module and r.module.wall),
                    fmt(r.module.wall - o.wall) if r.module and o else "-",
                    "; ".join(checks),
                ]
            )
            + " |"
        )
        notes += [f"{r.size} {r.direction}: {n}" for n in r.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="small,medium", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--skip-real", action="store_true", help="do not run /usr/bin/prosody-migrator")
    parser.add_argument(
        "--directions", help="comma-separated labels (default all): " + ", ".join(d[0] for d in DIRECTIONS)
    )
    parser.add_argument("--real-directions", help="run the real migrator only for these directions (default all)")
    parser.add_argument(
        "--module-directions",
        default="files→SQLite3",
        help="also run the Ansible module for these directions (default files→SQLite3; 'all' for every one)",
    )
    parser.add_argument("--real-budget", type=float, default=900, help="skip a real run predicted longer (0: never)")
    parser.add_argument("--workdir", help="where corpora and stores go (default a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    if any(s not in SIZES for s in sizes):
        parser.error(f"--sizes: choose from {', '.join(SIZES)}")
    args.directions = args.directions.split(",") if args.directions else None
    args.real_directions = args.real_directions.split(",") if args.real_directions else None
    args.module_directions = None if args.module_directions == "all" else args.module_directions.split(",")
    workdir = args.workdir or tempfile.mkdtemp(prefix="prosody-bench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    bench = Bench(args, workdir)
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        for size in sizes:
            bench.run_size(size)
    finally:
        bench.stores.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()
    header = (
        f"# prosody-migrator benchmark {started}\n\n"
        f"Sizes: {', '.join(f'{s} (U={SIZES[s][0]}, M={SIZES[s][1]})' for s in sizes)}. "
        f"{os.cpu_count()} CPUs, load average at the end {load[0]:.2f}. Ours: scripts/prosody-migrator "
        f"(a subprocess); real: {REAL[0]} (Prosody 0.12). Wall and CPU seconds and peak RSS of each child "
        "from wait4; rows = SQL rows (both tables) on the SQL side; ratios > 1x in real/ours mean ours "
        "is faster; the floor is a raw read of the source plus a bulk load of the rows ours wrote."
    )
    text = render(bench.results, header)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"bench-{started}")
    with open(out + ".md", "w") as f:
        f.write(text)
    with open(out + ".json", "w") as f:
        json.dump([asdict(r) for r in bench.results], f, indent=1, default=str)
    print(f"written: {out}.md", file=sys.stderr)
    return 1 if any("WRONG" in r.ours_ok or "exit" in r.ours_ok for r in bench.results) else 0


if __name__ == "__main__":
    sys.exit(main())
