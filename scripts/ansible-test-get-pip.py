"""Stand-in for the pip bootstrap script ansible-test downloads from ansible's CI file server.

That server is out of reach on our machines (only package registries are), and ansible-test
reads the script from its cache when present. This does the same job with the interpreter's
bundled ensurepip followed by a normal pip install of the pinned versions ansible-test asks for.
"""

import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
# get-pip.py's own switches, which pip install does not know.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
