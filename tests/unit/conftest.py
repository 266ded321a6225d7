"""Shared test setup: make prosody_oracle importable and set Hypothesis's profiles."""

import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# `make test` must be reproducible (ansible-test passes no environment through to choose by),
# so the default profile runs a fixed set of examples; `make explore` draws new ones with
# `pytest --hypothesis-profile=explore`.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=300, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=2000, **_COMMON)
settings.load_profile("ci")
