from __future__ import annotations

import pytest

from pyverity.daemon.lifecycle import Cause, Observation, on_observe, on_write
from pyverity.daemon.protection import Declared
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity
from pyverity.protect import parse_protection
from pyverity.store.statedb import FileRecord, State

DESC = Descriptor.for_tree(TreeParams(), 100, bytes(32))


def _declared(desc: Descriptor | None) -> Declared:
    raw = None if desc is None else desc.to_bytes()
    prot = parse_protection(raw, None, 100)
    return Declared(prot.fingerprint, raw is not None, prot if raw else None)


VALUES = _declared(DESC)
NONE = _declared(None)
SNAP = FileIdentity((1, 2, 100, 5))


def _obs(values: Declared = VALUES, snap: FileIdentity = SNAP) -> Observation:
    return Observation("/r/f", snap, values)


def _rec(state: State, snap: FileIdentity = SNAP) -> FileRecord:
    return FileRecord("/r/f", state, *snap, attr_fp=VALUES.fingerprint, id=1)


def test_new_attribute_makes_pending_and_builds() -> None:
    d = on_observe(None, _obs(), Cause.ATTR)
    assert d is not None
    assert d.build
    assert d.record is not None
    assert d.record.state is State.PENDING
    assert d.record.digest == f"sha256:{DESC.digest().hex()}"


def test_malformed_attribute_is_invalid_with_reason() -> None:
    obs = Observation("/r/f", SNAP, Declared(b"x" * 32, True, None, "unknown type"))
    d = on_observe(None, obs, Cause.ATTR)
    assert d is not None
    assert d.record is not None
    assert not d.build
    assert d.record.state is State.INVALID
    assert d.record.error == "unknown type"


def test_classic_value_has_no_tree() -> None:
    prot = parse_protection(None, b"\x04\x04" + bytes(32), 100)
    obs = Observation("/r/f", SNAP, Declared(prot.fingerprint, True, prot))
    d = on_observe(None, obs, Cause.SCAN)
    assert d is not None
    assert d.record is not None
    assert d.record.state is State.CLASSIC
    assert not d.build


@pytest.mark.parametrize("state", [State.BUILDING, State.READY, State.MISMATCH])
def test_write_makes_stale_and_cancels(state: State) -> None:
    d = on_write(_rec(state), (1, 2, 101, 6))
    assert d is not None
    assert d.cancel
    assert not d.build
    assert d.record is not None
    assert d.record.state is State.STALE
    assert d.record.size == 101


@pytest.mark.parametrize("state", [State.STALE, State.INVALID, State.CLASSIC])
def test_write_changes_nothing_else(state: State) -> None:
    assert on_write(_rec(state), (1, 2, 101, 6)) is None


def test_write_before_the_build_starts_keeps_pending() -> None:
    """tar --xattrs writes the attribute first, then the data: the build hashes the data."""
    d = on_write(_rec(State.PENDING), (1, 2, 101, 6))
    assert d is not None
    assert d.record is not None
    assert d.record.state is State.PENDING
    assert d.record.size == 101
    assert not d.cancel
    assert on_write(_rec(State.PENDING), SNAP) is None
    d = on_observe(_rec(State.PENDING), _obs(snap=(1, 2, 100, 8)), Cause.SCAN)
    assert d is not None
    assert d.build
    assert d.record is not None
    assert d.record.state is State.PENDING


def test_chmod_or_touch_is_not_a_content_change() -> None:
    d = on_observe(_rec(State.READY), _obs(snap=(1, 2, 100, 99)), Cause.ATTR)
    assert d is not None
    assert d.record is not None
    assert not d.build
    assert not d.cancel
    assert d.record.state is State.READY
    assert d.record.mtime_ns == 99


def test_same_value_does_not_leave_stale() -> None:
    assert on_observe(_rec(State.STALE), _obs(), Cause.ATTR) is None
    d = on_observe(_rec(State.STALE), _obs(snap=(1, 2, 100, 7)), Cause.ATTR)
    assert d is not None
    assert d.record is not None
    assert d.record.state is State.STALE


