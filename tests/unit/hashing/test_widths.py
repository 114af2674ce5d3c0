"""The accelerator's width: chosen by measurement, cached per machine, overridden by the
environment; a bad cache file is ignored, never trusted."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from pyverity.errors import UsageError
from pyverity.format.hashalg import SHA256, SHA512
from pyverity.format.params import TreeParams
from pyverity.hashing import runhash, widths
from pyverity.hashing.blockhash import block_hasher

ALLOWED = {"sha256": [1, 2, 3, 4, 16], "sha512": [0, 8]}
KEY = widths.cache_key("GenuineTest|CPU|00000000", "build-1")


def candidates(calls: list[tuple[str, int]] | None = None) -> dict[str, dict[int, widths.Runner]]:
    def runner(alg: str, w: int) -> widths.Runner:
        return lambda: calls.append((alg, w)) if calls is not None else None

    return {alg: {w: runner(alg, w) for w in ws} for alg, ws in ALLOWED.items()}


def fake_measure(seconds: Mapping[str, Mapping[int, float]], log: list[int]) -> object:
    def measure(cands: Mapping[str, Mapping[int, widths.Runner]], **_: object) -> object:
        log.append(1)
        return {alg: dict(seconds[alg]) for alg in cands}

    return measure


SECONDS = {"sha256": {1: 5.0, 2: 2.0, 3: 3.0, 4: 2.5, 16: 2.2}, "sha512": {0: 4.0, 8: 1.0}}


def test_measure_interleaves_every_candidate_and_keeps_a_best_time() -> None:
    calls: list[tuple[str, int]] = []
    got = widths.measure(candidates(calls), rounds=5)
    assert {alg: sorted(t) for alg, t in got.items()} == ALLOWED
    assert all(t >= 0 for ts in got.values() for t in ts.values())
    # One warm-up round, then five; in each round every candidate runs once, in turn.
    per_round = sum(len(ws) for ws in ALLOWED.values())
    assert len(calls) == 6 * per_round
    assert calls[:per_round] == calls[per_round : 2 * per_round]


def test_the_fastest_width_is_chosen_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[int] = []
    monkeypatch.setattr(widths, "measure", fake_measure(SECONDS, log))
    first = widths.choose(candidates(), key=KEY, env=None, directory=str(tmp_path))
    assert first.widths == {"sha256": 2, "sha512": 8}
    assert first.source == "measured"
    assert first.seconds["sha256"][2] == 2.0
    (cache,) = tmp_path.iterdir()
    assert cache.name.startswith("hash-widths-")
    assert cache.stat().st_mode & 0o777 == 0o600
    again = widths.choose(candidates(), key=KEY, env=None, directory=str(tmp_path))
    assert again.widths == first.widths
    assert again.source == "cache"
    assert log == [1]  # measured once
    # Another CPU or build is another key: measured again, in its own file.
    other = widths.choose(candidates(), key=KEY[::-1], env=None, directory=str(tmp_path))
    assert other.source == "measured"
    assert log == [1, 1]
    assert len(list(tmp_path.iterdir())) == 2


def test_the_environment_overrides_the_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[int] = []
    monkeypatch.setattr(widths, "measure", fake_measure(SECONDS, log))
    both = widths.choose(candidates(), key=KEY, env="sha256=4,sha512=0", directory=str(tmp_path))
    assert both.widths == {"sha256": 4, "sha512": 0}
    assert both.source == "environment"
    assert log == []
    assert not list(tmp_path.iterdir())
    one = widths.choose(candidates(), key=KEY, env="16", directory=str(tmp_path))
    assert one.widths == {"sha256": 16, "sha512": 8}  # SHA-512 still measured
    assert log == [1]


@pytest.mark.parametrize(
    "value", ["", "x", "5", "sha256=5", "sha512=4", "md5=1", "sha256=1,sha256=2", "-1", "1.5", "٣"]
)
def test_a_bad_environment_width_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError, match=widths.WIDTH_ENV):
        widths.parse_env(value, ALLOWED)


def test_environment_forms() -> None:
    assert widths.parse_env("3", ALLOWED) == {"sha256": 3}
    assert widths.parse_env(" sha512=8 , sha256=1", ALLOWED) == {"sha512": 8, "sha256": 1}


GOOD = f"pyverity-hash-widths 1\nkey {KEY}\nsha256 16\nsha512 8\n".encode()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        GOOD.replace(b"sha256 16", b"sha256 5"),  # a width this accelerator does not take
        GOOD.replace(b"sha256 16", b"sha256 016"),
        GOOD.replace(b"sha256 16", b"sha256 -1"),
        GOOD.replace(b"sha256 16", b"sha256 1e9"),
        GOOD.replace(b"sha512 8", b"sha256 8"),  # an algorithm twice, one missing
        GOOD.replace(b"sha512 8\n", b""),
        GOOD.replace(KEY.encode(), KEY[::-1].encode()),  # another machine's key
        GOOD.replace(b"widths 1", b"widths 2"),
        GOOD.rstrip(b"\n"),
        GOOD + b"extra\n",
        GOOD.replace(b"16", "１６".encode()),  # non-ASCII digits
        b"\xff" * 10,
        GOOD + b"\n" * widths.MAX_CACHE_BYTES,  # too long: never read whole
    ],
)
def test_a_bad_cache_file_is_ignored_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    path = Path(widths.cache_path(tmp_path, KEY))
    path.write_bytes(content)
    assert widths.read_cache(str(path), KEY, ALLOWED) is None
    log: list[int] = []
    monkeypatch.setattr(widths, "measure", fake_measure(SECONDS, log))
    got = widths.choose(candidates(), key=KEY, env=None, directory=str(tmp_path))
    assert got.source == "measured"
    assert got.widths == {"sha256": 2, "sha512": 8}
    assert log == [1]
    assert widths.read_cache(str(path), KEY, ALLOWED) == {"sha256": 2, "sha512": 8}


def test_a_good_cache_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_bytes(GOOD)
    assert widths.read_cache(str(path), KEY, ALLOWED) == {"sha256": 16, "sha512": 8}
    assert widths.read_cache(str(tmp_path / "missing"), KEY, ALLOWED) is None


def test_cache_symlinks_fifos_and_foreign_files_are_not_read(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(GOOD)
    link = tmp_path / "link"
    link.symlink_to(good)
    assert widths.read_cache(str(link), KEY, ALLOWED) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert widths.read_cache(str(fifo), KEY, ALLOWED) is None  # and does not block
    assert widths.read_cache(str(tmp_path), KEY, ALLOWED) is None  # a directory
    if os.geteuid() == 0:
        os.chown(good, 65534, 65534)
        assert widths.read_cache(str(good), KEY, ALLOWED) is None


def test_an_unwritable_cache_directory_still_gives_a_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    log: list[int] = []
    monkeypatch.setattr(widths, "measure", fake_measure(SECONDS, log))
    got = widths.choose(candidates(), key=KEY, env=None, directory=str(blocker / "sub"))
    assert got.widths == {"sha256": 2, "sha512": 8}
    assert got.source == "measured, not cached"


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert widths.cache_dir() == str(tmp_path / "pyverity")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # not absolute: ignored (XDG spec)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert widths.cache_dir() == str(tmp_path / "home" / ".cache" / "pyverity")


@pytest.fixture
def fresh_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A process that has not chosen yet, with its cache under tmp_path."""
    monkeypatch.delenv(runhash.NO_ACCEL_ENV, raising=False)
    monkeypatch.delenv(widths.WIDTH_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(runhash, "_CHOICE", {})
    module = runhash.accelerator()
    if module is None or not module.available():
        pytest.skip("the compiled accelerator's SHA-256 path is not usable here")
    return tmp_path


def test_the_accelerator_measures_once_then_reads_its_cache(
    fresh_choice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = runhash.accelerator()
    assert module is not None
    choice = runhash.accel_choice()
    assert choice is not None
    assert choice.source == "measured"
    assert choice.widths["sha256"] in module.widths()
    assert set(choice.seconds["sha256"]) == set(module.widths())
    assert runhash.accel_choice() is choice  # memoised
    (cache,) = (fresh_choice / "pyverity").iterdir()
    monkeypatch.setattr(runhash, "_CHOICE", {})
    again = runhash.accel_choice()
    assert again is not None
    assert again.source == "cache"
    assert again.widths == choice.widths
    key = cache.read_text().split("\n")[1].removeprefix("key ")
    assert cache.name == f"hash-widths-{key[:16]}"
    build = Path(str(module.__file__)).stat()
    assert key == widths.cache_key(module.cpu_signature(), f"{build.st_size}:{build.st_mtime_ns}")


@pytest.mark.parametrize("width", [1, 3])
def test_the_environment_width_is_the_one_hashing(
    fresh_choice: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    monkeypatch.setenv(widths.WIDTH_ENV, str(width))
    used: list[int] = []
    module = runhash.accelerator()
    assert module is not None
    real = module.sha256_blocks

    def spy(data: object, bs: int, salt: bytes, w: int = 0) -> bytes:
        used.append(w)
        return real(data, bs, salt, w)

    choice = runhash.accel_choice()  # measures what the environment leaves open
    assert choice is not None
    assert choice.widths["sha256"] == width
    monkeypatch.setattr(module, "sha256_blocks", spy)
    params = TreeParams(SHA256, 4096, b"salt")
    data = os.urandom(9 * 4096)
    one = block_hasher(params)
    assert runhash.run_hasher(params)(data) == b"".join(
        one(data[o : o + 4096]) for o in range(0, len(data), 4096)
    )
    assert used == [width]


def test_sha512_uses_hashlib_when_it_is_chosen(
    fresh_choice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(widths.WIDTH_ENV, "sha512=0")
    params = TreeParams(SHA512, 4096)
    assert not runhash.uses_accelerator(params)
    data = os.urandom(2 * 4096)
    assert runhash.run_hasher(params)(data) == runhash.pure_run_hasher(params)(data)


def test_a_bad_environment_width_fails_loudly(
    fresh_choice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(widths.WIDTH_ENV, "7")
    with pytest.raises(UsageError, match="7"):
        runhash.run_hasher(TreeParams())
