"""The `fake_kube` fixture: import it into a test module to get a started FakeKube.

    from tests.kube.fixtures import fake_kube  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .server import FakeKube


@pytest.fixture
async def fake_kube(tmp_path: Path) -> AsyncIterator[FakeKube]:
    """A started fake cluster; stopped at the end with every pod process it ran."""
    async with FakeKube(tmp_path / "kube") as kube:
        yield kube
