"""Poolers' client certificates (`pooler_certificates`): which certificate is whose, and
whether a pooler's certificate and API key still admit it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value
from kalepool.tls import ClientCertificate

CERTIFICATE_COLUMNS = "id, pooler_id, fingerprint, subject, not_after, added_at, revoked_at"


@dataclass(frozen=True)
class CertificateRow:
    id: UUID
    pooler_id: UUID
    fingerprint: str
    subject: str
    not_after: dt.datetime
    added_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True)
class CertificateCheck:
    """How a presented certificate stands against the pooler whose key was sent."""

    matches: bool  # an active (unrevoked, unexpired) certificate of that pooler
    any_active: bool  # the pooler has any active certificate at all


class CertificateStore:
    """Queries of `pooler_certificates`."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def add(self, pooler_id: UUID, cert: ClientCertificate) -> CertificateRow:
        """Record the certificate as the pooler's (UniqueViolation when its fingerprint
        is anyone's already, revoked or not)."""
        row = await fetch_one(
            self.pool,
            CertificateRow,
            "INSERT INTO pooler_certificates (pooler_id, fingerprint, subject, not_after)"
            f" VALUES (%s, %s, %s, %s) RETURNING {CERTIFICATE_COLUMNS}",
            (pooler_id, cert.fingerprint, cert.subject, cert.not_after),
        )
        assert row is not None
        return row

    async def by_fingerprint(self, fingerprint: str) -> CertificateRow | None:
        return await fetch_one(
            self.pool,
            CertificateRow,
            f"SELECT {CERTIFICATE_COLUMNS} FROM pooler_certificates WHERE fingerprint = %s",
            (fingerprint,),
        )

    async def of_pooler(self, pooler_id: UUID) -> list[CertificateRow]:
        """The pooler's certificates, oldest first, revoked ones included."""
        return await fetch_all(
            self.pool,
            CertificateRow,
            f"SELECT {CERTIFICATE_COLUMNS} FROM pooler_certificates WHERE pooler_id = %s"
            " ORDER BY added_at, id",
            (pooler_id,),
        )

    async def revoke(self, pooler_id: UUID, fingerprint: str) -> CertificateRow | None:
        """Revoke the pooler's certificate (a revoked one stays as it was); None when the
        pooler has no such certificate."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE pooler_certificates SET revoked_at = now()"
                " WHERE pooler_id = %s AND fingerprint = %s AND revoked_at IS NULL",
                (pooler_id, fingerprint),
            )
            return await fetch_one(
                conn,
                CertificateRow,
                f"SELECT {CERTIFICATE_COLUMNS} FROM pooler_certificates"
                " WHERE pooler_id = %s AND fingerprint = %s",
                (pooler_id, fingerprint),
            )

    async def check(self, pooler_id: UUID, fingerprint: str) -> CertificateCheck:
        """Whether `fingerprint` is an active certificate of the pooler, and whether the
        pooler has any active certificate (one query)."""
        row = await fetch_one(
            self.pool,
            CertificateCheck,
            "SELECT coalesce(bool_or(fingerprint = %s), false) AS matches,"
            " count(*) > 0 AS any_active FROM pooler_certificates"
            " WHERE pooler_id = %s AND revoked_at IS NULL AND not_after > now()",
            (fingerprint, pooler_id),
        )
        assert row is not None
        return row

    async def still_admits(self, pooler_id: UUID, key_hash: bytes, fingerprint: str) -> bool:
        """Whether the pooler is active and both its key and certificate are still live:
        what an open stream re-checks."""
        found = await fetch_value(
            self.pool,
            bool,
            "SELECT p.is_active"
            " AND EXISTS (SELECT 1 FROM pooler_api_keys k WHERE k.pooler_id = p.id"
            "   AND k.key_hash = %s AND k.revoked_at IS NULL)"
            " AND EXISTS (SELECT 1 FROM pooler_certificates c WHERE c.pooler_id = p.id"
            "   AND c.fingerprint = %s AND c.revoked_at IS NULL AND c.not_after > now())"
            " FROM poolers p WHERE p.id = %s",
            (key_hash, fingerprint, pooler_id),
        )
        return bool(found)
