"""Window numbers never repeat for a device, whatever happens between two runs."""

from __future__ import annotations

from pathlib import Path

from agent.window_sequence import WindowSequence


def test_numbers_grow_across_restarts_and_a_crash_only_leaves_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "window_seq"
    first = WindowSequence(path, block=10)
    a = [first.next() for _ in range(3)]
    # The process dies here (no goodbye): the rest of its block is never used.
    second = WindowSequence(path, block=10)
    b = [second.next() for _ in range(12)]  # crosses into a second block
    third = WindowSequence(path, block=10)
    c = [third.next() for _ in range(2)]
    seen = a + b + c
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert a == [1, 2, 3] and b[0] == 11 and c[0] > b[-1]


def test_the_floor_is_on_disk_before_a_number_of_its_block_is_used(tmp_path: Path) -> None:
    path = tmp_path / "window_seq"
    seq = WindowSequence(path, block=5)
    n = seq.next()
    assert int(path.read_text()) > n
    for _ in range(4):
        seq.next()
    assert int(path.read_text()) == 6  # the block 1..5 used up, no new one yet
    assert seq.next() == 6 and int(path.read_text()) == 11


def test_a_file_that_is_not_a_number_never_leads_to_reuse(tmp_path: Path) -> None:
    path = tmp_path / "window_seq"
    seq = WindowSequence(path)
    used = [seq.next() for _ in range(3)]
    path.write_text("garbage")
    assert WindowSequence(path).next() > max(used)


def test_a_new_sequence_can_start_past_an_older_one(tmp_path: Path) -> None:
    old = WindowSequence(tmp_path / "window_seq", block=10)
    used = [old.next() for _ in range(3)]
    later = WindowSequence(tmp_path / "window_seq", block=10)
    drift = WindowSequence(tmp_path / "drift_seq", block=10, start=later.reserved_floor)
    assert drift.next() > max(used)
    # Once it exists, its own file decides.
    again = WindowSequence(tmp_path / "drift_seq", block=10, start=1)
    assert again.next() > max(used)
