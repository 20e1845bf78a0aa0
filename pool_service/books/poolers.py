"""Poolers: the registry's mining machines, their API keys and their last heartbeat
(`poolers`, `pooler_api_keys`); their certificates are `books.certificates`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value
from kalepool.tls import ClientCertificate


@dataclass(frozen=True)
class PoolerRow:
    id: UUID
    name: str
    public_key: str
    max_farmers: int
    current_farmers: int
    is_active: bool
    last_seen_at: dt.datetime | None
    created_at: dt.datetime


@dataclass(frozen=True)
class Heartbeat:
    """The figures of a pooler's heartbeat, as stored (`poolers.heartbeat_*`)."""

    capacity: int
    hashes_per_second: int
    threads: int
    mining_farmers: int
    agent_version: str
    block_index: int
    last_cursor: int
    cpu_percent: int | None = None  # None: an agent that does not report it
    memory_percent: int | None = None


@dataclass(frozen=True)
class HeartbeatRow:
    """A pooler's last stored heartbeat (all None before the first)."""

    last_heartbeat_at: dt.datetime | None
    heartbeat_capacity: int | None
    heartbeat_hashes_per_second: int | None
    heartbeat_threads: int | None
    heartbeat_mining_farmers: int | None
    heartbeat_agent_version: str | None
    heartbeat_block_index: int | None
    heartbeat_last_cursor: int | None


POOLER_COLUMNS = (
    "id, name, public_key, max_farmers, current_farmers, is_active, last_seen_at, created_at"
)


