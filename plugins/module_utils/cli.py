# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``prosody-migrator`` command: Prosody's command line, on our engine.

``prosody-migrator [--config FILE] [--keep-going] [-v] [FROM TO]`` as Prosody's, plus
``--check``, ``--diff``, ``--verify``, ``--json``, ``--hosts``, ``--stores``, ``--jobs`` and
``--state``/``--no-state``. The summary goes
to stdout, progress (on a terminal only), logging and errors to stderr. Every text written goes
through a Scrubber that knows the config's passwords, as a last guard behind the engine's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, TextIO

from .backends.dialects import SqlConfigError
from .config import DEFAULT_CONFIG, load_config
from .engine import Options, run_migration
from .errors import ProsodyMigrateError
from .parallel import MAX_JOBS, default_jobs
from .plan import ConfigError
from .report import Failure, ProgressEvent, Report, Scrubber, StoreResult, find_secrets
from .state import default_path

PROG = "prosody-migrator"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger(PROG)

_DESCRIPTION = """\
Copy a Prosody server's data from one storage backend to another, as Prosody's
prosody-migrator does, reading the same migrator.cfg.lua. FROM and TO name stores the
config file defines ('input' and 'output' when none are given). A run compares with the
destination first and writes only what differs, so running it again changes nothing.
A state file remembers the entries found equal, so that a run skips those unchanged on both
sides since (see --state).
"""
_EPILOG = f"""\
exit status:
  {EXIT_OK}  success (with --verify: the destination matches the source)
  {EXIT_FAILED}  something failed: a user, store or host could not be migrated, a backend
     could not be opened, or --verify found a difference (the summary names it)
  {EXIT_USAGE}  usage or config error: bad arguments, an unreadable or invalid config file,
     an unknown store, host or type (nothing was written)
  130  interrupted (Ctrl-C)

Passwords and account secrets are never shown; --diff masks secret-looking fields.
"""


class _Usage(Exception):
    """Bad arguments: usage and message on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(message)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments, Prosody's first."""
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        usage="%(prog)s [options] [FROM TO]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # main() prints the help itself, to its own stdout
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("positional", nargs="*", metavar="FROM TO", help="the stores to copy from and to")
    parser.add_argument("--config", metavar="FILE", help=f"the migrator config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--keep-going", action="store_true", help="go on after a failure, and report them all")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)")
    # Prosody's own migrator needs --root to run as root; accepting it keeps scripts that pass it
    # working. We never switch users, so it changes nothing here.
    parser.add_argument("--root", action="store_true", help="accepted for compatibility with Prosody's; no effect")
    parser.add_argument("--check", action="store_true", help="compute what would change, write nothing")
    parser.add_argument("--diff", action="store_true", help="show what changes, per host, store and user")
    parser.add_argument("--verify", action="store_true", help="read the destination back and compare it")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout, nothing else")
    parser.add_argument("--hosts", metavar="LIST", type=_name_list, help="only these hosts (comma-separated)")
    parser.add_argument("--stores", metavar="LIST", type=_name_list, help="only these stores (comma-separated)")
    parser.add_argument(
        "-j",
        "--jobs",
        metavar="N",
        type=_jobs,
        help=f"worker processes sharing the users (default: one per core, at most {MAX_JOBS}; 1: no workers)",
    )
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--state",
        metavar="FILE",
        help="the state file that lets a run skip entries unchanged on both sides since a run found them equal "
        "(default: $XDG_STATE_HOME/xmpp-prosody/<digest of FROM and TO>.sqlite, ~/.local/state when unset)",
    )
    state.add_argument(
        "--no-state", action="store_true", help="use no state file: compare every entry (and record nothing)"
    )
    return parser


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"not a number of processes (1 or more): {text!r}")
    return jobs


