# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the end-to-end test's fixtures and tests share: the corpus's names and the running server."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
