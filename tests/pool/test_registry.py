"""PoolService over mTLS: registry happy paths, and bad input that changes nothing."""

from __future__ import annotations

import grpc
import pytest
from stellar_sdk import Keypair

from kalepool.v1 import common_pb2, pool_pb2, records_pb2, wallet_pb2

from .conftest import KALE, PoolStage, until


async def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() is code, info.value.details()
    return info.value.details() or ""


async def test_poolers_register_list_update_rotate(pool: PoolStage) -> None:
    op = pool.operator()
    made = [await pool.register_pooler(f"rig-{i}", max_farmers=5) for i in range(3)]
    (first, key), *_ = made
    assert key.startswith("kp_") and len(key) > 40
    assert first.status == common_pb2.POOLER_STATUS_ACTIVE and first.current_farmers == 0
    # Only a hash of the key is stored: the key itself is nowhere in the database.
    assert await pool.count("pooler_api_keys") == 3

    got = await op.GetPooler(pool_pb2.GetPoolerRequest(pooler_id=first.pooler_id))
    assert got.pooler == first

    page1 = await op.ListPoolers(
        pool_pb2.ListPoolersRequest(pagination=common_pb2.Pagination(page_size=2))
    )
    assert [p.pooler_id for p in page1.poolers] == [m[0].pooler_id for m in made[:2]]
    page2 = await op.ListPoolers(
        pool_pb2.ListPoolersRequest(
            pagination=common_pb2.Pagination(page_size=2, page_token=page1.next_page_token)
        )
    )
    assert [p.pooler_id for p in page2.poolers] == [made[2][0].pooler_id]
    assert page2.next_page_token == ""
    # A token is valid only with the filters it was issued for.
    await refused(
        op.ListPoolers(
            pool_pb2.ListPoolersRequest(
                pagination=common_pb2.Pagination(page_token=page1.next_page_token),
                status=common_pb2.POOLER_STATUS_ACTIVE,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    updated = await op.UpdatePooler(
        pool_pb2.UpdatePoolerRequest(
            pooler_id=first.pooler_id,
            name="renamed",
            max_farmers=7,
            status=common_pb2.POOLER_STATUS_DISABLED,
        )
    )
    assert (updated.pooler.name, updated.pooler.max_farmers) == ("renamed", 7)
    assert updated.pooler.status == common_pb2.POOLER_STATUS_DISABLED
    disabled = await op.ListPoolers(
        pool_pb2.ListPoolersRequest(status=common_pb2.POOLER_STATUS_DISABLED)
    )
    assert [p.pooler_id for p in disabled.poolers] == [first.pooler_id]

    rotated = await op.RotatePoolerApiKey(
        pool_pb2.RotatePoolerApiKeyRequest(pooler_id=first.pooler_id)
    )
    assert rotated.api_key != key and rotated.api_key.startswith("kp_")
    assert await pool.count("pooler_api_keys") == 4


async def test_farmers_register_fund_confirm_and_read(pool: PoolStage) -> None:
    op = pool.operator()
    pooler, _ = await pool.register_pooler(max_farmers=3)
    payout = Keypair.random().public_key
    request = pool_pb2.RegisterFarmerRequest(
        pooler_id=pooler.pooler_id, payout_address=payout, stake_bps=2500, idempotency_key="reg-1"
    )
    made = await op.RegisterFarmer(request)
    farmer = made.farmer
    assert farmer.status == common_pb2.FARMER_STATUS_PENDING_FUNDING
    assert made.needs_funding and made.min_funding_xlm_stroops > 0
    assert made.custodial_address == farmer.custodial_address != payout
    # The wallet service holds the custodial key, under the farmer's id.
    wallet = await pool.wallet.stub.GetWallet(
        wallet_pb2.GetWalletRequest(public_key=made.custodial_address)
    )
    assert wallet.wallet.owner_id == farmer.farmer_id

    # The same key answers the same farmer; other settings under it are refused.
    again = await op.RegisterFarmer(request)
    assert again.farmer.farmer_id == farmer.farmer_id
    assert await pool.count("farmers") == 1 and await pool.count("custodial_wallets") == 1
    other = pool_pb2.RegisterFarmerRequest()
    other.CopyFrom(request)
    other.stake_bps = 10
    await refused(op.RegisterFarmer(other), grpc.StatusCode.ALREADY_EXISTS)

    # Not funded yet: nothing changes, the answer says what is missing.
    early = await op.ConfirmFunding(pool_pb2.ConfirmFundingRequest(farmer_id=farmer.farmer_id))
    assert not early.funded and "does not exist" in early.detail
    assert not early.account.exists
    assert not early.farmer.HasField("funded_at") and not early.farmer.HasField("left_at")
    await pool.stage.friendbot(made.custodial_address)

    async def funded() -> bool:
        got = await op.ConfirmFunding(pool_pb2.ConfirmFundingRequest(farmer_id=farmer.farmer_id))
        return got.funded

    await until(funded)
    confirmed = await op.ConfirmFunding(pool_pb2.ConfirmFundingRequest(farmer_id=farmer.farmer_id))
    assert confirmed.funded and confirmed.account.kale_trustline
    assert confirmed.farmer.status == common_pb2.FARMER_STATUS_ACTIVE
    # When funding was confirmed is recorded once, from that transition.
    funded_at = confirmed.farmer.funded_at
    assert confirmed.farmer.HasField("funded_at") and funded_at.seconds >= farmer.created_at.seconds
    repeat = await op.ConfirmFunding(pool_pb2.ConfirmFundingRequest(farmer_id=farmer.farmer_id))
    assert repeat.farmer.funded_at == funded_at and not repeat.farmer.HasField("left_at")

    by_address = await op.GetFarmer(
        pool_pb2.GetFarmerRequest(custodial_address=made.custodial_address)
    )
    assert by_address.farmer.farmer_id == farmer.farmer_id
    second = await pool.funded_farmer(pooler.pooler_id)
    listed = await op.ListFarmers(
        pool_pb2.ListFarmersRequest(
            pooler_id=pooler.pooler_id, pagination=common_pb2.Pagination(page_size=1)
        )
    )
    assert [f.farmer_id for f in listed.farmers] == [farmer.farmer_id] and listed.next_page_token
    rest = await op.ListFarmers(
        pool_pb2.ListFarmersRequest(
            pooler_id=pooler.pooler_id,
            pagination=common_pb2.Pagination(page_size=1, page_token=listed.next_page_token),
        )
    )
    assert [f.farmer_id for f in rest.farmers] == [second.farmer_id] and not rest.next_page_token
    pending = await op.ListFarmers(
        pool_pb2.ListFarmersRequest(status=common_pb2.FARMER_STATUS_PENDING_FUNDING)
    )
    assert pending.farmers == []
    assert (
        await op.GetPooler(pool_pb2.GetPoolerRequest(pooler_id=pooler.pooler_id))
    ).pooler.current_farmers == 2

    # Balance and ledger, from the ledger's own entries.
    await pool.credit(farmer.farmer_id, 3 * KALE)
    await pool.credit(farmer.farmer_id, 2 * KALE)
    balance = await op.GetFarmerBalance(
        pool_pb2.GetFarmerBalanceRequest(farmer_id=farmer.farmer_id)
    )
    assert balance.balance_stroops == balance.available_stroops == 5 * KALE
    assert balance.account.exists and balance.account.kale_trustline
    ledger = await op.ListFarmerLedger(
        pool_pb2.ListFarmerLedgerRequest(
            farmer_id=farmer.farmer_id, pagination=common_pb2.Pagination(page_size=1)
        )
    )
    assert [e.amount_stroops for e in ledger.entries] == [2 * KALE]
    assert ledger.entries[0].balance_after_stroops == 5 * KALE
    # An operator's correction is shown as what it is, not as a deposit.
    assert ledger.entries[0].kind == records_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT
    older = await op.ListFarmerLedger(
        pool_pb2.ListFarmerLedgerRequest(
            farmer_id=farmer.farmer_id,
            pagination=common_pb2.Pagination(page_size=1, page_token=ledger.next_page_token),
        )
    )
    assert [e.balance_after_stroops for e in older.entries] == [3 * KALE]


async def test_bad_input_is_refused_and_writes_nothing(pool: PoolStage) -> None:
    op = pool.operator()
    pooler, _ = await pool.register_pooler(max_farmers=1)
    good_key = Keypair.random().public_key
    # The last character changed (never to itself: a random key may already end in "A").
    bad_checksum = good_key[:-1] + ("B" if good_key.endswith("A") else "A")
    before = await pool.counts()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="", public_key=good_key, max_farmers=1)
        ),
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="x" * 65, public_key=good_key, max_farmers=1)
        ),
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="rig", public_key="GABC", max_farmers=1)
        ),
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="rig", public_key=bad_checksum, max_farmers=1)
        ),
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="rig", public_key=good_key, max_farmers=0)
        ),
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="rig", public_key=good_key, max_farmers=10**6)
        ),
        op.GetPooler(pool_pb2.GetPoolerRequest(pooler_id="not-a-uuid")),
        op.UpdatePooler(pool_pb2.UpdatePoolerRequest(pooler_id=pooler.pooler_id, max_farmers=0)),
        op.UpdatePooler(pool_pb2.UpdatePoolerRequest(pooler_id=pooler.pooler_id, name=" ")),
        op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler.pooler_id, payout_address="G123", stake_bps=1
            )
        ),
        op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler.pooler_id, payout_address=good_key, stake_bps=10_001
            )
        ),
        op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(pooler_id="nope", payout_address=good_key, stake_bps=1)
        ),
        op.GetFarmer(pool_pb2.GetFarmerRequest()),
        op.GetFarmer(pool_pb2.GetFarmerRequest(custodial_address="GXYZ")),
        op.ListFarmers(
            pool_pb2.ListFarmersRequest(pagination=common_pb2.Pagination(page_size=501))
        ),
        op.ListFarmers(
            pool_pb2.ListFarmersRequest(pagination=common_pb2.Pagination(page_token="garbage"))
        ),
        op.ListFarmerLedger(pool_pb2.ListFarmerLedgerRequest(farmer_id="")),
    ]
    for call in cases:
        message = await refused(call, invalid)
        assert message and "Traceback" not in message
    unknown = "00000000-0000-4000-8000-000000000000"
    for call in [
        op.GetPooler(pool_pb2.GetPoolerRequest(pooler_id=unknown)),
        op.UpdatePooler(pool_pb2.UpdatePoolerRequest(pooler_id=unknown, name="x")),
        op.RotatePoolerApiKey(pool_pb2.RotatePoolerApiKeyRequest(pooler_id=unknown)),
        op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(pooler_id=unknown, payout_address=good_key)
        ),
        op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=unknown)),
        op.GetFarmer(pool_pb2.GetFarmerRequest(custodial_address=good_key)),
        op.ConfirmFunding(pool_pb2.ConfirmFundingRequest(farmer_id=unknown)),
        op.GetFarmerBalance(pool_pb2.GetFarmerBalanceRequest(farmer_id=unknown)),
        op.ListFarmerLedger(pool_pb2.ListFarmerLedgerRequest(farmer_id=unknown)),
    ]:
        await refused(call, grpc.StatusCode.NOT_FOUND)
    assert await pool.counts() == before

    # The public key is unique.
    await refused(
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(name="dup", public_key=pooler.public_key, max_farmers=1)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # A full pooler takes nobody else (and no wallet is made for the refused farmer).
    await pool.funded_farmer(pooler.pooler_id)
    full = await pool.counts()
    message = await refused(
        op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(pooler_id=pooler.pooler_id, payout_address=good_key)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "full" in message
    # A disabled pooler takes nobody.
    await op.UpdatePooler(
        pool_pb2.UpdatePoolerRequest(
            pooler_id=pooler.pooler_id, max_farmers=2, status=common_pb2.POOLER_STATUS_DISABLED
        )
    )
    message = await refused(
        op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(pooler_id=pooler.pooler_id, payout_address=good_key)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "disabled" in message
    assert await pool.counts() == full


async def test_capacity_cannot_drop_below_current_farmers(pool: PoolStage) -> None:
    op = pool.operator()
    pooler, _ = await pool.register_pooler(max_farmers=2)
    for _ in range(2):
        await op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler.pooler_id, payout_address=Keypair.random().public_key
            )
        )
    message = await refused(
        op.UpdatePooler(pool_pb2.UpdatePoolerRequest(pooler_id=pooler.pooler_id, max_farmers=1)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "below" in message
    got = await op.GetPooler(pool_pb2.GetPoolerRequest(pooler_id=pooler.pooler_id))
    assert got.pooler.max_farmers == 2


async def test_only_operators_call_pool_service(pool: PoolStage) -> None:
    for name in ("rig-1", "pool-client"):
        stub = pool.operator(name)
        message = await refused(
            stub.ListPoolers(pool_pb2.ListPoolersRequest()), grpc.StatusCode.PERMISSION_DENIED
        )
        assert name in message
