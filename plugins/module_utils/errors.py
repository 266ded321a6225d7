# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's one exception hierarchy: every adapter catches ProsodyMigrateError."""

from __future__ import annotations


class ProsodyMigrateError(Exception):
    """Base of every error the engine raises on purpose."""


class DecodeError(ProsodyMigrateError):
    """Data that could not be read; ``source`` names the file, row or text it came from."""

    def __init__(self, message: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class EncodeError(ProsodyMigrateError):
    """A value that cannot be written in the requested format."""
