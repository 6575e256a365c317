"""The `xcore` command: CliRunner tests (no network) and one real node process.

Errors must come out as one line, ``error: ...`` on stderr, exit status 1 and
no traceback (STYLE.md, CLI).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner, Result

from cli import main
from tests.procs import Xcore
from xcore.crypto.identity import Identity, puzzle_ok
from xcore.node import DEFAULT_DIFFICULTY

ROOT = Path(__file__).resolve().parents[2]
SEED_ID = "ab" * 20


@pytest.fixture
def base() -> Iterator[Path]:
    """A short directory under /tmp (control socket paths must stay < 100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _keep_root_log_level() -> Iterator[None]:
    """`xcore node start` raises the root logger to INFO in-process; undo it."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="xcore")


def assert_one_line_error(r: Result, pattern: str) -> None:
    """Exit 1, no traceback, exactly one line ``error: ...`` on stderr, nothing on stdout."""
    assert r.exit_code == 1, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert r.stdout == ""
    assert r.stderr.endswith("\n") and r.stderr.count("\n") == 1, repr(r.stderr)
    assert re.match(rf"error: {pattern}", r.stderr), repr(r.stderr)


def init(data: Path, *extra: str) -> dict[str, Any]:
    r = run("node", "init", "--data", str(data), "--json", *extra)
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


# -- node init --------------------------------------------------------------------


def test_init_creates_private_key_and_config(base: Path) -> None:
    data = base / "node"
    info = init(data, "--difficulty", "6", "--capacity", "10GiB", "--port", "4711",
                "--bootstrap", f"127.0.0.1:4000  {SEED_ID}", "--bootstrap", "[::1]:4001")
    assert re.fullmatch(r"[0-9a-f]{40}", info["node_id"])
    assert puzzle_ok(bytes.fromhex(info["node_id"]), 6)
    assert not puzzle_ok(bytes.fromhex(info["node_id"]), 40)  # the check is not vacuous
    key = data / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert Identity.load(key).node_id.hex() == info["node_id"]
    config = json.loads((data / "config.json").read_text())
    assert config == {"version": 1, "host": "127.0.0.1", "port": 4711, "capacity": 10 << 30,
                      "bootstrap": [f"127.0.0.1:4000 {SEED_ID}", "[::1]:4001"],
                      "difficulty": 6, "diversity": True,
                      "repair_interval": 60.0, "repair_grace": 900.0}
    assert info["data"] == str(data) and info["capacity"] == 10 << 30


def test_init_default_difficulty_and_human_output(base: Path) -> None:
    data = base / "node"
    r = run("node", "init", "--data", str(data))
    assert r.exit_code == 0, r.output
    m = re.fullmatch(r"initialised node ([0-9a-f]{40}) in (.+)\n", r.stdout)
    assert m and m.group(2) == str(data), r.stdout
    assert puzzle_ok(bytes.fromhex(m.group(1)), DEFAULT_DIFFICULTY)
    config = json.loads((data / "config.json").read_text())
    assert config["difficulty"] == DEFAULT_DIFFICULTY and config["bootstrap"] == []


def test_init_twice_refuses_and_keeps_identity(base: Path) -> None:
    data = base / "node"
    first = init(data, "--difficulty", "4")
    key_before = (data / "identity.key").read_bytes()
    config_before = (data / "config.json").read_text()
    r = run("node", "init", "--data", str(data), "--difficulty", "4", "--capacity", "1GiB")
    assert_one_line_error(r, re.escape(f"{data} is already initialised"))
    assert (data / "identity.key").read_bytes() == key_before
    assert (data / "config.json").read_text() == config_before
    assert Identity.load(data / "identity.key").node_id.hex() == first["node_id"]


def test_init_force_rewrites_config_but_keeps_identity(base: Path) -> None:
    data = base / "node"
    first = init(data, "--difficulty", "4")
    again = init(data, "--difficulty", "4", "--capacity", "1GiB", "--force")
    assert again["capacity"] == 1 << 30
    assert json.loads((data / "config.json").read_text())["capacity"] == 1 << 30
    assert again["node_id"] == first["node_id"]


@pytest.mark.parametrize("capacity", ["lots", "10XB", "-5", "1.2.3GiB", "GiB", "1e3", "99999999TiB"])
def test_init_bad_capacity(base: Path, capacity: str) -> None:
    data = base / "node"
    r = run("node", "init", "--data", str(data), "--capacity", capacity)
    assert_one_line_error(r, r"(bad )?size .*" + re.escape(repr(capacity)))
    assert not data.exists()


@pytest.mark.parametrize("seed", [
    "nohost", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:port", ":4000",
    "127.0.0.1:4000 nothex", "127.0.0.1:4000 abcd", "127.0.0.1:4000 " + SEED_ID + " extra",
    "[::1:4000",
])
def test_init_bad_bootstrap(base: Path, seed: str) -> None:
    data = base / "node"
    r = run("node", "init", "--data", str(data), "--bootstrap", seed)
    assert_one_line_error(r, r"bad (seed|address) ")
    assert not data.exists()


def test_init_bad_port(base: Path) -> None:
    r = run("node", "init", "--data", str(base / "node"), "--port", "70000")
    assert_one_line_error(r, "port must be 0-65535")


# -- commands that need a running node ---------------------------------------------


def test_status_without_a_running_node(base: Path) -> None:
    data = base / "node"
    init(data, "--difficulty", "2")
    for cmd in (("node", "status"), ("node", "status", "--json"), ("node", "stop")):
        r = run(*cmd, "--data", str(data))
        assert_one_line_error(r, re.escape(f"no node is running on {data}"))
    # an empty directory and one that does not exist say the same
    for d in (base, base / "missing"):
        assert_one_line_error(run("node", "status", "--data", str(d)), "no node is running")


def test_status_with_a_stale_control_socket(base: Path) -> None:
    """A node killed with SIGKILL leaves control.sock behind: nobody listens."""
    data = base / "node"
    init(data, "--difficulty", "2")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(data / "control.sock"))
    s.close()
    assert (data / "control.sock").exists()
    assert_one_line_error(run("node", "status", "--data", str(data)), "no node is running")


def test_status_with_a_too_long_data_path(base: Path) -> None:
    data = base / ("d" * 120)
    assert_one_line_error(run("node", "status", "--data", str(data)),
                          "data directory path too long")


def test_dht_on_an_uninitialised_dir(base: Path) -> None:
    r = run("dht", "get", "--data", str(base), "somekey")
    assert_one_line_error(r, re.escape(f"{base} is not a node data directory"))
    r = run("dht", "put", "--data", str(base), "somekey", "v")
    assert_one_line_error(r, re.escape(f"{base} is not a node data directory"))


def test_start_refuses_a_corrupt_config(base: Path) -> None:
    data = base / "node"
    init(data, "--difficulty", "2")
    (data / "config.json").write_text("{not json")
    assert_one_line_error(run("node", "start", "--data", str(data)), "cannot read")
    assert not (data / "node.pid").exists()


def test_start_refuses_a_world_readable_key(base: Path) -> None:
    data = base / "node"
    init(data, "--difficulty", "2")
    os.chmod(data / "identity.key", 0o644)
    assert_one_line_error(run("node", "start", "--data", str(data)), "key file .* readable by others")


# -- help -----------------------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out.extend(_command_paths(cmd, prefix + (name,)))
        else:
            out.append(prefix + (name,))
    return out


ALL_COMMANDS = _command_paths(main)


def test_every_expected_command_exists() -> None:
    expected = {("node", "init"), ("node", "start"), ("node", "status"), ("node", "stop"),
                ("dht", "put"), ("dht", "get"), ("devnet", "up"), ("devnet", "down")}
    assert expected <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "xcore")
def test_help(path: tuple[str, ...]) -> None:
    r = run(*path, "--help")
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stdout.startswith("Usage: " + " ".join(("xcore",) + path) + " ")


# -- a real node process -------------------------------------------------------------


xcore = Xcore(timeout=30.0)


def test_real_node_start_status_stop(base: Path) -> None:
    data = base / "n"
    r = xcore("node", "init", "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    node_id = json.loads(r.stdout)["node_id"]
    # no seeds at all (not even the package's list): the first node of a network
    (data / "bootstrap_nodes.txt").write_text("# nobody\n")
    with open(data / "stdout.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "xcore", "node", "start", "--data", str(data)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        st: dict[str, Any] = {}
        end = time.monotonic() + 20
        while time.monotonic() < end:
            assert proc.poll() is None, (data / "stdout.log").read_text()
            r = xcore("node", "status", "--data", str(data), "--json")
            if r.returncode == 0:
                st = json.loads(r.stdout)
                if st["joined"]:
                    break
            else:
                assert "no node is running" in r.stderr, r.stderr
            time.sleep(0.1)
        assert st.get("joined") is True, st
        assert st["node_id"] == node_id and st["pid"] == proc.pid
        assert st["peers"] == 0 and st["dropped"] == 0 and isinstance(st["records"], int)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", st["address"])
        # the port the OS chose is kept in the config for the next start
        assert json.loads((data / "config.json").read_text())["port"] == int(st["address"].split(":")[1])
        assert int((data / "node.pid").read_text()) == proc.pid
        assert stat.S_IMODE((data / "control.sock").stat().st_mode) == 0o600
        # a second node on the same data dir is refused while the first runs
        r = xcore("node", "start", "--data", str(data))
        assert r.returncode == 1 and r.stderr == f"error: a node is already running on {data}\n", r.stderr
        r = xcore("node", "stop", "--data", str(data), "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == {"stopping": True}, r.stderr
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (data / "control.sock").exists()
    assert not (data / "node.pid").exists()
    assert (data / "dht.state").exists()
    assert "Traceback" not in (data / "stdout.log").read_text()
