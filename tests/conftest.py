"""Tests marked ``slow`` run only when a ``-m`` expression names them (``pytest -m slow``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if "slow" in config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)
