# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the backend tests: fresh SQL databases on the real servers (see dbfixtures.py)."""

from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    mysql_params,
    pg_params,
    sql_params,
    sqlite_params,
)

__all__ = ["mysql_params", "pg_params", "sql_params", "sqlite_params"]
