# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the end-to-end test's fixtures and tests share: the corpus's names, the role's runs and the server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, NamedTuple

HOST = "example.org"
MUC = "conference.example.org"
# make_corpus.lua DIR 5 20 1: five users, 20 messages each, seed 1 (room1 gets 20 messages).
CORPUS_ARGS = ("5", "20", "1")
USERS = ("café", "first.last", "o'brien", "user00004", "user00005")
# Every store make_corpus.lua writes, in migrator.cfg.lua's notation.
STORES = {
    HOST: [
        "accounts",
        "account_details",
        "roster",
        "vcard",
        "private",
        "blocklist",
        "archive-archive",
        "offline-archive",
    ],
    MUC: ["config", "persistent", "muc_log-archive"],
}


def password(user: str) -> str:
    """The corpus gives every user the password ``pw-<username>``."""
    return f"pw-{user}"


class Server:
    """A running Prosody: its c2s port and log file."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def log_text(self, start: int = 0) -> str:
        try:
            with self.log.open("rb") as handle:
                handle.seek(start)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no log written)"

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0


class ServerConfig(NamedTuple):
    """The test server's directory, port and prosody.cfg.lua (its path, and its text before the role ran)."""

    directory: Path
    port: int
    path: Path
    original: str


class PlaybookRun(NamedTuple):
    """One ansible-playbook run: exit code, localhost's recap counts (ok, changed, failed, ...), output, seconds."""

    returncode: int
    recap: dict[str, int]
    output: str
    seconds: float


class Migration(NamedTuple):
    """The role's two runs, the module's result of the first (which moved the data), the service calls made,
    and the destination store the role was given."""

    first: PlaybookRun
    second: PlaybookRun
    result: dict[str, Any]
    service_calls: list[str]
    destination: dict[str, Any]