def _name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 failed, 2 usage or config error)."""
    out = _Console(stdout or sys.stdout, stderr or sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.help:
            out.out(parser.format_help())
            return EXIT_OK
        if len(args.positional) not in (0, 2):
            raise _Usage("incorrect number of parameters supplied: give FROM and TO, or neither")
    except _Usage as exc:
        out.err(parser.format_usage() + f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    with _logging(args.verbose, out):
        return _run(args, out)


def _run(args: argparse.Namespace, out: _Console) -> int:
    path = args.config or DEFAULT_CONFIG
    source_name, dest_name = args.positional or ("input", "output")
    try:
        config = load_config(path)
        for stores in config.values():
            find_secrets(stores, out.scrub.secrets)
        source, dest = _stores(config, path, source_name, dest_name)
    except ConfigError as exc:
        out.err(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    log.info("copying store %r (%s) to store %r (%s)", source_name, source["type"], dest_name, dest["type"])
    progress = _Progress(out) if out.is_terminal() else None
    options = Options(
        check=args.check,
        diff=args.diff,
        verify=args.verify,
        keep_going=args.keep_going,
        hosts=args.hosts,
        stores=args.stores,
        progress=_Events(progress),
        jobs=args.jobs or default_jobs(),
    )
    try:
        if not args.no_state:
            options.state = args.state or default_path(source, dest)
        report = run_migration(source, dest, options)
    except (ConfigError, SqlConfigError) as exc:
        return _fail(out, progress, f"{PROG}: error: {exc}", EXIT_USAGE)
    except ProsodyMigrateError as exc:
        return _fail(out, progress, f"{PROG}: failed: {exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail(out, progress, f"{PROG}: interrupted", 130)
    except Exception as exc:  # a bug: say so, the traceback (scrubbed) only with -v
        log.debug("traceback of the internal error", exc_info=True)
        return _fail(out, progress, f"{PROG}: internal error: {type(exc).__name__}: {exc}", EXIT_FAILED)
    if progress is not None:
        progress.clear()
    if args.json:
        out.out(json.dumps(_scrub_data(report.to_dict(), out.scrub), indent=2, sort_keys=True) + "\n")
    else:
        out.out(render_summary(report, source_name, dest_name, source, dest))
    return EXIT_FAILED if report.failed else EXIT_OK


def _stores(config: dict[str, dict[str, Any]], path: str, source: str, dest: str) -> tuple[dict, dict]:
    """The two definitions, or one ConfigError naming every store that is missing."""
    missing = [name for name in dict.fromkeys((source, dest)) if name not in config]
    if missing:
        defined = ", ".join(sorted(config)) or "none"
        names = " and ".join(repr(n) for n in missing)
        raise ConfigError(f"{path}: store {names} not defined in the config (it defines: {defined})")
    if source == dest:
        raise ConfigError(f"FROM and TO are the same store {source!r}")
    return dict(config[source]), dict(config[dest])


def _fail(out: _Console, progress: Optional[_Progress], message: str, status: int) -> int:
    if progress is not None:
        progress.clear()
    out.err(message + "\n")
    return status


def _scrub_data(value: Any, scrub: Scrubber) -> Any:
    """JSON data with every string scrubbed (text-level scrubbing could miss escaped forms)."""
    if isinstance(value, dict):
        return {_scrub_data(k, scrub): _scrub_data(v, scrub) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_data(v, scrub) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


# output ---------------------------------------------------------------------------------------
class _Console:
    """stdout and stderr, every write scrubbed of the known secrets and made printable."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.scrub = Scrubber()

    def out(self, text: str) -> None:
        self._write(self.stdout, text)

    def err(self, text: str) -> None:
        self._write(self.stderr, text)

    def is_terminal(self) -> bool:
        try:
            return self.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def _write(self, stream: TextIO, text: str) -> None:
        text = _printable(self.scrub(text))
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a terminal that is not UTF-8
            stream.write(text.encode("ascii", "backslashreplace").decode("ascii"))
        stream.flush()


