from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.daemon.config import (
    DaemonConfig,
    check_private_dir,
    ima_policy_warning,
    load_config,
)
from pyverity.errors import ConfigurationError


def test_toml_has_the_command_line_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(
        'roots = ["/a", "/b"]\nstate_dir = "/s"\ncache_dir = "/c"\nbackend = "none"\n'
        'keyring = "/k"\nxattr_ns = "user"\nworkers = 3\ncrash_policy = "restart"\n'
        "checkpoint_interval = 2\n"
    )
    c = load_config(cfg)
    assert c.roots == (Path("/a"), Path("/b"))
    assert c.backend == "none"
    assert c.workers == 3
    assert c.crash_policy == "restart"
    assert c.xattr_ns == "user"
    assert c.checkpoint_interval == 2.0
    assert c.with_options(workers=1, backend=None).workers == 1
    assert c.socket == Path("/s/control.sock")


@pytest.mark.parametrize(
    "text",
    ['backend = "s3"', 'workers = "2"', "unknown = 1", 'crash_policy = "maybe"', "roots = 1", "[["],
)
def test_bad_config_is_refused(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigurationError):
        load_config(cfg)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        DaemonConfig(xattr_ns="trusted")
    with pytest.raises(ConfigurationError):
        DaemonConfig(workers=0)


def test_private_dir_checks(tmp_path: Path) -> None:
    d = tmp_path / "state"
    check_private_dir(d, "state directory")
    assert d.stat().st_mode & 0o777 == 0o700
    d.chmod(0o733)
    with pytest.raises(ConfigurationError, match="writable by others"):
        check_private_dir(d, "state directory")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(ConfigurationError, match="symlink"):
        check_private_dir(link, "state directory")
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 12345, 12345)
        with pytest.raises(ConfigurationError, match="belongs to uid 12345"):
            check_private_dir(other, "cache directory")


def test_ima_policy_warning(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.write_text(
        "dont_measure fsmagic=0x9fa0\nappraise func=BPRM_CHECK appraise_type=imasig\n"
    )
    assert "appraise" in ima_policy_warning("security", (policy,))
    assert ima_policy_warning("user", (policy,)) == ""
    policy.write_text("dont_appraise fsmagic=0x9fa0\n")
    assert ima_policy_warning("security", (policy,)) == ""
    assert ima_policy_warning("security", (tmp_path / "absent",)) == ""
