"""The one home of the wire mappings (unit): every value of the domain has its message
form and back, so no service, the agent or the command line needs a table of its own."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kalepool import wire
from kalepool.amounts import STROOPS_PER_KALE, exact_kale, format_kale, parse_kale
from kalepool.chain import Fault, TxKind
from kalepool.v1 import common_pb2, records_pb2, wallet_pb2
from wallet_service.service import tx_kind


def test_every_fault_has_its_party_and_back() -> None:
    for fault in Fault:
        party = wire.fault_party(fault)
        assert common_pb2.FaultParty.Name(party) == f"FAULT_PARTY_{fault.name}"
        assert wire.fault_of_party(party) is fault
        assert wire.fault_party(fault.value) == party  # the stored label maps alike
    assert wire.fault_party(None) == common_pb2.FAULT_PARTY_UNSPECIFIED
    assert wire.fault_of_party(common_pb2.FAULT_PARTY_UNSPECIFIED) is None
    with pytest.raises(ValueError):
        wire.fault_party("nobody")


def test_every_failure_code_has_its_stored_label_and_back() -> None:
    for name, code in common_pb2.FailureCode.items():
        if code == common_pb2.FAILURE_CODE_UNSPECIFIED:
            continue
        label = wire.failure_label(code)
        assert f"FAILURE_CODE_{label}" == name
        assert wire.failure_code(label) == code
    assert wire.failure_code(None) == common_pb2.FAILURE_CODE_UNSPECIFIED
    assert wire.failure_code("farm#6") == common_pb2.FAILURE_CODE_CONTRACT_ERROR
    assert wire.failure_code("WHAT") == common_pb2.FAILURE_CODE_INTERNAL
    assert wire.failure_code("WHAT", unknown=common_pb2.FAILURE_CODE_MINER_FAILED) == (
        common_pb2.FAILURE_CODE_MINER_FAILED
    )
    assert (wire.contract_error_number("asset#13"), wire.contract_error_number("TX_FAILED")) == (
        13,
        0,
    )


def test_the_chains_error_codes_name_their_cause() -> None:
    assert wire.chain_failure_code("farm#8") == common_pb2.FAILURE_CODE_PAIL_EXISTS
    assert wire.chain_failure_code("farm#9") == common_pb2.FAILURE_CODE_PAIL_MISSING
    assert wire.chain_failure_code("asset#10") == common_pb2.FAILURE_CODE_INSUFFICIENT_KALE
    assert wire.chain_failure_code("farm#6") == common_pb2.FAILURE_CODE_CONTRACT_ERROR
    assert wire.chain_failure_code("txINSUFFICIENT_BALANCE") == (
        common_pb2.FAILURE_CODE_INSUFFICIENT_XLM
    )
    assert wire.chain_failure_code("txBAD_SEQ") == common_pb2.FAILURE_CODE_TX_FAILED
    assert wire.chain_failure_code("txTOO_LATE", expired=True) == common_pb2.FAILURE_CODE_TX_EXPIRED


def test_statuses() -> None:
    for pending in ("prepared", "submitted", "pending"):
        assert wire.tx_status(pending) == common_pb2.TX_STATUS_PENDING
    assert wire.tx_status("success") == common_pb2.TX_STATUS_SUCCESS
    assert wire.tx_status("failed") == common_pb2.TX_STATUS_FAILED
    assert wire.tx_status("failed", rejected=True) == common_pb2.TX_STATUS_REJECTED
    assert wire.tx_status("expired", rejected=True) == common_pb2.TX_STATUS_EXPIRED
    assert wire.event_status("success") == records_pb2.EVENT_STATUS_SUCCEEDED
    assert wire.event_status("pending") == records_pb2.EVENT_STATUS_PENDING
    assert wire.farmer_status("active", funded=False) == common_pb2.FARMER_STATUS_PENDING_FUNDING
    assert wire.farmer_status("active", funded=True) == common_pb2.FARMER_STATUS_ACTIVE
    for label in wire.FARMER_STATUS_LABELS:
        status = wire.farmer_status_of_label(label)
        assert wire.farmer_status_label(status) == label
    assert wire.farmer_status_of_label("pending-funding") == (
        common_pb2.FARMER_STATUS_PENDING_FUNDING
    )
    with pytest.raises(ValueError):
        wire.farmer_status_of_label("gone")


def test_wallet_tx_kinds() -> None:
    """The wallet maps its own API's kinds (the pooler agent, which shares `wire`, must
    not reach the wallet's messages)."""
    for kind in TxKind:
        if kind is not TxKind.WORK:  # the pooler's, never the wallet's
            assert wallet_pb2.TxKind.Name(tx_kind(kind)) == f"TX_KIND_{kind.name}"


def test_times() -> None:
    moment = dt.datetime(2025, 6, 1, 12, 34, 56, 789_000, tzinfo=dt.UTC)
    stamp = wire.timestamp(moment)
    assert stamp is not None and wire.when(stamp) == moment
    assert wire.timestamp(None) is None
    assert wire.when(Timestamp()) is None  # an unset field
    chain_time = 1_750_000_000.25
    assert wire.seconds(wire.epoch(chain_time)) == chain_time
    assert wire.epoch(1_750_000_000).nanos == 0


def test_amounts() -> None:
    assert STROOPS_PER_KALE == 10_000_000
    assert exact_kale(12_500_000) == "1.2500000" and exact_kale(-1) == "-0.0000001"
    assert format_kale(12_345 * STROOPS_PER_KALE + 5_000_000) == "12,345.5"
    assert parse_kale("1,000.25") == 10_002_500_000
    for bad in ("-1", "0.00000001", "one", ""):
        with pytest.raises(ValueError):
            parse_kale(bad)
