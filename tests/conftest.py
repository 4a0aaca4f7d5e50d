"""Marks every test with its tier (unit, integration, e2e) from the folder it lives in."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(item.fspath).resolve().relative_to(TESTS_DIR)
        if relative.parts and relative.parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, relative.parts[0]))
