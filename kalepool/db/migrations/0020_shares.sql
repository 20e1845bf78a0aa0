-- Shares: the pool's fee and the pooler's share of each harvested reward leave the
-- farmer's custodial account on chain, into custodial wallets the wallet service holds.
--
-- wallet.custodial_wallets.purpose   what a wallet is for: a farmer's ('farmer', every
--                                    wallet made before), the pool's fee wallet
--                                    ('pool_fee', one; it pays the operator's address) or
--                                    a pooler's share wallet ('pooler_share', one per
--                                    pooler; it pays the pooler's registered key). Set
--                                    when the wallet is made, never changed.
-- wallet.transactions.sweep_of       for a sweep (a payment of a fee or share from a
--                                    farmer's account into a fee / share wallet), the
--                                    harvest transaction it takes its part of. The wallet
--                                    signs one only under the key 'fee:<harvest hash>' or
--                                    'share:<harvest hash>' (once per harvest and part,
--                                    by the unique key), for a harvest it settled itself
--                                    for that source, and for at most the reward times
--                                    its own basis points. A sweep is not a payout: the
--                                    per-wallet payout limits do not count it.

CREATE TYPE wallet.wallet_purpose AS ENUM ('farmer', 'pool_fee', 'pooler_share');

ALTER TABLE wallet.custodial_wallets
    ADD COLUMN purpose wallet.wallet_purpose NOT NULL DEFAULT 'farmer';

-- One fee wallet: every fee goes to the same place.
CREATE UNIQUE INDEX custodial_wallets_one_fee_wallet ON wallet.custodial_wallets (purpose)
    WHERE purpose = 'pool_fee';

DROP TRIGGER custodial_wallets_immutable ON wallet.custodial_wallets;
CREATE TRIGGER custodial_wallets_immutable BEFORE UPDATE ON wallet.custodial_wallets
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'owner_id', 'public_key', 'created_at', 'purpose');

ALTER TABLE wallet.transactions
    ADD COLUMN sweep_of uuid REFERENCES wallet.transactions (id),
    ADD CONSTRAINT transactions_sweep_is_payment CHECK (sweep_of IS NULL OR kind = 'payout'),
    ADD CONSTRAINT transactions_sweep_key CHECK (
        sweep_of IS NULL OR idempotency_key ~ '^(fee|share):[0-9a-f]{64}$');
CREATE INDEX transactions_sweeps ON wallet.transactions (sweep_of) WHERE sweep_of IS NOT NULL;

-- A sweep's refusals are recorded like a payout's.
ALTER TABLE wallet.payout_refusals DROP CONSTRAINT payout_refusals_action_check;
ALTER TABLE wallet.payout_refusals ADD CONSTRAINT payout_refusals_action_check
    CHECK (action IN ('transfer', 'close', 'change_payout_address', 'create_wallet', 'sweep'));
ALTER TABLE wallet.payout_refusals DROP CONSTRAINT payout_refusals_reason_check;
ALTER TABLE wallet.payout_refusals ADD CONSTRAINT payout_refusals_reason_check CHECK (reason IN (
    'foreign_destination', 'no_payout_address', 'daily_amount', 'hourly_transfers',
    'challenge_unknown', 'challenge_wrong_wallet', 'challenge_expired', 'challenge_used',
    'challenge_address_mismatch', 'bad_signature',
    'fee_address', 'sweep_destination', 'sweep_harvest', 'sweep_amount'));

INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_auditor',
     'GRANT SELECT (purpose) ON wallet.custodial_wallets TO kalepool_auditor', '0020');
SELECT shared.grant_roles();
