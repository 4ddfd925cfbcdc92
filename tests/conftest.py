"""Shared test set-up: hypothesis profiles, the long profile's switch, and the path to the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# `ci` keeps the suite fast on a 2-core machine; `dev` is the default locally;
# `long` is for `make test-long`. Choose with HYPOTHESIS_PROFILE.
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# `make test-long` sets LOTTERY_TEST_PROFILE=long: more kills, more bets, more random sequences.
LONG = os.environ.get("LOTTERY_TEST_PROFILE") == "long"

SHARED_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "dataset.zip"


@pytest.fixture
def chromium(tmp_path_factory):
    """Headless Chromium (tests/browser.py), or a skip saying how to get one."""
    from tests.browser import Chromium, find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found: install Debian's `chromium` package (.ci/run does) or set LOTTERY_CHROMIUM")
    return Chromium(path, tmp_path_factory.mktemp("chromium-profile"))
