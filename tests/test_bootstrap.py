"""Seed-node lists: parsing, formatting, error messages that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.bootstrap import (
    MAX_LINES,
    format_address,
    format_seed,
    load_bootstrap,
    parse_address,
    parse_bootstrap,
    parse_seed,
)
from xcore.errors import ConfigError

ID_HEX = "ab" * 20
ID = bytes.fromhex(ID_HEX)


def test_parse_full_file() -> None:
    text = f"""# xcore seed nodes
# host:port node_id

seed1.example.org:4000 {ID_HEX}
10.0.0.1:4001   # ID unknown
   [2001:db8::1]:4002 {ID_HEX.upper()}   # v6, upper-case hex

\t[::1]:4003\t
"""
    assert parse_bootstrap(text) == [
        (("seed1.example.org", 4000), ID),
        (("10.0.0.1", 4001), None),
        (("2001:db8::1", 4002), ID),
        (("::1", 4003), None),
    ]


def test_empty_and_comment_only() -> None:
    assert parse_bootstrap("") == []
    assert parse_bootstrap("\n\n  \n# nothing\n   # still nothing\n") == []


def test_windows_line_endings() -> None:
    assert parse_bootstrap(f"a:1 {ID_HEX}\r\nb:2\r\n") == [(("a", 1), ID), (("b", 2), None)]


@pytest.mark.parametrize("text,line,what", [
    ("a:1\nb:2\nnot-an-address\n", 3, "host:port"),
    ("# c\n\nhost:0\n", 3, "port"),
    ("host:65536", 1, "port"),
    ("host:", 1, "port"),
    ("host:port", 1, "port"),
    (":4000", 1, "host"),
    ("a:1\n[::1:4000\n", 2, "v6"),
    ("[::1]4000", 1, "v6"),
    ("a:1\nb:2 zz\n", 2, "not hex"),
    (f"a:1 {ID_HEX}00", 1, "40 hex digits"),
    (f"a:1 {ID_HEX[:-2]}", 1, "40 hex digits"),
    (f"a:1 {ID_HEX} extra", 1, "expected"),
])
def test_errors_name_the_line(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(text, "seeds.txt")
    msg = str(info.value)
    assert f"seeds.txt, line {line}:" in msg
    assert what in msg


def test_too_many_lines() -> None:
    with pytest.raises(ConfigError, match="more than"):
        parse_bootstrap("\n" * (MAX_LINES + 1))


def test_parse_address_and_format_round_trip() -> None:
    for addr in [("1.2.3.4", 1), ("::1", 65535), ("host.example", 4000), ("2001:db8::7", 80)]:
        assert parse_address(format_address(addr)) == addr
    assert format_address(("::1", 4000)) == "[::1]:4000"
    assert format_address(("h", 4000)) == "h:4000"


def test_format_seed_round_trip() -> None:
    for seed in [(("h", 1), ID), (("::1", 2), None)]:
        assert parse_seed(format_seed(*seed)) == seed
    assert format_seed(("h", 1), None) == "h:1"


def test_load_bootstrap(tmp_path: Path) -> None:
    p = tmp_path / "bootstrap_nodes.txt"
    p.write_text(f"# seeds\nh:1 {ID_HEX}\n")
    assert load_bootstrap(p) == [(("h", 1), ID)]
    p.write_bytes(b"h:1\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_bootstrap(p)
    p.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="1 MiB"):
        load_bootstrap(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_bootstrap(tmp_path / "missing.txt")
    p.write_text("h:1\nbad line here x\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        load_bootstrap(p)


def test_repo_bootstrap_file_parses() -> None:
    path = Path(__file__).resolve().parent.parent / "bootstrap_nodes.txt"
    if not path.exists():
        pytest.skip("no bootstrap_nodes.txt")
    load_bootstrap(path)


def _lines(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(chars, max_size=60),
        st.builds(lambda h, p, i: f"{h}:{p} {i}", st.text(chars, max_size=10),
                  st.text(chars, max_size=6),
                  st.text(alphabet="0123456789abcdefABCDEF", max_size=42)),
        st.builds(lambda h, p: f"[{h}]:{p}", st.text(chars, max_size=10),
                  st.text(alphabet="0123456789", max_size=6)),
    )


_ascii = st.characters(max_codepoint=127)
_line = _lines(st.characters())


def _check(text: str) -> None:
    try:
        seeds = parse_bootstrap(text)
    except ConfigError:
        return
    for (host, port), node_id in seeds:
        assert isinstance(host, str) and host
        assert isinstance(port, int) and 1 <= port <= 65535
        assert node_id is None or len(node_id) == 20


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(_ascii, max_size=400),
                 st.lists(_lines(_ascii), max_size=8).map("\n".join)))
@example("[]:1")
@example("[::1]:")
@example("[::1]:99999")
@example("a:1 " + "0" * 40 + " x")
def test_any_ascii_text_parses_or_raises_config_error(text: str) -> None:
    _check(text)


BUG_PORT = ("BUG: xcore/bootstrap.py parse_address checks the port with str.isdigit(), "
            "which accepts Unicode digits such as '\u00b2' that int() refuses: ValueError "
            "escapes instead of ConfigError")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.lists(_line, max_size=8).map("\n".join)))
@example("h:\u00b2")                 # superscript two: isdigit() but not int()
@example("h:\u0663")                 # Arabic-Indic three
@example("a:1\x85b:2")               # NEL splits lines too
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    _check(text)


def test_superscript_digit_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_bootstrap("# seeds\nseed.example:4\u00b2\n")


@pytest.mark.parametrize("text", ["2001:db8::1", "::1:4000", "fe80::1:4000"])
def test_unbracketed_ipv6_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="bracket|\\["):
        parse_address(text)
