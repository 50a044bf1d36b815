"""Shared test fixtures. Root-only tests are marked `root` and skipped, with a reason, otherwise."""

from __future__ import annotations

import os
import shutil

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, cgroups, BPF); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: scripts/setup.sh installs it (scripts/apt-packages.txt)")
    return path
