"""keylime 7.14.3 imported for the tests: what it imports but the tests do not use is stubbed.

``keylime.signing`` imports ``gpg`` (DSSE/GPG-signed policies, unused here): a stub module.
keylime's config files are absent; ``config.getboolean(..., fallback=...)`` then answers the
fallback, which is what the verifier does by default.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest


def keylime_ima() -> Any:
    """``keylime.ima.ima``, or a test failure saying how to install it."""
    sys.modules.setdefault("gpg", types.ModuleType("gpg"))
    try:
        from keylime.ima import ima
    except ImportError as e:  # pragma: no cover - the test extra installs it
        pytest.fail(f"keylime is not installed (pip install -e '.[keylime-test]'): {e}")
    logging.getLogger("keylime").setLevel(logging.CRITICAL)
    return ima
