"""IMA appraisal of v3 (fs-verity) signatures by the real kernel: what opens, what is refused."""

from __future__ import annotations

import re

import pytest

from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel


def test_key_and_policy_loaded(kernel_run: KernelRun) -> None:
    assert kernel_run.lines[("policy", "0")] == ""  # the write was accepted
    # The certificate went into a `_ima` keyring: "<keyring serial> <key serial>".
    assert re.fullmatch(r"\d+ \d+", kernel_run.lines[("addkey", "_ima")])
