"""The run journal: torn lines repaired, one writer at a time, storage failures reported clearly
and never leaving a broken journal behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fakes import tmpfs

from guard.journal import CASE_FINISHED, Journal, read_events, repair
from guard.runs import is_being_written
from rag.errors import StorageError

RUN = "20260101-000000-abcdef"


def write_events(path: Path, count: int, size: int = 40) -> list[int]:
    journal = Journal.open(path, RUN)
    try:
        ids = [journal.append("progress", {"n": i, "pad": "x" * size}).id for i in range(count)]
        journal.append(CASE_FINISHED, {"case_id": "c1"}, durable=True)
    finally:
        journal.close()
    return [*ids, ids[-1] + 1 if ids else 1]


def test_events_get_ids_from_one_and_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    ids = write_events(path, 5)

    assert ids == [1, 2, 3, 4, 5, 6]
    assert [e.id for e in read_events(path)] == ids
    assert [e.id for e in read_events(path, after_id=4)] == [5, 6]
    assert all(e.run_id == RUN for e in read_events(path))


@pytest.mark.parametrize("keep", [1, 7, 0.5, -2])
def test_a_torn_last_line_is_cut_on_open_and_every_complete_event_survives(
    tmp_path: Path, keep: float
) -> None:
    path = tmp_path / "journal.jsonl"
    write_events(path, 3)
    whole = path.read_bytes()
    line = b'{"id":5,"run_id":"' + RUN.encode() + b'","type":"progress","data":{"n":4}}\n'
    cut = int(len(line) * keep) if isinstance(keep, float) else keep % len(line)
    path.write_bytes(whole + line[:cut])  # a kill in the middle of a write

    assert [e.id for e in read_events(path)] == [1, 2, 3, 4]  # readers skip it meanwhile
    journal = Journal.open(path, RUN)
    try:
        assert journal.last_id == 4
        assert path.read_bytes() == whole
        assert journal.append("progress", {"n": 5}).id == 5
    finally:
        journal.close()
    assert [e.id for e in read_events(path)] == [1, 2, 3, 4, 5]


def test_a_journal_holding_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"id":1,"run_id":"x","ty')

    assert repair(path) == 24
    assert path.read_bytes() == b""
    assert repair(path) == 0


def test_repair_leaves_a_complete_journal_alone(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    write_events(path, 2)
    before = path.read_bytes()

    assert repair(path) == 0
    assert path.read_bytes() == before


def test_a_second_writer_in_the_same_process_gets_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    first = Journal.open(path, RUN)
    try:
        with pytest.raises(StorageError, match="being written by another process"):
            Journal.open(path, RUN)
        first.append("progress", {})
    finally:
        first.close()
    Journal.open(path, RUN).close()  # free again once the first writer closed


def test_readers_probing_the_writer_lock_never_keep_a_writer_out(tmp_path: Path) -> None:
    """A dashboard asks `is_being_written` all the time; a run starting meanwhile must get the
    journal (the probe's shared lock lasts microseconds)."""
    path = tmp_path / "journal.jsonl"
    path.touch()
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            is_being_written(path)

    probes = [threading.Thread(target=probe) for _ in range(2)]
    for thread in probes:
        thread.start()
    try:
        for _ in range(200):
            Journal.open(path, RUN).close()
    finally:
        stop.set()
        for thread in probes:
            thread.join()


@pytest.mark.integration
def test_a_second_writer_in_another_process_gets_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    holder = textwrap.dedent(f"""
        import sys
        from guard.journal import Journal
        journal = Journal.open(__import__("pathlib").Path({str(path)!r}), "{RUN}")
        print("locked", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(StorageError, match=str(path)):
            Journal.open(path, RUN)
    finally:
        child.communicate("", timeout=10)
    Journal.open(path, RUN).close()  # the lock died with its process


def test_a_journal_under_a_regular_file_gives_a_clear_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")

    with pytest.raises(StorageError, match=r"cannot open journal .*data/runs") as caught:
        Journal.open(blocker / "runs" / RUN / "journal.jsonl", RUN)
    assert "Not a directory" in str(caught.value)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`mount_tmpfs("size=64k")` mounts a fresh tmpfs for this test and returns its folder."""
    with ExitStack() as stack:
        yield lambda options: stack.enter_context(
            tmpfs(tmp_path / f"mnt-{len(stack._exit_callbacks)}", options))


@pytest.mark.integration
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux only")
def test_a_read_only_folder_gives_a_clear_storage_error(
    mount_tmpfs: Callable[[str], Path]
) -> None:
    folder = mount_tmpfs("ro,size=64k")

    with pytest.raises(StorageError, match="cannot open journal") as caught:
        Journal.open(folder / "journal.jsonl", RUN)
    assert "Read-only file system" in str(caught.value)


@pytest.mark.integration
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux only")
def test_a_full_disk_fails_the_append_and_keeps_every_event_before_it(
    mount_tmpfs: Callable[[str], Path]
) -> None:
    path = mount_tmpfs("size=64k") / "journal.jsonl"
    journal = Journal.open(path, RUN)
    written: list[int] = []
    try:
        with pytest.raises(StorageError, match="the disk is full") as caught:
            for i in range(1000):
                written.append(journal.append("progress", {"n": i, "pad": "y" * 1500},
                                              durable=i % 2 == 0).id)
        assert "every event written before is intact" in str(caught.value)
        assert [e.id for e in read_events(path)] == written
        assert path.read_bytes().endswith(b"\n")
    finally:
        journal.close()
    assert path.read_bytes().endswith(b"\n")
    assert [e.id for e in read_events(path)] == written
    os.truncate(path, 0)  # space again: the journal opens and appends from a clean state
    reopened = Journal.open(path, RUN)
    try:
        assert reopened.append("progress", {}).id == 1
    finally:
        reopened.close()
