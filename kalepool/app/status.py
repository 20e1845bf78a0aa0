"""`kale-pool status`: what runs, where it listens, how the farm is doing; or, without a
running stack, one line saying so and what the data directory holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import grpc
from rich.console import Console
from rich.table import Table

from kalepool.amounts import format_kale
from kalepool.app.fees import read_figures, takings
from kalepool.app.operator import OperatorClient
from kalepool.app.runstate import RunState
from kalepool.app.tables import format_age, format_span, poolers_table
from kalepool.masking import mask_url
from kalepool.settings import Settings
from kalepool.wire import when


def nothing_has_run(settings: Settings) -> bool:
    """True when the data directory has no database yet (and none is configured):
    nothing has run here, so there is nothing to inspect."""
    if settings.database_url is not None:
        return False
    return not (settings.layout().postgres / "PG_VERSION").is_file()


def data_dir_table(settings: Settings) -> Table:
    """What the data directory holds: database, chain, certificates, poolers, demo, logs."""
    from kalepool.db import resolve_conninfo
    from kalepool.db.migrate import migration_status

    layout = settings.layout()
    table = Table("what", "state", show_header=False, title=f"data directory {layout.root}")
    table.add_row("network", settings.network.value)
    if settings.database_url is not None:
        where = "DATABASE_URL"
    elif (layout.postgres / "PG_VERSION").is_file():
        where = f"embedded PostgreSQL in {layout.postgres}"
    else:
        where = "none yet (kale-pool up creates an embedded PostgreSQL)"
    conninfo = None if nothing_has_run(settings) else resolve_conninfo(settings, start=False)
    if conninfo is None:
        state = "" if nothing_has_run(settings) else ": not running"
    else:
        try:
            pending = [m for m in migration_status(conninfo) if not m.applied]
            state = ": schema current" if not pending else f": {len(pending)} migrations pending"
        except Exception as error:  # status reports, it does not crash, on a bad database
            state = f": unreachable ({type(error).__name__})"
    table.add_row("database", where + state)
    chain = layout.devnet_state
    if chain.is_file():
        size = chain.stat().st_size / 1e6
        table.add_row("devnet chain", f"{chain} ({size:.1f} MB)")
    else:
        table.add_row("devnet chain", "none yet")
    certs = sorted(p.stem for p in layout.certs.glob("*.pem") if not p.stem.endswith("-key"))
    table.add_row("certificates", ", ".join(certs) if certs else "none yet")
    poolers = sorted(p.parent.name for p in (layout.root / "poolers").glob("*/pooler.json"))
    table.add_row("poolers", ", ".join(poolers) if poolers else "none yet")
    demo = layout.root / "demo" / "farmers.json"
    try:
        farmers = len(json.loads(demo.read_text()).get("farmers", {}))
    except (OSError, ValueError, AttributeError):
        farmers = 0
    table.add_row("demo farmers", str(farmers) if farmers else "none yet")
    table.add_row("logs", str(layout.logs))
    return table


def processes_table(state: RunState) -> Table:
    alive = state.alive()
    table = Table("part", "pid", "state", "address", "log", title="processes")
    table.add_row(
        "kale-pool up",
        str(state.supervisor_pid),
        "[green]running[/green]" if alive["supervisor"] else "[red]gone[/red]",
        "",
        "",
    )
    for name, info in state.processes.items():
        table.add_row(
            name,
            str(info.pid),
            "[green]running[/green]" if alive.get(name) else "[red]gone[/red]",
            info.address,
            info.log,
        )
    for part, url in state.metrics.items():
        table.add_row(f"{part} metrics", "", "", url, "")
    return table


async def pool_tables(settings: Settings, state: RunState) -> list[Table | str]:
    """Poolers with last-seen, the current block and when the next is due, pool totals."""
    now = dt.datetime.now(dt.UTC)
    out: list[Table | str] = []
    async with OperatorClient(settings, address=state.pool_address, timeout=10) as op:
        stats, poolers, details = await read_figures(op)
    block = f"current block {stats.current_block_index}"
    opened = when(stats.current_block_opened_at)
    if opened is not None:
        block += f", opened {format_age(stats.current_block_opened_at, now)}"
    due = when(stats.next_block_due_at)
    if due is not None:
        left = (due - now).total_seconds()
        block += (
            f", the next is due in {format_span(left)}"
            if left > 0
            else f", the next was due {format_span(-left)} ago (the next plant opens it)"
        )
    out.append(block)
    by_id = {p.pooler_id: d for p, d in zip(poolers, details, strict=True)}
    out.append(poolers_table(poolers, by_id, now=now))
    totals = Table("pool", "", show_header=False, title="totals", title_justify="left")
    totals.add_row("farmers active", str(stats.farmers_active))
    totals.add_row("farmers waiting for funding", str(stats.farmers_pending_funding))
    totals.add_row("blocks farmed", str(stats.blocks))
    c = stats.counts
    totals.add_row(
        "plants / works / harvests",
        f"{c.plants_succeeded} / {c.works_succeeded} / {c.harvests_succeeded}"
        f" (failed {c.plants_failed} / {c.works_failed} / {c.harvests_failed})",
    )
    totals.add_row("rewards", f"{format_kale(stats.total_reward_stroops)} KALE")
    totals.add_row("farmers' balances", f"{format_kale(stats.total_balance_stroops)} KALE")
    totals.add_row("paid out", f"{format_kale(stats.total_paid_out_stroops)} KALE")
    totals.add_row("fee and shares taken", takings(stats, details))
    out.append(totals)
    return out


def show_status(settings: Settings, console: Console | None = None) -> int:
    """Print the status; the exit code (0)."""
    if console is None:
        from kalepool.app.commands import _out  # standard output at a useful width

        console = _out()
    state = RunState.load(settings)
    root = settings.layout().root
    if state is None:
        console.print(f"kale-pool up is not running on {root}")
        console.print(data_dir_table(settings))
        return 0
    alive = state.alive()
    started = time.strftime("%H:%M:%S", time.localtime(state.started_at))
    if not alive["supervisor"]:
        console.print(
            f"kale-pool up (pid {state.supervisor_pid}, started {started}) is not running on"
            f" {root}: it stopped without cleaning up"
        )
        console.print(processes_table(state))
        console.print(data_dir_table(settings))
        return 0
    console.print(
        f"kale-pool up is running on {root} (pid {state.supervisor_pid}, since {started},"
        f" {state.network}, chain at {mask_url(state.rpc_url)})"
    )
    if state.web_url:
        console.print(f"farmers' web page: {state.web_url}", highlight=False)
    console.print(processes_table(state))
    try:
        for item in asyncio.run(pool_tables(settings, state)):
            console.print(item)
    except grpc.aio.AioRpcError as error:
        console.print(f"the pool at {state.pool_address} does not answer: {error.details()}")
    console.print(data_dir_table(settings))
    return 0
