#!/usr/bin/env bash
# The target runs as a playbook, not as a role: inside the collection, the role name
# "prosody_migrate" resolves to the collection's own role (roles/prosody_migrate), not to this target.
set -eux
ansible-playbook -i ../../inventory playbook.yml "$@"
