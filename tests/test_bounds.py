"""The bounds every request meets before its handler (kalepool.bounds), on real messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from kalepool.bounds import (
    INT32_MAX,
    INT64_MAX,
    PEM_MAX,
    REPEATED_MAX,
    TEXT_MAX,
    cut,
    out_of_bounds,
)
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2


def test_unsigned_fields_fit_their_columns() -> None:
    assert out_of_bounds(pooler_pb2.RequestPlantRequest(block_index=INT32_MAX)) is None
    assert out_of_bounds(pooler_pb2.RequestPlantRequest(max_farmers=INT32_MAX + 1)) == (
        f"max_farmers must be at most {INT32_MAX}, got {INT32_MAX + 1}"
    )
    assert out_of_bounds(pooler_pb2.StreamAssignmentsRequest(after_cursor=INT64_MAX)) is None
    assert out_of_bounds(pooler_pb2.StreamAssignmentsRequest(after_cursor=INT64_MAX + 1))


def test_a_nonce_may_use_all_64_bits_and_nested_fields_are_named() -> None:
    full = pooler_pb2.WorkReport(nonce=2**64 - 1)
    assert out_of_bounds(pooler_pb2.ReportWorkRequest(results=[full])) is None
    counted = pooler_pb2.WorkReport(hashes_computed=2**64 - 1)
    problem = out_of_bounds(pooler_pb2.ReportWorkRequest(results=[full, counted]))
    assert problem is not None and problem.startswith("results[1].hashes_computed must be")


def test_enums_strings_lists_and_times() -> None:
    assert out_of_bounds(pool_pb2.ListPoolersRequest(status=99)) == (  # type: ignore[arg-type]
        "status is not a known PoolerStatus (got 99)"
    )
    paged = pool_pb2.ListPoolersRequest(pagination=common_pb2.Pagination(page_token="a\x00"))
    assert out_of_bounds(paged) == "pagination.page_token must not contain NUL characters"
    many = pooler_pb2.RequestHarvestRequest(farmer_ids=[""] * (REPEATED_MAX + 1))
    expected = f"farmer_ids has {REPEATED_MAX + 1} entries, at most {REPEATED_MAX}"
    assert out_of_bounds(many) == expected
    assert out_of_bounds(Timestamp(seconds=2**62)) == "timestamp is not a valid time"
    assert out_of_bounds(Timestamp(seconds=0, nanos=5)) is None


def test_cut_keeps_messages_short() -> None:
    assert cut("short") == "short"
    long = cut("x" * 1000)
    assert len(long) == 300 and long.endswith("…")


def test_a_certificate_field_takes_a_whole_certificate_and_no_more() -> None:
    """A `*_pem` field holds a certificate, longer than other text; still bounded."""
    pem = "-----BEGIN CERTIFICATE-----\n" + "A" * 3000 + "\n-----END CERTIFICATE-----\n"
    request = pool_pb2.AddPoolerCertificateRequest(certificate_pem=pem)
    assert len(pem) > TEXT_MAX and out_of_bounds(request) is None
    request.certificate_pem = "A" * (PEM_MAX + 1)
    assert out_of_bounds(request) == (
        f"certificate_pem is {PEM_MAX + 1} characters long, at most {PEM_MAX}"
    )
    assert out_of_bounds(pool_pb2.AddPoolerCertificateRequest(pooler_id="x" * 3000)) == (
        f"pooler_id is 3000 characters long, at most {TEXT_MAX}"
    )
