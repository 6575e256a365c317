from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.errors import (
    BadShareName,
    CapacityExceeded,
    ConfigError,
    DiskFull,
    MessageTooLarge,
    NotFound,
    ShareCorrupted,
    ShareNotFound,
    StorageIOError,
    XcoreError,
)
from xcore.shard.store import (
    SLOT_SIZE,
    STATS_FILE,
    ShareFile,
    ShareStore,
    os_opener,
    share_name,
)

REPO = Path(__file__).resolve().parents[2]


def share(n: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(n)
    return hashlib.sha256(data).digest(), data


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class RecordingOpener:
    """Records every temp path opened; optionally fails writes or sync like a full disk."""

    def __init__(self, fail_after: int | None = None, fail_sync: bool = False, err: int = errno.ENOSPC):
        self.opened: list[Path] = []
        self.fail_after = fail_after
        self.fail_sync = fail_sync
        self.err = err

    def __call__(self, path: Path) -> ShareFile:
        self.opened.append(path)
        return FailingFile(os_opener(path), self)


class FailingFile:
    def __init__(self, inner: ShareFile, plan: RecordingOpener) -> None:
        self.inner = inner
        self.plan = plan
        self.written = 0

    def write(self, data: bytes, /) -> int:
        if self.plan.fail_after is not None and self.written + len(data) > self.plan.fail_after:
            room = self.plan.fail_after - self.written
            self.inner.write(data[:room])  # a partial write, as a real full disk does
            self.written += room
            raise OSError(self.plan.err, os.strerror(self.plan.err))
        self.written += len(data)
        return self.inner.write(data)

    def sync(self) -> None:
        if self.plan.fail_sync:
            raise OSError(self.plan.err, os.strerror(self.plan.err))
        self.inner.sync()

    def close(self) -> None:
        self.inner.close()


# -- names --------------------------------------------------------------------


BAD_NAMES: list[object] = [
    "../x",
    "../" + "a" * 61,
    "a" * 63,
    "a" * 65,
    "A" * 64,
    "/etc/passwd",
    "ab/" + "c" * 61,
    "a" * 64 + "\n",
    "\x00" * 64,
    "g" * 64,
    "",
    b"",
    b"\x00" * 31,
    b"\x00" * 33,
    ("a" * 64).encode(),  # hex as bytes is ambiguous: refused
    None,
    64,
]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_rejected_everywhere(tmp_path: Path, bad: object) -> None:
    store = ShareStore(tmp_path, 10_000)
    for call in (
        lambda: store.put(bad, b"x"),  # type: ignore[arg-type]
        lambda: store.get(bad),  # type: ignore[arg-type]
        lambda: store.open(bad),  # type: ignore[arg-type]
        lambda: store.has(bad),  # type: ignore[arg-type]
        lambda: store.delete(bad),  # type: ignore[arg-type]
        lambda: store.size_of(bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(BadShareName):
            call()
    assert files_under(tmp_path) == [STATS_FILE]


def test_share_name_forms() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert share_name(digest) == digest.hex() == share_name(digest.hex())


# -- basic use ----------------------------------------------------------------


def test_put_get_list_delete(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 10_000)
    h1, d1 = share(1000, 1)
    h2, d2 = share(500, 2)
    assert store.put(h1, d1) is True
    assert store.put(h2.hex(), io.BytesIO(d2), size=len(d2)) is True
    assert store.put(h1, d1) is False  # already here
    assert store.get(h1) == d1 and store.get(h2.hex()) == d2
    assert store.has(h1) and store.size_of(h2) == 500
    assert (tmp_path / h1.hex()[:2] / h1.hex()).read_bytes() == d1  # fan-out by 2 hex chars
    assert store.list() == sorted([h1, h2])
    assert store.used == 1500 and store.free == 8500
    assert store.stats() == {
        "shares": 2,
        "bytes_stored": 1500,
        "bytes_free": 8500,
        "capacity": 10_000,
        "rejected_full": 0,
        "corrupt_reads": 0,
    }
    assert store.delete(h1) is True and store.delete(h1) is False
    assert not store.has(h1)
    with pytest.raises(ShareNotFound) as info:
        store.get(h1)
    assert isinstance(info.value, NotFound)
    with pytest.raises(ShareNotFound):
        store.size_of(h1)
    assert store.stats()["shares"] == 1 and store.used == 500


def test_streaming_read_is_verified(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 1 << 20)
    h, d = share(100_000)
    store.put(h, d)
    with store.open(h) as reader:
        assert reader.size == 100_000
        assert reader.read(0) == b""  # not mistaken for the end
        parts = []
        while chunk := reader.read(7000):
            parts.append(chunk)
    assert b"".join(parts) == d


def test_empty_share(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 10)
    h = hashlib.sha256(b"").digest()
    assert store.put(h, b"")
    assert store.get(h) == b""


# -- refusing bad writes ------------------------------------------------------


def test_hash_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 1 << 20)
    h, d = share(70_000)
    with pytest.raises(ShareCorrupted):
        store.put(h, d[:-1] + b"!")
    with pytest.raises(ShareCorrupted):  # stream shorter than announced
        store.put(h, io.BytesIO(d[:1000]), size=len(d))
    assert files_under(tmp_path) == [STATS_FILE]
    assert store.stats()["shares"] == 0 and store.free == 1 << 20
    assert store.put(h, d)  # the name was not left reserved


def test_stream_needs_size(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 100)
    h, d = share(10)
    with pytest.raises(ValueError):
        store.put(h, io.BytesIO(d))
    with pytest.raises(ValueError):
        store.put(h, d, size=11)


def test_capacity_is_checked_before_writing(tmp_path: Path) -> None:
    opener = RecordingOpener()
    store = ShareStore(tmp_path, 1000, opener=opener)
    h1, d1 = share(600, 1)
    h2, d2 = share(600, 2)
    store.put(h1, d1)
    assert len(opener.opened) == 1
    with pytest.raises(CapacityExceeded):
        store.put(h2, d2)
    assert len(opener.opened) == 1  # nothing was opened for the refused share
    assert store.stats()["rejected_full"] == 1
    assert not store.has(h2)


def test_too_large_share(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 1 << 30, max_share_size=1000)
    h, d = share(1001)
    with pytest.raises(MessageTooLarge):
        store.put(h, d)
    assert store.stats()["rejected_full"] == 0


@pytest.mark.parametrize("fail_after, fail_sync", [(0, False), (65_536 + 10, False), (None, True)])
def test_disk_full_leaves_nothing_and_is_counted(
    tmp_path: Path, fail_after: int | None, fail_sync: bool
) -> None:
    opener = RecordingOpener(fail_after=fail_after, fail_sync=fail_sync)
    store = ShareStore(tmp_path, 1 << 20, opener=opener)
    h, d = share(200_000)
    with pytest.raises(DiskFull) as info:
        store.put(h, d)
    assert isinstance(info.value, CapacityExceeded)
    assert "nothing partial" in str(info.value)
    assert opener.opened and not opener.opened[0].exists()
    assert files_under(tmp_path) == [STATS_FILE]
    assert store.stats()["rejected_full"] == 1 and store.used == 0 and store.free == 1 << 20
    assert ShareStore(tmp_path, 1 << 20).stats()["rejected_full"] == 1  # counted on disk too


def test_other_io_errors_are_wrapped(tmp_path: Path) -> None:
    opener = RecordingOpener(fail_after=10, err=errno.EIO)
    store = ShareStore(tmp_path, 1 << 20, opener=opener)
    h, d = share(100)
    with pytest.raises(StorageIOError):
        store.put(h, d)
    assert files_under(tmp_path) == [STATS_FILE]
    assert store.stats()["rejected_full"] == 0


def test_source_errors_propagate_and_clean_up(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise ConnectionResetError("peer went away")

    store = ShareStore(tmp_path, 1 << 20)
    h, _ = share(100)
    with pytest.raises(ConnectionResetError):
        store.put(h, Broken(), size=100)  # type: ignore[arg-type]
    assert files_under(tmp_path) == [STATS_FILE]


def test_concurrent_puts_never_overrun_capacity(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 10 * 1000)
    shares = [share(1000, seed) for seed in range(30)]
    results: list[str] = []
    lock = threading.Lock()

    def worker(items: list[tuple[bytes, bytes]]) -> None:
        for h, d in items:
            try:
                store.put(h, d)
                outcome = "ok"
            except CapacityExceeded:
                outcome = "full"
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(shares[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 10 and results.count("full") == 20
    assert store.used == 10_000 and store.free == 0
    assert store.stats()["rejected_full"] == 20


# -- corruption on read -------------------------------------------------------


def test_corrupt_share_is_detected_and_counted(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 1 << 20)
    h, d = share(5000)
    store.put(h, d)
    path = tmp_path / h.hex()[:2] / h.hex()
    path.write_bytes(d[:100] + bytes([d[100] ^ 1]) + d[101:])
    with pytest.raises(ShareCorrupted):
        store.get(h)
    with store.open(h) as reader:
        reader.read(4000)  # not yet at the end
        with pytest.raises(ShareCorrupted):
            reader.read(4000)
    assert store.stats()["corrupt_reads"] == 2
    path.write_bytes(d[:-1])  # truncated
    with pytest.raises(ShareCorrupted):
        store.get(h)
    assert ShareStore(tmp_path, 1 << 20).stats()["corrupt_reads"] == 3


# -- restarts and crashes -----------------------------------------------------


def test_counters_are_exact_across_restarts(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 3000)
    for seed in range(4):
        h, d = share(1000, seed)
        try:
            store.put(h, d)
        except CapacityExceeded:
            pass
    h0, _ = share(1000, 0)
    store.delete(h0)
    before = store.stats()
    assert before["shares"] == 2 and before["rejected_full"] == 1
    again = ShareStore(tmp_path, 3000)
    assert again.stats() == before
    assert sorted(again.list()) == sorted(store.list())


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 10_000)
    h, d = share(1000)
    store.put(h, d)
    h2, d2 = share(800, 2)
    temp = tmp_path / h2.hex()[:2] / f"{h2.hex()}.0.tmp"
    temp.parent.mkdir(exist_ok=True)
    temp.write_bytes(d2[:300])  # as if killed mid-write
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a share")
    reopened = ShareStore(tmp_path, 10_000)
    assert not temp.exists() and foreign.exists()
    assert reopened.stats()["shares"] == 1 and reopened.used == 1000
    assert reopened.list() == [h]
    assert reopened.put(h2, d2)


KILL_SCRIPT = r"""
import hashlib, io, sys, time
from pathlib import Path
from xcore.shard.store import ShareStore

class Slow(io.RawIOBase):
    def __init__(self):
        self.sent = 0
    def readable(self):
        return True
    def read(self, n=-1):
        if self.sent:
            print("writing", flush=True)
            time.sleep(60)
        self.sent += 1
        return bytes(min(n, 65536))

store = ShareStore(Path(sys.argv[1]), 1 << 22)
store.put(hashlib.sha256(bytes(200000)).digest(), Slow(), size=200000)
"""


def test_killed_mid_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ShareStore(root, 1 << 22)
    h, d = share(1000)
    store.put(h, d)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(root)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"writing\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    temps = [p for p in root.rglob("*.tmp")]
    # the torn write is there (its first 64 KiB may still have been staged in
    # memory for a direct write, not yet in the file: DirectWriter)
    assert len(temps) == 1 and temps[0].stat().st_size <= 65536
    reopened = ShareStore(root, 1 << 22)
    assert not list(root.rglob("*.tmp"))
    assert reopened.list() == [h] and reopened.get(h) == d
    assert reopened.stats()["bytes_stored"] == 1000
    zeros = bytes(200000)
    assert reopened.put(hashlib.sha256(zeros).digest(), zeros)


def test_torn_counter_slot_falls_back(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, 0)
    h, d = share(10)
    for _ in range(3):
        with pytest.raises(CapacityExceeded):
            store.put(h, d)
    stats_path = tmp_path / STATS_FILE
    raw = bytearray(stats_path.read_bytes())
    assert len(raw) == 2 * SLOT_SIZE
    newest = 3 % 2  # seq 3 went to slot B
    raw[newest * SLOT_SIZE + 20] ^= 0xFF  # tear the newest slot
    stats_path.write_bytes(bytes(raw))
    assert ShareStore(tmp_path, 0).stats()["rejected_full"] == 2  # the previous count


def test_unreadable_counters_refuse_to_open(tmp_path: Path) -> None:
    ShareStore(tmp_path, 10)
    (tmp_path / STATS_FILE).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="delete it"):
        ShareStore(tmp_path, 10)


def test_future_version_refuses_to_open(tmp_path: Path) -> None:
    ShareStore(tmp_path, 10)
    stats_path = tmp_path / STATS_FILE
    raw = bytearray(stats_path.read_bytes())
    for slot in range(2):
        base = slot * SLOT_SIZE
        raw[base + 4] = 2
        raw[base + 32 : base + 48] = hashlib.sha256(bytes(raw[base : base + 32])).digest()[:16]
    stats_path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="version 2"):
        ShareStore(tmp_path, 10)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError):
        ShareStore(f, 10)
    with pytest.raises(ValueError):
        ShareStore(tmp_path / "d", -1)


# -- a model-based property ---------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "delete", "reopen"]), st.integers(0, 7)), max_size=25
    )
)
def test_store_matches_a_model(ops: list[tuple[str, int]]) -> None:
    sizes = [0, 1, 100, 300, 1000, 64 * 1024 + 1, 2000, 50]
    capacity = 70_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = ShareStore(root, capacity)
        model: dict[bytes, bytes] = {}
        rejected = 0
        for op, i in ops:
            h, d = share(sizes[i], seed=i)
            if op == "put":
                if h in model:
                    assert store.put(h, d) is False
                elif sum(map(len, model.values())) + len(d) > capacity:
                    rejected += 1
                    with pytest.raises(CapacityExceeded):
                        store.put(h, d)
                else:
                    assert store.put(h, d) is True
                    model[h] = d
            elif op == "delete":
                assert store.delete(h) == (model.pop(h, None) is not None)
            else:
                store = ShareStore(root, capacity)
            used = sum(map(len, model.values()))
            assert store.stats() == {
                "shares": len(model),
                "bytes_stored": used,
                "bytes_free": capacity - used,
                "capacity": capacity,
                "rejected_full": rejected,
                "corrupt_reads": 0,
            }
            assert store.list() == sorted(model)
        for h, d in model.items():
            assert store.get(h) == d


def test_errors_are_xcore_errors() -> None:
    for cls in (BadShareName, DiskFull, ShareCorrupted, StorageIOError, ShareNotFound):
        assert issubclass(cls, XcoreError)
