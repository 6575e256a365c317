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
    from xcore.alloc import limit_arenas
    limit_arenas()  # before any worker thread exists (see xcore/alloc.py)
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
@click.option("--repair-interval", default=60.0, show_default=True, help="Seconds between repair checks.")
@click.option("--repair-grace", default=900.0, show_default=True,
              help="Seconds a host may be unreachable before its shares count as lost.")
@json_option
def node_init(data: Path, host: str, port: int, capacity: str, bootstrap: tuple[str, ...],
              difficulty: int | None, no_diversity: bool, force: bool, repair_interval: float,
              repair_grace: float, as_json: bool) -> None:
    """Create a node data directory: identity key and config."""
    from xcore.node import DEFAULT_DIFFICULTY, init_node, parse_size
    info = init_node(data, host=host, port=port, capacity=parse_size(capacity),
                     bootstrap=[" ".join(b.split()) for b in bootstrap],
                     difficulty=DEFAULT_DIFFICULTY if difficulty is None else difficulty,
                     diversity=not no_diversity, force=force, repair_interval=repair_interval,
                     repair_grace=repair_grace)
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


# -- owner keys and files ----------------------------------------------------


def _passphrase(confirm: bool = False) -> str:
    from xcore.client.keys import get_passphrase
    return get_passphrase(prompt=lambda p: click.prompt(p.rstrip(": "), hide_input=True,
                                                        default="", show_default=False),
                          confirm=confirm)


@main.group(cls=XcoreGroup)
def keys() -> None:
    """The owner's keys: a 24-word mnemonic, kept sealed under a passphrase."""


@keys.command("new")
@data_option
@click.option("--force", is_flag=True, help="Replace an existing keystore.")
@json_option
def keys_new(data: Path, force: bool, as_json: bool) -> None:
    """Create owner keys; prints the mnemonic once: write it down."""
    import secrets
    from xcore.client.keys import argon2_params_from_env, create_keystore
    words = create_keystore(data, _passphrase(confirm=True), token_bytes=secrets.token_bytes,
                            params=argon2_params_from_env(), force=force)
    emit({"mnemonic": words, "data": str(data)}, as_json,
         lambda r: "Your recovery phrase (the only way back to your files):\n\n  " + r["mnemonic"])


@keys.command("import")
@data_option
@click.option("--force", is_flag=True, help="Replace an existing keystore.")
@json_option
def keys_import(data: Path, force: bool, as_json: bool) -> None:
    """Read a mnemonic from stdin and keep it sealed in DATA."""
    import secrets
    from xcore.client.keys import argon2_params_from_env, import_keystore
    words = sys.stdin.readline().strip()
    import_keystore(data, words, _passphrase(), token_bytes=secrets.token_bytes,
                    params=argon2_params_from_env(), force=force)
    emit({"imported": True, "data": str(data)}, as_json, lambda r: "keys imported")


bootstrap_option = click.option("--bootstrap", multiple=True,
                                help="Seed node HOST:PORT [ID] when no node runs on DATA.")


