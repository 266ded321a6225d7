"""Shared test setup: make prosody_oracle importable, set Hypothesis's profiles, keep state files out of $HOME."""

import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# `make test` must be reproducible (ansible-test passes no environment through to choose by),
# so the default profile runs a fixed set of examples; `make explore` draws new ones with
# `pytest --hypothesis-profile=explore`.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=300, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=2000, **_COMMON)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """prosody-migrator's default state files go to a temporary directory, never the user's home.
    Session-scoped (set in os.environ, not with monkeypatch): Hypothesis refuses function-scoped
    fixtures around its tests."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved
