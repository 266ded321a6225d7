#!/usr/bin/env bash
# Run the collection's integration targets (default: prosody_migrate) with ansible-test, on a copy
# of the checkout (see sync-collection.sh), against this machine's PostgreSQL and MariaDB.
# --local with the project's venv: the module needs lupa, psycopg and PyMySQL, which that venv has
# (an ansible-test --venv would not).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.venv/bin"
mkdir -p "$HOME/.ansible/test/cache"
cp "$root/scripts/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_24_2.py"
"$root/scripts/start-services.sh"
dest=$("$root/scripts/sync-collection.sh")
cd "$dest"
PATH="$bin:$PATH" exec "$bin/ansible-test" integration --local --python-interpreter "$bin/python" "${@:-prosody_migrate}"
