"""Error decoding, fault attribution, bad input, contract balances, history and stalls."""

from __future__ import annotations

import pytest
from stellar_sdk import Keypair, TransactionBuilder, scval
from stellar_sdk.exceptions import PrepareTransactionException

from kalepool.chain import (
    ChainUnavailableError,
    ContractError,
    ContractKind,
    Fault,
    SignedTx,
    SimulationError,
    SubmitEvent,
    SubmitStep,
    TxKind,
    TxStatus,
    attribute_fault,
    build_harvest,
    build_payment,
    build_plant,
    build_trustline,
    build_work,
    kale_balance,
    read_account,
    reconcile,
    sign,
    submit,
)
from kalepool.chain.calls import invoke
from kalepool.chain.errors import (
    AccountNotFoundError,
    AssetError,
    FarmError,
    parse_simulation_error,
)
from kalepool.chain.submit import TxOutcome

from .stage import KALE, Stage, open_stage


async def test_simulation_errors_read_from_events_or_from_the_text_alone(stage: Stage) -> None:
    """Servers that send no diagnostic events still yield the number and the raiser."""
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=KALE)
    account = await client.rpc.load_account(farmer.public_key)
    tx = (
        TransactionBuilder(account, client.config.network_passphrase, 100)
        .append_invoke_contract_function_op(
            client.config.farm_contract_id,
            "plant",
            [
                scval.to_address(farmer.public_key),
                scval.to_int128(2 * KALE),
            ],
        )
        .set_timeout(3600)
        .build()
    )
    with pytest.raises(PrepareTransactionException) as failed:
        await client.rpc.prepare_transaction(tx)
    sim = failed.value.simulate_transaction_response
    assert sim.error is not None and sim.events
    from_events = parse_simulation_error(sim.error, sim.events)
    from_text = parse_simulation_error(sim.error, None)
    assert from_events == from_text == ("Error(Contract, #10)", 10, client.config.sac_contract_id)


async def test_other_simulation_failures_and_missing_accounts(stage: Stage) -> None:
    client = stage.client
    (payer,) = await stage.accounts(1)
    with pytest.raises(SimulationError) as unknown_fn:
        await invoke(
            client, TxKind.PLANT, payer.public_key, client.config.farm_contract_id, "sow", []
        )
    assert "sow" in str(unknown_fn.value) and unknown_fn.value.host_error.startswith("Error(")
    assert not isinstance(unknown_fn.value, ContractError)
    assert attribute_fault(TxKind.PLANT, unknown_fn.value) is Fault.POOL

    nobody = Keypair.random().public_key
    with pytest.raises(AccountNotFoundError) as missing:
        await build_plant(client, nobody, 0)
    assert missing.value.account_id == nobody
    assert attribute_fault(TxKind.PLANT, missing.value) is Fault.FARMER  # not funded
    assert attribute_fault(TxKind.WORK, missing.value) is Fault.POOLER  # its channel account