class PoolerStore:
    """Queries of poolers, their keys and heartbeats."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def insert_pooler(
        self,
        name: str,
        public_key: str,
        max_farmers: int,
        key_hash: bytes,
        key_prefix: str,
        certificate: ClientCertificate | None = None,
    ) -> PoolerRow:
        """A new pooler, its first API key and (if given) its first certificate, together
        or not at all."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_one(
                conn,
                PoolerRow,
                f"INSERT INTO poolers (name, public_key, max_farmers) VALUES (%s, %s, %s)"
                f" RETURNING {POOLER_COLUMNS}",
                (name, public_key, max_farmers),
            )
            assert row is not None
            await conn.execute(
                "INSERT INTO pooler_api_keys (pooler_id, key_hash, key_prefix) VALUES (%s, %s, %s)",
                (row.id, key_hash, key_prefix),
            )
            if certificate is not None:
                await conn.execute(
                    "INSERT INTO pooler_certificates (pooler_id, fingerprint, subject, not_after)"
                    " VALUES (%s, %s, %s, %s)",
                    (row.id, certificate.fingerprint, certificate.subject, certificate.not_after),
                )
            return row

    async def pooler(self, pooler_id: UUID) -> PoolerRow | None:
        return await fetch_one(
            self.pool,
            PoolerRow,
            f"SELECT {POOLER_COLUMNS} FROM poolers WHERE id = %s",
            (pooler_id,),
        )

    async def list_poolers(
        self, active: bool | None, after: tuple[str, str] | None, limit: int
    ) -> list[PoolerRow]:
        where = ["TRUE"]
        params: list[Any] = []
        if active is not None:
            where.append("is_active = %s")
            params.append(active)
        if after is not None:
            where.append("(created_at, id) > (%s::timestamptz, %s::uuid)")
            params.extend(after)
        params.append(limit)
        return await fetch_all(
            self.pool,
            PoolerRow,
            f"SELECT {POOLER_COLUMNS} FROM poolers WHERE {' AND '.join(where)}"
            " ORDER BY created_at, id LIMIT %s",
            params,
        )

    async def update_pooler(
        self, pooler_id: UUID, name: str | None, max_farmers: int | None, active: bool | None
    ) -> PoolerRow | None:
        return await fetch_one(
            self.pool,
            PoolerRow,
            "UPDATE poolers SET name = coalesce(%s, name),"
            " max_farmers = coalesce(%s, max_farmers), is_active = coalesce(%s, is_active)"
            f" WHERE id = %s RETURNING {POOLER_COLUMNS}",
            (name, max_farmers, active, pooler_id),
        )

    async def rotate_key(self, pooler_id: UUID, key_hash: bytes, key_prefix: str) -> bool:
        """Revoke every live key of the pooler and add the new one; False if no such pooler."""
        async with self.pool.connection() as conn, conn.transaction():
            found = await fetch_value(
                conn, int, "SELECT 1 FROM poolers WHERE id = %s FOR UPDATE", (pooler_id,)
            )
            if found is None:
                return False
            await conn.execute(
                "UPDATE pooler_api_keys SET revoked_at = now()"
                " WHERE pooler_id = %s AND revoked_at IS NULL",
                (pooler_id,),
            )
            await conn.execute(
                "INSERT INTO pooler_api_keys (pooler_id, key_hash, key_prefix) VALUES (%s, %s, %s)",
                (pooler_id, key_hash, key_prefix),
            )
            return True

    async def pooler_by_key(self, key_hash: bytes) -> PoolerRow | None:
        """The pooler holding this live (unrevoked) key; marks the key and pooler as seen.

        The "seen" writes are skipped within 30 s of the last one, so a busy pooler does
        not turn every call into a write.
        """
        async with self.pool.connection() as conn:
            row = await fetch_one(
                conn,
                PoolerRow,
                f"SELECT {', '.join('p.' + c.strip() for c in POOLER_COLUMNS.split(','))}"
                " FROM pooler_api_keys k JOIN poolers p ON p.id = k.pooler_id"
                " WHERE k.key_hash = %s AND k.revoked_at IS NULL",
                (key_hash,),
            )
            if row is not None and (
                row.last_seen_at is None
                or row.last_seen_at < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
            ):
                await conn.execute(
                    "UPDATE pooler_api_keys SET last_used_at = now() WHERE key_hash = %s",
                    (key_hash,),
                )
                await conn.execute(
                    "UPDATE poolers SET last_seen_at = now() WHERE id = %s", (row.id,)
                )
            return row

    async def record_heartbeat(self, pooler_id: UUID, beat: Heartbeat, min_seconds: float) -> bool:
        """Store a heartbeat's figures and time; whether it was written.

        Skipped within `min_seconds` of the last one stored (the database's clock decides,
        so several machines or replicas of one pooler cost one write every few seconds).
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE poolers SET last_heartbeat_at = now(), heartbeat_capacity = %s,"
                " heartbeat_hashes_per_second = %s, heartbeat_threads = %s,"
                " heartbeat_mining_farmers = %s, heartbeat_agent_version = %s,"
                " heartbeat_block_index = %s, heartbeat_last_cursor = %s,"
                " heartbeat_cpu_percent = %s, heartbeat_memory_percent = %s"
                " WHERE id = %s AND (last_heartbeat_at IS NULL"
                " OR last_heartbeat_at <= now() - make_interval(secs => %s))",
                (
                    beat.capacity,
                    beat.hashes_per_second,
                    beat.threads,
                    beat.mining_farmers,
                    beat.agent_version,
                    beat.block_index,
                    beat.last_cursor,
                    beat.cpu_percent,
                    beat.memory_percent,
                    pooler_id,
                    min_seconds,
                ),
            )
            return cur.rowcount > 0

    async def heartbeat(self, pooler_id: UUID) -> HeartbeatRow | None:
        return await fetch_one(
            self.pool,
            HeartbeatRow,
            "SELECT last_heartbeat_at, heartbeat_capacity, heartbeat_hashes_per_second,"
            " heartbeat_threads, heartbeat_mining_farmers, heartbeat_agent_version,"
            " heartbeat_block_index, heartbeat_last_cursor FROM poolers WHERE id = %s",
            (pooler_id,),
        )