class _Progress:
    """A one-line progress display on a terminal (nothing otherwise)."""

    def __init__(self, enabled: bool) -> None:
        import time
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.monotonic()

    def __call__(self, p: dict[str, Any]) -> None:
        if not self.enabled or not isinstance(p, dict):
            return
        import time
        done, total = int(p.get("done", 0)), max(1, int(p.get("total", 1)))
        bar = "#" * int(30 * done / total)
        if p.get("unit") == "files":
            tail = f"{done}/{total} files"
        else:
            tail = f"{done / max(1e-9, time.monotonic() - self.start) / 1e6:7.1f} MB/s"
        sys.stderr.write(f"\r{p.get('op', '')} [{bar:<30}] {100 * done // total:3d}% {tail}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


async def _client_op(data: Path, op: str, args: dict[str, Any], seeds: tuple[str, ...],
                     progress: Any) -> Any:
    """Run a data-path op on the node running on DATA, or as a short-lived client."""
    from xcore.client.keys import load_owner_keys
    from xcore.control import call, is_running
    keys = load_owner_keys(data, _passphrase())
    args = dict(args, master=keys.master)
    if is_running(data):
        return await call(data, op, args, timeout=300, on_progress=progress)
    from xcore.bootstrap import parse_seed
    from xcore.client.files import Client, parse_file_id
    from xcore.node import CONFIG_NAME, NodeService, init_node
    from xcore.shard.erasure import Redundancy
    if not (data / CONFIG_NAME).exists():
        init_node(data, capacity=0, bootstrap=list(seeds), difficulty=_difficulty())
    async with NodeService(data, ephemeral=True,
                           extra_seeds=[parse_seed(s) for s in seeds]) as svc:
        await svc.join()
        client = Client(svc, keys)
        try:
            if op == "put":
                return await client.put(Path(args["path"]), Redundancy.parse(args["redundancy"]),
                                        name=args.get("name"), progress=progress)
            if op == "get":
                return await client.get(parse_file_id(args["file_id"]), Path(args["out"]),
                                        progress=progress)
            if op == "ls":
                return await client.ls()
            if op == "rm":
                return await client.rm(parse_file_id(args["file_id"]))
            if op == "renew":
                ids = [parse_file_id(f) for f in args["file_ids"]] or None
                return await client.renew(ids, progress=progress)
            raise click.UsageError(op)
        finally:
            client.close()


def _difficulty() -> int:
    import os
    from xcore.node import DEFAULT_DIFFICULTY
    return int(os.environ.get("XCORE_DIFFICULTY", DEFAULT_DIFFICULTY))


@main.command("put")
@data_option
@click.option("--redundancy", default="4/8", show_default=True, help="k/n erasure code; 1/3 = three mirrors.")
@click.option("--name", default=None, help="Name to list the file under (default: its file name).")
@bootstrap_option
@json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def put_cmd(data: Path, redundancy: str, name: str | None, bootstrap: tuple[str, ...],
            as_json: bool, file: Path) -> None:
    """Encrypt FILE, spread it over hosts, and list it in your index."""
    from xcore.shard.erasure import Redundancy
    Redundancy.parse(redundancy)
    bar = _Progress(not as_json)
    try:
        res = run_async(_client_op(data, "put", {"path": str(file.resolve()), "redundancy": redundancy,
                                                 "name": name}, bootstrap, bar))
    finally:
        bar.close()
    emit(res, as_json, lambda r: f"{r['file_id']}  {r['name']}  {r['size']} bytes  "
                                 f"{r['segments']} segments at {r['redundancy']}  {r['mb_per_s']} MB/s")


@main.command("get")
@data_option
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@bootstrap_option
@json_option
@click.argument("file_id")
def get_cmd(data: Path, out: Path, bootstrap: tuple[str, ...], as_json: bool, file_id: str) -> None:
    """Fetch FILE_ID, check every share, decrypt it to OUT."""
    bar = _Progress(not as_json)
    try:
        res = run_async(_client_op(data, "get", {"file_id": file_id, "out": str(out.resolve())},
                                   bootstrap, bar))
    finally:
        bar.close()
    emit(res, as_json, lambda r: f"{r['out']}  {r['size']} bytes  sha256 {r['sha256']}  {r['mb_per_s']} MB/s")


@main.command("ls")
@data_option
@bootstrap_option
@json_option
def ls_cmd(data: Path, bootstrap: tuple[str, ...], as_json: bool) -> None:
    """List your files (works from any machine that has your mnemonic).

    "until": hosts keep a file at least that long (a year from its put or its
    last `xcore renew`)."""
    res = run_async(_client_op(data, "ls", {}, bootstrap, None))
    emit(res, as_json, lambda rows: "\n".join(
        f"{r['file_id']}  {r['size']:>12}  until {_utc(r['until'])}  {r['name']}"
        for r in rows) or "(no files)")


@main.command("rm")
@data_option
@bootstrap_option
@json_option
@click.argument("file_id")
def rm_cmd(data: Path, bootstrap: tuple[str, ...], as_json: bool, file_id: str) -> None:
    """Remove FILE_ID from your index and tell its hosts to drop its shares."""
    res = run_async(_client_op(data, "rm", {"file_id": file_id}, bootstrap, None))
    emit(res, as_json, lambda r: f"removed {r['name']} ({r['shares_deleted']} shares deleted)")


@main.command("renew")
@data_option
@bootstrap_option
@json_option
@click.argument("file_ids", nargs=-1)
def renew_cmd(data: Path, bootstrap: tuple[str, ...], as_json: bool, file_ids: tuple[str, ...]) -> None:
    """Extend your hold on FILE_IDS (default: every file) for another year.

    Hosts keep a share while some grant for it runs (a year from the put or
    the last renew) and drop it afterwards. No bytes are uploaded again."""
    bar = _Progress(not as_json)
    try:
        res = run_async(_client_op(data, "renew", {"file_ids": list(file_ids)}, bootstrap, bar))
    finally:
        bar.close()
    emit(res, as_json, lambda r: (
        f"renewed {r['files']} file(s) until {_utc(r['until'])} UTC: {r['renewed']} share copies"
        f" ({r['not_held']} no longer held, {r['failed']} unreachable)"))


def _utc(ts: int) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


@main.command("repair")
@data_option
@click.option("--now", is_flag=True, help="Run a check (and any repair it calls for) immediately.")
@json_option
def repair_cmd(data: Path, now: bool, as_json: bool) -> None:
    """Status of the segments this node watches or leads, and recent repairs."""
    from xcore.control import call
    rep = run_async(call(data, "repair", {"now": now}, timeout=600))

    def human(r: dict[str, Any]) -> str:
        lines = [f"{len(r['segments'])} segment(s) watched; grace {r['grace']} s"]
        for s in r["segments"]:
            held_up = f", {len(s['grace'])} only by the grace period" if s.get("grace") else ""
            lines.append(f"  {s['segment'][:16]}  {s['healthy']}/{s['n']} healthy{held_up} "
                         f"(threshold {s['threshold']})  {s['action']}  leader {str(s['leader'])[:12]}")
        for seg, a in r.get("active", {}).items():
            lines.append(f"  repairing {seg[:16]}: {a['phase']}, {len(a['placed'])} placed, "
                         f"claim until {a['claim_expires']:.0f}")
        for e in r["events"]:
            lines.append(f"  repair {e['segment'][:16]}: shares {e['missing']} -> "
                         f"{len(e['placed'])} placed, {e['bytes_down'] + e['bytes_up']} bytes, "
                         f"{e['seconds']} s, {'ok' if e['ok'] else 'FAILED: ' + str(e['error'])}")
        return "\n".join(lines)
    emit(rep, as_json, human)


@main.command("audit")
@data_option
@click.option("--host", default=None, help="Only audit this host (node ID hex).")
@json_option
def audit_cmd(data: Path, host: str | None, as_json: bool) -> None:
    """Audit now the contracts this node holds; print results and reputations."""
    from xcore.control import call
    rep = run_async(call(data, "audit", {"host": host or ""}, timeout=600))

    def human(r: dict[str, Any]) -> str:
        lines = [f"{len(r['audits'])} audit(s) run"]
        for a in r["audits"]:
            lines.append(f"  host {a['host'][:16]} share {a['share'][:12]}: "
                         f"{'pass' if a['passed'] else 'FAIL'} ({a['reason']})")
        for h in r["hosts"]:
            lines.append(f"  host {h['host'][:16]} score {h['score']}{'  BAD' if h['bad'] else ''}  "
                         f"passed {h['audited_passed']} failed {h['audited_failed']}")
        return "\n".join(lines)
    emit(rep, as_json, human)


@main.command("payout")
@data_option
@click.option("--period", default=None, help="Month, YYYY-MM (default: this month).")
@click.option("--inxt", multiple=True, help="NODE_ID=AMOUNT of INXT a host holds (bonus).")
@json_option
def payout_cmd(data: Path, period: str | None, inxt: tuple[str, ...], as_json: bool) -> None:
    """Payouts per host for a month (whitepaper Appendix 1), from audit attestations."""
    from xcore.control import call
    held = {}
    for item in inxt:
        k, _, v = item.partition("=")
        if not v.isdigit():
            raise click.BadParameter(f"{item!r}: expected NODE_ID=AMOUNT")
        held[k] = int(v)
    res = run_async(call(data, "payout", {"period": period or "", "inxt": held}))

    def human(r: dict[str, Any]) -> str:
        lines = [f"period {r['period']} ({r['attestations']} attestations)"]
        for h in r["hosts"]:
            lines.append(f"  {h['host'][:16]}  {h['gb_months']} GB-months  "
                         f"audits {h['audits_passed']}/{h['audits_failed']}  EUR {h['euros']} "
                         f"+ {h['bonus_percent']}% = EUR {h['total']}")
        return "\n".join(lines)
    emit(res, as_json, human)


@main.command("hosts")
@data_option
@json_option
def hosts_cmd(data: Path, as_json: bool) -> None:
    """Known hosts with capacity, latency, uptime and selection score."""
    from xcore.control import call
    rows = run_async(call(data, "hosts"))
    emit(rows, as_json, lambda rs: "\n".join(
        f"{r['node_id'][:16]}  {r['address']:>21}  free {r['free']:>12}  "
        f"lat {r['latency_ms']} ms  up {r['uptime']} s  score {r['score']}" for r in rs))


# -- simulation ----------------------------------------------------------------


def _deterministic_hashes() -> None:
    """Same seed, same result: pin Python's hash seed (set/dict order of str
    and bytes) by re-running this command with PYTHONHASHSEED=0."""
    import os
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, "-m", "xcore", *sys.argv[1:]], env)