def _printable(text: str) -> str:
    """Names that are not UTF-8 (surrogate escapes) as \\xNN, as the report's JSON shows them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


class _ScrubbingHandler(logging.Handler):
    """Log records to the console's stderr, formatted, tracebacks included, then scrubbed."""

    def __init__(self, out: _Console) -> None:
        super().__init__()
        self.out = out
        self.before: Optional[Callable[[], None]] = None
        self.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad format string in a log call must not stop the run
            text = f"{PROG}: {record.levelname}: {record.msg!r}"
        if self.before is not None:
            self.before()
        self.out.err(text + "\n")


class _logging:
    """Route logging to the console for the run's duration (-v: INFO, -vv: DEBUG)."""

    def __init__(self, verbose: int, out: _Console) -> None:
        self.handler = _ScrubbingHandler(out)
        self.level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
        self.root = logging.getLogger()
        self.saved_level = self.root.level

    def __enter__(self) -> _logging:
        self.root.addHandler(self.handler)
        self.root.setLevel(self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.saved_level)


class _Events:
    """The engine's progress callback: logs each store at debug level, feeds the display."""

    def __init__(self, progress: Optional[_Progress]) -> None:
        self.progress = progress

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "store":
            log.debug("%s: host %s, store %s", event.phase, event.host, event.store)
        elif event.kind == "host":
            log.info("%s: host %s", event.phase, event.host)
        if self.progress is not None:
            self.progress(event)


