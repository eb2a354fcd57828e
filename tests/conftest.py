"""Shared test helpers. Tests run on CPU with tiny models; the scripts live at the repo root."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# Real public data beside the project on developer and CI machines, but not on a user's machine:
# tests that read it skip when it is absent.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is not available (only developer and CI machines have ../shared)")
    return path
