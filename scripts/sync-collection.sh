#!/usr/bin/env bash
# ansible-test must run from inside an ansible_collections/<ns>/<name> directory that is not a
# symlink, so tests run on a copy of the checkout kept in sync here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Outside the checkout: inside it, git would report the copy as ignored and ansible-test would see no files.
dest="${XMPP_PROSODY_BUILD:-${TMPDIR:-/tmp}/xmpp.prosody-build}/ansible_collections/xmpp/prosody"
mkdir -p "$dest"
rsync -a --delete \
  --exclude /.venv --exclude /.build --exclude /.git --exclude __pycache__ \
  --exclude /tests/output --exclude .pytest_cache --exclude .ruff_cache --exclude .hypothesis --exclude /bench/results \
  "$root"/ "$dest"/ >&2
echo "$dest"