def test_changed_value_or_rebuild_leaves_stale() -> None:
    other = _declared(Descriptor.for_tree(TreeParams(), 100, b"\1" * 32))
    d = on_observe(_rec(State.STALE), _obs(other), Cause.ATTR)
    assert d is not None
    assert d.build
    assert d.record is not None
    assert d.record.state is State.PENDING
    d = on_observe(_rec(State.STALE), _obs(), Cause.REBUILD)
    assert d is not None
    assert d.build


def test_write_while_down_is_stale_at_startup_not_rebuilt() -> None:
    for state in (State.READY, State.BUILDING, State.MISMATCH):
        d = on_observe(_rec(state), _obs(snap=(1, 2, 100, 8)), Cause.SCAN)
        assert d is not None
        assert d.record is not None
        assert d.record.state is State.STALE
        assert not d.build


def test_interrupted_build_is_resumed_at_startup() -> None:
    d = on_observe(_rec(State.BUILDING), _obs(), Cause.SCAN)
    assert d is not None
    assert d.build
    assert not d.cancel
    assert d.record is not None
    assert d.record.state is State.PENDING
    assert on_observe(_rec(State.READY), _obs(), Cause.SCAN) is None


def test_attributes_removed_deletes_row() -> None:
    d = on_observe(_rec(State.READY), _obs(NONE), Cause.ATTR)
    assert d is not None
    assert d.record is None
    assert d.cancel
    assert on_observe(None, _obs(NONE), Cause.ATTR) is None


@pytest.mark.parametrize(
    ("state", "after", "recheck"),
    [(State.READY, State.PENDING, True), (State.MISMATCH, State.PENDING, False)],
)
def test_ctime_only_change_at_a_scan_rehashes(state: State, after: State, recheck: bool) -> None:
    rec = _rec(state).evolve(ctime_ns=10)
    d = on_observe(rec, Observation("/r/f", SNAP, VALUES, 11), Cause.SCAN)
    assert d is not None
    assert d.build
    assert d.cancel
    assert d.record is not None
    assert (d.record.state, d.record.recheck, d.record.ctime_ns) == (after, recheck, 11)


@pytest.mark.parametrize("cause", [Cause.ATTR, Cause.APPEARED])
def test_ctime_change_explained_by_an_event_is_only_recorded(cause: Cause) -> None:
    rec = _rec(State.READY).evolve(ctime_ns=10)
    d = on_observe(rec, Observation("/r/f", SNAP, VALUES, 11), cause)
    assert d is not None
    assert not d.build
    assert d.record is not None
    assert (d.record.state, d.record.ctime_ns) == (State.READY, 11)


def test_unknown_ctime_is_adopted_and_stale_stays_stale() -> None:
    migrated = _rec(State.READY)  # ctime 0: a schema-1 row
    d = on_observe(migrated, Observation("/r/f", SNAP, VALUES, 11), Cause.SCAN)
    assert d is not None
    assert not d.build
    assert d.record is not None
    assert d.record.ctime_ns == 11
    stale = _rec(State.STALE).evolve(ctime_ns=10)
    d = on_observe(stale, Observation("/r/f", SNAP, VALUES, 11), Cause.SCAN)
    assert d is not None
    assert d.record is not None
    assert d.record.state is State.STALE
    assert not d.build


def test_invalid_is_judged_again_when_the_content_changes() -> None:
    """tar --xattrs sets the descriptor on an empty file and writes the data after: INVALID
    (data_size is not the size) must not outlive the write that makes the sizes agree."""
    empty = FileIdentity((1, 2, 0, 4))
    invalid = _rec(State.INVALID, empty).evolve(error="descriptor data_size 100 is not 0")
    d = on_observe(invalid, _obs(), Cause.SCAN)
    assert d is not None
    assert d.record is not None
    assert d.record.state is State.PENDING
    assert d.build
    assert on_observe(_rec(State.INVALID), _obs(), Cause.SCAN) is None  # nothing changed
