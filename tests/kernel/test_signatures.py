"""IMA appraisal of v3 (fs-verity) signatures by the real kernel: what opens, what is refused."""

from __future__ import annotations

import re

import pytest

from tests.kernel.cases import SIG_CASES, SigCase
from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel


def test_key_and_policy_loaded(kernel_run: KernelRun) -> None:
    assert kernel_run.lines[("policy", "0")] == ""  # the write was accepted
    # The certificate went into a `_ima` keyring: "<keyring serial> <key serial>".
    assert re.fullmatch(r"\d+ \d+", kernel_run.lines[("addkey", "_ima")])


@pytest.mark.parametrize("case", SIG_CASES, ids=lambda c: c.name)
def test_kernel_verdict(kernel_run: KernelRun, case: SigCase) -> None:
    verdict = kernel_run.lines[("open", case.name)]
    if case.expect_open:
        assert verdict == str(case.size)
    else:
        assert verdict == "ERR 13 Permission denied"
