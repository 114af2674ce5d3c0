from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Daemon


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Create daemons over ``tmp_path``; all are stopped (and their workers gone) at the end."""
    made: list[Daemon] = []

    def make(*args: str, ns: str = "user", base: Path | None = None) -> Daemon:
        d = Daemon(base or tmp_path, *args, ns=ns)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
