"""The `xcore` command: a thin click group over the library.

Every command takes ``--json``. Heavy imports happen inside the commands so
``xcore --help`` stays fast. An :class:`~xcore.errors.XcoreError` becomes one
clear line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import click

T = TypeVar("T")


class Ctx:
    def __init__(self) -> None:
        self.verbose = 0


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def run_async(coro: Awaitable[T]) -> T:
    from xcore.net.aio import new_event_loop
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def emit(obj: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
    elif human is not None:
        click.echo(human(obj))
    else:
        for k, v in obj.items():
            click.echo(f"{k}: {v}")


class XcoreGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from xcore.errors import XcoreError
        try:
            return super().invoke(ctx)
        except XcoreError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


data_option = click.option("--data", "data", required=True,
                           type=click.Path(file_okay=False, path_type=Path),
                           help="Node data directory.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(cls=XcoreGroup)
@click.option("-v", "--verbose", count=True, help="More logging (repeat for debug).")
@pass_ctx
def main(ctx: Ctx, verbose: int) -> None:
    """xcore: a peer-to-peer, end-to-end encrypted storage network."""
    import logging
    ctx.verbose = verbose
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- node -----------------------------------------------------------------


@main.group(cls=XcoreGroup)
def node() -> None:
    """Create, run and inspect a node."""


@node.command("init")
@data_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, show_default=True, type=int, help="UDP port (0: any free port, kept after).")
@click.option("--capacity", default="0", show_default=True, help="Disk space offered to others, e.g. 10GiB.")
@click.option("--bootstrap", multiple=True, help="Seed node HOST:PORT [NODE_ID_HEX] (repeatable).")
@click.option("--difficulty", default=None, type=int, help="ID puzzle difficulty in bits (network parameter).")
@click.option("--no-diversity", is_flag=True, help="Disable the routing-table /24 caps (labs only).")
@click.option("--force", is_flag=True, help="Overwrite an existing config (keeps the identity).")
@json_option
def node_init(data: Path, host: str, port: int, capacity: str, bootstrap: tuple[str, ...],
              difficulty: int | None, no_diversity: bool, force: bool, as_json: bool) -> None:
    """Create a node data directory: identity key and config."""
    from xcore.node import DEFAULT_DIFFICULTY, init_node, parse_size
    info = init_node(data, host=host, port=port, capacity=parse_size(capacity),
                     bootstrap=[" ".join(b.split()) for b in bootstrap],
                     difficulty=DEFAULT_DIFFICULTY if difficulty is None else difficulty,
                     diversity=not no_diversity, force=force)
    emit(info, as_json, lambda i: f"initialised node {i['node_id']} in {i['data']}")


@node.command("start")
@data_option
def node_start(data: Path) -> None:
    """Run the node in the foreground until SIGTERM/SIGINT."""
    import logging
    from xcore.node import run_node
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    run_async(run_node(data))


@node.command("status")
@data_option
@json_option
def node_status(data: Path, as_json: bool) -> None:
    """Show a running node's identity, address, peers, records and counters."""
    from xcore.control import call
    st = run_async(call(data, "status"))

    def human(s: dict[str, Any]) -> str:
        lines = [f"node     {s['node_id']}", f"address  {s['address']}",
                 f"peers    {s['peers']}", f"records  {s['records']}",
                 f"joined   {s['joined']}", f"dropped  {s['dropped']}"]
        for k, v in s["counters"].items():
            lines.append(f"  {k:28} {v}")
        return "\n".join(lines)
    emit(st, as_json, human)


@node.command("stop")
@data_option
@json_option
def node_stop(data: Path, as_json: bool) -> None:
    """Ask a running node to save its state and exit."""
    from xcore.control import call
    emit(run_async(call(data, "stop")), as_json, lambda r: "stopping")


# -- dht ------------------------------------------------------------------


@main.group(cls=XcoreGroup)
def dht() -> None:
    """Store and read small signed records in the DHT."""


async def _with_node(data: Path, op: str, args: dict[str, Any]) -> Any:
    """Talk to the node running on ``data``; if none runs there, join the
    network as a short-lived client from that data dir."""
    from xcore.control import call, is_running
    if is_running(data):
        return await call(data, op, args)
    from xcore.node import NodeService
    async with NodeService(data, ephemeral=True) as svc:
        await svc.join()
        if op == "dht_put":
            return await svc.dht_put(args["key"], args["value"].encode())
        if op == "dht_get":
            return await svc.dht_get(args["key"])
        raise click.UsageError(f"{op} needs a running node")


@dht.command("put")
@data_option
@click.argument("key")
@click.argument("value")
@json_option
def dht_put(data: Path, key: str, value: str, as_json: bool) -> None:
    """Sign VALUE and store it under KEY (a 'text' record, one per signer)."""
    res = run_async(_with_node(data, "dht_put", {"key": key, "value": value}))
    emit(res, as_json, lambda r: f"stored {r['key']} on {r['stored_at']} node(s)")


@dht.command("get")
@data_option
@click.argument("key")
@json_option
def dht_get(data: Path, key: str, as_json: bool) -> None:
    """Print the newest value stored under KEY."""
    res = run_async(_with_node(data, "dht_get", {"key": key}))
    emit(res, as_json, lambda r: r["value"])


# -- devnet ---------------------------------------------------------------


@main.group(cls=XcoreGroup)
def devnet() -> None:
    """A local network of node processes on 127.0.0.1."""


@devnet.command("up")
@click.option("--nodes", "count", default=8, show_default=True, type=int)
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--difficulty", default=None, type=int, help="ID puzzle bits (default: the network default).")
@click.option("--capacity", default="1GiB", show_default=True, help="Disk each node offers.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for all nodes to join.")
@json_option
def devnet_up(count: int, directory: Path, difficulty: int | None, capacity: str, timeout: float,
              as_json: bool) -> None:
    """Start COUNT node processes; return once all have joined."""
    from xcore.devnet import up
    from xcore.node import DEFAULT_DIFFICULTY, parse_size
    info = up(directory, count, difficulty=DEFAULT_DIFFICULTY if difficulty is None else difficulty,
              capacity=parse_size(capacity), timeout=timeout,
              progress=None if as_json else lambda m: click.echo(m, err=True))
    emit(info, as_json, lambda i: f"devnet of {len(i['nodes'])} nodes up in {i['dir']}")


@devnet.command("down")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@json_option
def devnet_down(directory: Path, as_json: bool) -> None:
    """Stop every node of the devnet in DIR."""
    from xcore.devnet import down
    info = down(directory)
    emit(info, as_json, lambda i: f"stopped {i['stopped']} node(s)")


if __name__ == "__main__":  # pragma: no cover
    main()