class _Progress:
    """One status line on the terminal (stderr), redrawn in place at most ten times a second."""

    INTERVAL = 0.1

    def __init__(self, out: _Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.clock = out, clock
        self.started = self.last = 0.0
        self.shown = False
        for handler in logging.getLogger().handlers:  # log lines must not land on the status line
            if isinstance(handler, _ScrubbingHandler):
                handler.before = self.clear

    def __call__(self, event: ProgressEvent) -> None:
        now = self.clock()
        if event.kind == "start":
            self.started = now
        if event.kind == "done":
            self.clear()
            return
        if event.kind == "user" and now - self.last < self.INTERVAL:
            return
        self.last = now
        line = status_line(event, now - self.started)
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.out.err("\r" + line[:width] + "\x1b[K")
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.err("\r\x1b[K")
            self.shown = False


def status_line(event: ProgressEvent, elapsed: float) -> str:
    """The progress display's text for an event, e.g. ``copy: host 1/2 example.org | store 3/13 roster | ...``."""
    c = event.counts
    host_no = min((c.get("hosts_done") or 0) + 1, c.get("hosts_total") or 0)
    store_no = min((c.get("stores_done") or 0) + 1, c.get("stores_total") or 0)
    users_total = c.get("users_total")
    items = c.get("items_done") or 0
    rate = items / elapsed if elapsed > 0 else 0.0
    parts = [
        f"{event.phase}: host {host_no}/{c.get('hosts_total') or 0} {event.host or ''}".rstrip(),
        f"store {store_no}/{c.get('stores_total') or 0} {event.store or ''}".rstrip(),
        f"users {c.get('users_done') or 0}/{'?' if users_total is None else users_total}",
        f"{items} items ({rate:.0f}/s)",
    ]
    return " | ".join(parts)


# the summary ----------------------------------------------------------------------------------
_COUNTS = ("created", "updated", "unchanged", "failed")


def render_summary(
    report: Report, source_name: str, dest_name: str, source: dict[str, Any], dest: dict[str, Any]
) -> str:
    """The text summary: the table per host and store, warnings, failures, and the final line."""
    lines = [
        f"{'Checked' if report.check else 'Migrated'} {_store_label(source_name, source)} to "
        f"{_store_label(dest_name, dest)}" + (" (check mode: nothing written)" if report.check else "")
    ]
    lines.append("")
    lines.extend(_table(report.stores) if report.stores else ["no stores to migrate"])
    for host, entries in report.discovered.items():
        lines.append(f"discovered on {host}: {', '.join(entries) or 'no stores'}")
    if report.diff:
        lines += ["", "changes:"] + [_diff_line(d) for d in report.diff]
    if report.warnings:
        lines += ["", "warnings:"] + [f"  {w}" for w in report.warnings]
    if report.failures:
        lines += ["", "failures:"] + [f"  {_failure_line(f)}" for f in report.failures]
    if report.verified is not None:
        lines.append("")
        if report.verified:
            lines.append("verified: the destination holds what the source holds")
        else:
            lines += ["verification found differences:"] + [f"  {_failure_line(m)}" for m in report.mismatches]
    lines.append("")
    if report.failed:
        lines.append(_failed_line(report))
    lines.append(_changed_line(report))
    return "\n".join(lines) + "\n"


def _store_label(name: str, definition: dict[str, Any]) -> str:
    kind = definition.get("type", "?")
    if kind == "sql" and definition.get("driver"):
        kind = f"sql, {definition['driver']}"
    return f"{name!r} ({kind})"


def _table(results: Sequence[StoreResult]) -> list[str]:
    rows = [[r.host, r.store, r.type, *_counts(r, "users"), *_counts(r, "items")] for r in results]
    totals = [sum(getattr(r, f"{side}_{c}") for r in results) for side in ("users", "items") for c in _COUNTS]
    rows.append(["total", "", "", *map(str, totals)])
    header = ["host", "store", "type", *_COUNTS, *_COUNTS]
    widths = [max(len(row[i]) for row in [*rows, header]) for i in range(len(header))]
    users_at = sum(widths[:3]) + 3 * 2
    group = " " * users_at + "users".ljust(sum(widths[3:7]) + 3 * 2) + "  " + "items"
    out = [group.rstrip(), _row(header, widths)]
    out += [_row(row, widths) for row in rows]
    return out


def _counts(result: StoreResult, side: str) -> list[str]:
    if side == "items" and result.type != "archive":
        return ["-"] * len(_COUNTS)
    return [str(getattr(result, f"{side}_{c}")) for c in _COUNTS]


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    text = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return "  ".join(text).rstrip()


def _who(host: str, store: str, user: Optional[str], scope: str) -> str:
    if user is not None:
        return f"host {host}, store {store}, user {user}"
    if scope == "store":
        return f"host {host}, store {store} (the whole store)"
    return f"host {host}, store {store}, host-level data"


def _failure_line(failure: Failure) -> str:
    return f"{_who(failure.host, failure.store, failure.user, failure.scope)}: {failure.reason}"


def _diff_line(change: dict[str, Any]) -> str:
    who = _who(change["host"], change["store"], change.get("user"), "host")
    if change.get("type") == "archive":
        return f"  {change['action']} {who}: {change['items_added']} items added, {change['items_replaced']} replaced"
    before = "" if change.get("before") is None else f"\n      before: {_compact(change['before'])}"
    return f"  {change['action']} {who}{before}\n      after:  {_compact(change.get('after'))}"


def _compact(value: Any, limit: int = 400) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failed_line(report: Report) -> str:
    where: dict[str, int] = {}
    for failure in report.failures:
        key = f"{failure.host}/{failure.store}"
        where[key] = where.get(key, 0) + 1
    parts = [f"{n} in {key}" for key, n in where.items()]
    if report.verified is False:
        parts.append(f"{len(report.mismatches)} differences found by --verify")
    text = f"FAILED: {', '.join(parts)}"
    if report.stopped:
        text += " (stopped at the first failure; --keep-going goes on)"
    return text


def _changed_line(report: Report) -> str:
    """``changed: 34 created and 2 updated entries in 10 stores; 60 archive items written``."""
    t = report.totals()
    if not report.changed or not (t["users_created"] or t["users_updated"]):
        return "nothing would change" if report.check else "nothing changed"
    counts = [f"{n} {verb}" for n, verb in ((t["users_created"], "created"), (t["users_updated"], "updated")) if n]
    stores = sum(1 for r in report.stores if r.changed)
    what = f"{' and '.join(counts)} entries in {stores} store{'' if stores == 1 else 's'}"
    items = t["items_created"] + t["items_updated"]
    if items:
        what += f"; {items} archive items {'to write' if report.check else 'written'}"
    return f"would change: {what}" if report.check else f"changed: {what}"
