"""xcore.directio: new files written around the page cache, byte for byte the
same as ordinary writes, with a fallback wherever O_DIRECT is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xcore.directio as directio
from xcore.directio import ALIGN, STAGE, DirectWriter

pieces = st.lists(st.integers(0, 3 * STAGE // 2), max_size=6)


def write_file(path: Path, sizes: list[int], *, direct: bool = True) -> tuple[bytes, DirectWriter]:
    data = os.urandom(sum(sizes))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    w = DirectWriter(fd, direct=direct)
    try:
        at = 0
        for n in sizes:
            assert w.write(memoryview(data)[at:at + n]) == n
            at += n
        w.finish()
        os.fsync(fd)
    finally:
        w.close()
        os.close(fd)
    return data, w


@settings(max_examples=25, deadline=None)
@given(sizes=pieces)
def test_the_file_holds_exactly_the_bytes_written(tmp_path_factory: pytest.TempPathFactory,
                                                  sizes: list[int]) -> None:
    path = tmp_path_factory.mktemp("d") / "f"
    data, w = write_file(path, sizes)
    assert path.read_bytes() == data and w.size == len(data)
    assert w.direct_bytes + w.buffered_bytes == len(data)  # padding is not counted


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, STAGE - 1, STAGE, STAGE + 1,
                                  2 * STAGE + 3 * ALIGN + 7])
def test_sizes_around_block_and_stage_edges(tmp_path: Path, size: int) -> None:
    data, w = write_file(tmp_path / "f", [size])
    assert (tmp_path / "f").read_bytes() == data
    if directio._O_DIRECT and w.direct:  # this filesystem took O_DIRECT
        assert w.direct_bytes == size and w.buffered_bytes == 0


def test_ordinary_writes_when_asked(tmp_path: Path) -> None:
    data, w = write_file(tmp_path / "f", [STAGE + 5], direct=False)
    assert (tmp_path / "f").read_bytes() == data
    assert not w.direct and w.buffered_bytes == len(data) and w.direct_bytes == 0


def test_a_filesystem_refusing_o_direct_gets_ordinary_writes(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directio, "set_direct", lambda fd, on: False)  # as fcntl says on such a fs
    data, w = write_file(tmp_path / "f", [3, STAGE, 10])
    assert (tmp_path / "f").read_bytes() == data
    assert not w.direct and w.buffered_bytes == len(data)


def test_a_direct_write_refused_half_way_falls_back_and_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device with another alignment refuses a direct write (EINVAL): the
    writer clears O_DIRECT and writes that block and the rest buffered."""
    if not directio._O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    real_write, calls = os.write, {"n": 0}

    def refuse_the_second(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)
    monkeypatch.setattr(directio.os, "write", refuse_the_second)
    data, w = write_file(tmp_path / "f", [2 * STAGE + 100])
    if calls["n"] < 2:
        pytest.skip("this filesystem refused O_DIRECT outright")
    assert (tmp_path / "f").read_bytes() == data
    assert not w.direct and w.direct_bytes == STAGE and w.buffered_bytes == STAGE + 100


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(directio.os, "write", full)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    w = DirectWriter(fd)
    try:
        with pytest.raises(OSError) as info:
            w.write(bytes(STAGE))
            w.finish()
        assert info.value.errno == errno.ENOSPC
    finally:
        w.close()
        os.close(fd)


def test_stage_buffers_are_reused_not_leaked(tmp_path: Path) -> None:
    for i in range(3 * directio._POOL_MAX):
        write_file(tmp_path / f"f{i}", [ALIGN + i])
    assert len(directio._pool) <= directio._POOL_MAX


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_shares_the_parents_stage_buffers() -> None:
    """Stage buffers are private mappings, and a forked child starts with an
    empty pool: a shared mapping would be one memory in both processes, and
    two processes staging writes in it corrupt each other's files (seen as a
    share read back corrupt in a simulator run in a forked worker)."""
    buf = directio._take_buffer()
    buf[:4] = b"PRNT"
    directio._give_buffer(buf)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            if not directio._pool:
                directio._take_buffer()[:4] = b"CHLD"
                buf[:4] = b"KID!"  # the inherited mapping, written here
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child inherited the parent's pool"
    assert buf[:4] == b"PRNT", "the child's writes showed in the parent's buffer"