async def test_bad_input_is_refused_before_anything_is_sent(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=KALE)
    me = farmer.public_key
    before = await read_account(client, me)
    cases = [
        (build_plant(client, me, -1), "plant amount"),
        (build_plant(client, "GABC", 0), "not a Stellar account or contract address"),
        (build_plant(client, me, True), "plant amount"),  # type: ignore[arg-type]
        (build_work(client, me, bytes(31), 0, source=me), "32 bytes"),
        (build_work(client, me, bytes(32), -1, source=me), "nonce"),
        (build_work(client, me, bytes(32), 2**64, source=me), "nonce"),
        (build_harvest(client, me, 2**32, source=me), "block index"),
        (build_payment(client, me, me, 0), "payment amount"),
        (build_payment(client, me, "nowhere", 1), "payment destination"),
        (build_trustline(client, "SBADSECRET"), "not a Stellar account address"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            await call
    latest = await client.latest_ledger()
    with pytest.raises(ValueError, match="max_time"):
        await build_trustline(client, me, max_time=latest.close_time)
    assert (await stage.info())["pending_transactions"] == 0
    assert await read_account(client, me) == before


async def test_envelopes_without_a_time_bound_or_signature_are_refused(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1)
    passphrase = client.config.network_passphrase
    account = await client.rpc.load_account(farmer.public_key)
    forever = (
        TransactionBuilder(account, passphrase, 100)
        .append_change_trust_op(client.config.asset)
        .add_time_bounds(0, 0)  # no maxTime: valid forever
        .build()
    )
    forever.sign(farmer)
    with pytest.raises(ValueError, match="no time bound"):
        SignedTx.from_envelope(forever.to_xdr(), passphrase)
    unsigned = await build_trustline(client, farmer.public_key)
    with pytest.raises(ValueError, match="not signed"):
        SignedTx.from_envelope(unsigned.envelope.to_xdr(), passphrase)
    with pytest.raises(ValueError, match="not a transaction envelope"):
        SignedTx.from_envelope("AAAA", passphrase)
    signed = sign(unsigned, farmer)
    foreign = SignedTx.from_envelope(signed.envelope_xdr, "Another Network ; 2026")
    assert foreign.hash != signed.hash  # the hash depends on the network
    with pytest.raises(ValueError, match="another network"):
        await submit(client, foreign)


async def test_payout_to_a_contract_goes_through_the_asset_contract(stage: Stage) -> None:
    client = stage.client
    (payer,) = await stage.accounts(1, kale=KALE)
    target = client.config.farm_contract_id  # any contract can hold KALE
    assert await kale_balance(client, target) == 0
    tx = await build_payment(client, payer.public_key, target, 1234)
    assert (tx.kind, tx.function, tx.contract_id) == (
        TxKind.TRANSFER,
        "transfer",
        client.config.sac_contract_id,
    )
    outcome = await stage.run(tx, payer)
    assert outcome.ok, outcome.describe()
    assert await kale_balance(client, target) == 1234
    assert await kale_balance(client, payer.public_key) == KALE - 1234
    with pytest.raises(ContractError) as broke:
        await build_payment(client, payer.public_key, target, KALE)
    assert broke.value.asset_error is AssetError.INSUFFICIENT_BALANCE
    assert attribute_fault(TxKind.TRANSFER, broke.value) is Fault.POOL


async def test_fate_beyond_the_servers_history() -> None:
    """With the history gone, the account's sequence number tells: unused means EXPIRED;
    used means the fate cannot be known (UNKNOWN), never a guess."""
    async with open_stage(history_ledgers=3) as stage:
        client = stage.client
        (farmer,) = await stage.accounts(1)
        applied = sign(await build_trustline(client, farmer.public_key), farmer)
        assert (await stage.settle(applied)).ok
        never = sign(await build_trustline(client, farmer.public_key, remove=True), farmer)
        await stage.advance(client.config.tx_timeout_seconds + 1)
        await stage.close(5)  # the window no longer reaches back to either's min_time

        unknown = await reconcile(client, applied)
        assert unknown.status is TxStatus.UNKNOWN and unknown.db_status is None
        assert "unknown" in unknown.describe()
        expired = await reconcile(client, never)
        assert expired.status is TxStatus.EXPIRED and expired.sends == 0


async def test_a_stalled_chain_is_reported_and_the_transaction_left_to_reconcile() -> None:
    async with open_stage(stall_seconds=0.3) as stage:
        client = stage.client
        (farmer,) = await stage.accounts(1)
        signed = sign(await build_trustline(client, farmer.public_key), farmer)
        steps: list[SubmitStep] = []

        async def watch(event: SubmitEvent) -> None:
            steps.append(event.step)

        with pytest.raises(ChainUnavailableError, match="reconcile it by hash"):
            await submit(client, signed, observe=watch)
        # While no ledger closes, the shared waiter has nothing new to search: the drive
        # waits for it (no NOT_FOUND need be reported) until the stall is called.
        assert steps[0] is SubmitStep.SENT and set(steps[1:]) <= {SubmitStep.NOT_FOUND}
        await stage.close()
        assert (await reconcile(client, signed)).ok


def _outcome(status: TxStatus, kind: TxKind, **fields: object) -> TxOutcome:
    tx = SignedTx(
        envelope_xdr="AAAA",
        hash="0" * 64,
        source=Keypair.random().public_key,
        sequence=1,
        min_time=1,
        max_time=2,
        kind=kind,
        network_passphrase="test",
    )
    return TxOutcome(status, tx, **fields)  # type: ignore[arg-type]


FARM, SAC = "CFARM", "CSAC"


@pytest.mark.parametrize(
    ("kind", "kind_of_contract", "number", "fault"),
    [
        (TxKind.PLANT, ContractKind.ASSET, AssetError.INSUFFICIENT_BALANCE, Fault.FARMER),
        (TxKind.PLANT, ContractKind.ASSET, AssetError.TRUSTLINE_MISSING, Fault.POOL),
        (TxKind.PLANT, ContractKind.FARM, FarmError.PAIL_EXISTS, Fault.POOL),
        (TxKind.PLANT, ContractKind.FARM, FarmError.FARM_PAUSED, Fault.CHAIN),
        (TxKind.WORK, ContractKind.FARM, FarmError.PAIL_MISSING, Fault.POOLER),
        (TxKind.WORK, ContractKind.FARM, FarmError.HASH_INVALID, Fault.POOLER),
        (TxKind.WORK, ContractKind.FARM, FarmError.GAP_COUNT_TOO_LOW, Fault.POOLER),
        (TxKind.WORK, ContractKind.FARM, FarmError.ZERO_COUNT_TOO_LOW, Fault.POOLER),
        (TxKind.HARVEST, ContractKind.FARM, FarmError.WORK_MISSING, Fault.POOLER),
        (TxKind.HARVEST, ContractKind.FARM, FarmError.HARVEST_NOT_READY, Fault.POOL),
        (TxKind.HARVEST, ContractKind.FARM, FarmError.PAIL_MISSING, Fault.POOL),
        (TxKind.HARVEST, ContractKind.ASSET, AssetError.TRUSTLINE_MISSING, Fault.POOL),
        (TxKind.HARVEST, ContractKind.FARM, FarmError.BLOCK_INVALID, Fault.CHAIN),
    ],
)
def test_contract_error_faults(
    kind: TxKind, kind_of_contract: ContractKind, number: int, fault: Fault
) -> None:
    contract = FARM if kind_of_contract is ContractKind.FARM else SAC
    error = ContractError(int(number), contract, kind_of_contract, kind.value)
    assert error.name == number.name.title().replace("_", "")  # type: ignore[attr-defined]
    assert attribute_fault(kind, error) is fault
    failed = _outcome(TxStatus.FAILED, kind, contract_error=error)
    assert attribute_fault(kind, failed) is fault


def test_same_number_means_different_things_per_contract() -> None:
    farm10 = ContractError(10, FARM, ContractKind.FARM, "harvest")
    asset10 = ContractError(10, SAC, ContractKind.ASSET, "harvest")
    assert (farm10.name, asset10.name) == ("WorkMissing", "InsufficientBalance")
    assert farm10.farm_error is FarmError.WORK_MISSING and farm10.asset_error is None
    assert asset10.asset_error is AssetError.INSUFFICIENT_BALANCE and asset10.farm_error is None
    other = ContractError(99, "COTHER", ContractKind.OTHER, "x")
    assert other.name == "#99" and other.farm_error is None


@pytest.mark.parametrize(
    ("kind", "status", "codes", "payer", "fault"),
    [
        (TxKind.PLANT, TxStatus.SUCCESS, ("txSUCCESS", None), None, Fault.NONE),
        (TxKind.PLANT, TxStatus.REJECTED, ("txINSUFFICIENT_BALANCE", None), None, Fault.FARMER),
        (TxKind.PLANT, TxStatus.REJECTED, ("txINSUFFICIENT_BALANCE", None), Fault.POOL, Fault.POOL),
        (TxKind.WORK, TxStatus.REJECTED, ("txNO_ACCOUNT", None), None, Fault.POOLER),
        (TxKind.WORK, TxStatus.REJECTED, ("txBAD_SEQ", None), None, Fault.POOLER),
        (TxKind.HARVEST, TxStatus.REJECTED, ("txBAD_AUTH", None), None, Fault.POOL),
        (TxKind.HARVEST, TxStatus.REJECTED, ("txINTERNAL_ERROR", None), None, Fault.CHAIN),
        (TxKind.WORK, TxStatus.EXPIRED, (None, None), None, Fault.CHAIN),
        (TxKind.PLANT, TxStatus.UNKNOWN, (None, None), None, Fault.CHAIN),
        (
            TxKind.TRUSTLINE,
            TxStatus.FAILED,
            ("txFAILED", "CHANGE_TRUST_LOW_RESERVE"),
            None,
            Fault.FARMER,
        ),
        (TxKind.TRANSFER, TxStatus.FAILED, ("txFAILED", "PAYMENT_UNDERFUNDED"), None, Fault.POOL),
    ],
)
def test_result_code_faults(
    kind: TxKind,
    status: TxStatus,
    codes: tuple[str | None, str | None],
    payer: Fault | None,
    fault: Fault,
) -> None:
    outcome = _outcome(status, kind, result_code=codes[0], operation_code=codes[1])
    assert attribute_fault(kind, outcome, payer=payer) is fault


def test_transport_failures_are_the_chains() -> None:
    assert attribute_fault(TxKind.PLANT, ChainUnavailableError("down")) is Fault.CHAIN
    assert attribute_fault(TxKind.WORK, TimeoutError()) is Fault.CHAIN
    assert attribute_fault(TxKind.HARVEST, ValueError("bad index")) is Fault.POOL


async def test_only_a_close_may_carry_several_operations(stage: Stage) -> None:
    client = stage.client
    farmer, other = await stage.accounts(2)
    passphrase = client.config.network_passphrase
    account = await client.rpc.load_account(farmer.public_key)
    close = (
        TransactionBuilder(account, passphrase, 100)
        .append_payment_op(other.public_key, client.config.asset, "0")
        .append_change_trust_op(client.config.asset, limit="0")
        .append_account_merge_op(other.public_key)
        .set_timeout(60)
        .build()
    )
    close.sign(farmer)
    assert SignedTx.from_envelope(close.to_xdr(), passphrase).kind is TxKind.CLOSE
    two_payments = (
        TransactionBuilder(account, passphrase, 100)
        .append_payment_op(other.public_key, client.config.asset, "1")
        .append_payment_op(other.public_key, client.config.asset, "1")
        .set_timeout(60)
        .build()
    )
    two_payments.sign(farmer)
    with pytest.raises(ValueError, match="only a close"):
        SignedTx.from_envelope(two_payments.to_xdr(), passphrase)