@main.group(cls=XcoreGroup)
def sim() -> None:
    """Network simulations: the real node code under churn, or a numpy model at scale."""


@sim.command("run")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@json_option
def sim_run(scenario: Path, seed: int, out: Path, as_json: bool) -> None:
    """Run SCENARIO.toml; write metrics (CSV/JSON) and plots (PNG) to OUT."""
    _deterministic_hashes()
    from sims.run import load_scenario, run_scenario
    doc = load_scenario(scenario)
    log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    summary = run_scenario(doc, seed, out, base_dir=scenario.parent, log=log)
    emit(summary, as_json, lambda s: json.dumps(s, indent=2, sort_keys=True))


@sim.command("sweep")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--param", "params", multiple=True, help="NAME=V1,V2,... (dotted names reach into tables).")
@click.option("--seeds", default=3, show_default=True, type=int, help="Seeds per grid point.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--scheduler", default=None, help="Dask scheduler address (default: local processes).")
@json_option
def sim_sweep(scenario: Path, params: tuple[str, ...], seeds: int, out: Path,
              scheduler: str | None, as_json: bool) -> None:
    """Run a grid of parameters x seeds in parallel; write a table and plots with 95% CIs."""
    _deterministic_hashes()
    from sims.run import load_scenario, parse_params, sweep
    doc = load_scenario(scenario)
    res = sweep(doc, parse_params(params), seeds, out, base_dir=scenario.parent,
                scheduler=scheduler, log=(lambda m: None) if as_json else
                (lambda m: click.echo(m, err=True)))
    emit(res, as_json, lambda r: f"{r['runs']} runs over {r['points']} grid points -> {r['out']}")


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
@click.option("--repair-interval", default=60.0, show_default=True, help="Seconds between repair checks.")
@click.option("--repair-grace", default=900.0, show_default=True, help="Grace period before repair.")
@click.option("--audit-interval", default=300.0, show_default=True, help="Seconds between audit rounds.")
@click.option("--repair-claim-ttl", default=None, type=float,
              help="Seconds a repair leader's claim holds unless renewed (node default 120).")
@click.option("--repair-rate", default=None,
              help="Repair bandwidth per node, bytes/s, e.g. 256KiB (node default 50MB).")
@click.option("--fault", multiple=True, help="NAME=MODE: make a node dishonest "
              "(delete, corrupt, hashes, nonce) to see audits catch it.")
@json_option
def devnet_up(count: int, directory: Path, difficulty: int | None, capacity: str, timeout: float,
              repair_interval: float, repair_grace: float, audit_interval: float,
              repair_claim_ttl: float | None, repair_rate: str | None,
              fault: tuple[str, ...], as_json: bool) -> None:
    """Start COUNT node processes; return once all have joined."""
    from xcore.devnet import up
    from xcore.node import DEFAULT_DIFFICULTY, parse_size
    info = up(directory, count, difficulty=DEFAULT_DIFFICULTY if difficulty is None else difficulty,
              capacity=parse_size(capacity), timeout=timeout, repair_interval=repair_interval,
              repair_grace=repair_grace, audit_interval=audit_interval,
              faults=dict(f.split("=", 1) for f in fault if "=" in f),
              repair_claim_ttl=repair_claim_ttl,
              repair_rate=None if repair_rate is None else parse_size(repair_rate),
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
