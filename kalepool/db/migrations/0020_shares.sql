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
--
-- pool.accounts          the pool's ledger accounts besides farmers': the fee account
--                        (one) and a share account per pooler, each with its custodial
--                        wallet (the id is the wallet's owner id) and a balance derived
--                        from its entries.
-- pool.account_ledger    their append-only entries: 'pool_fee' / 'pooler_share' (+ the
--                        amount of a sweep, once it settled as a success), 'payout' /
--                        'payout_reversal' (an account payout's debit and its reversal).
-- pool.account_payouts   an account's payouts to its payout address (a pooler's share
--                        paid to its registered key), as a farmer's payouts.
-- pool.compensation_payments  a compensation paid from the account of whoever owes it
--                        into the farmer's custodial account; the farmer's 'compensation'
--                        entry is written when it settles, so is_paid follows the ledger.
-- pool.shares_since()    when shares began: harvests recorded since owe them.
-- pool.sweeps            the pool fee and the pooler's share of one harvest: its row and
--                        the farmer's debit ('pool_fee' / 'pooler_share' entries of
--                        balance_ledger) are written in one transaction before the wallet
--                        is asked (as a payout's), so the farmer cannot pay the part out
--                        meanwhile; a sweep that failed gets its 'sweep_reversal' with its
--                        status, a successful one its account's credit with its status.
--                        One per harvest and part.
-- New ledger_kind values cannot be used in the transaction that adds them, so the
-- constraints and functions below compare kind::text.

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

-- The pool's side ---------------------------------------------------------------------

CREATE TYPE pool.account_kind AS ENUM ('pool_fee', 'pooler_share');

CREATE TABLE pool.accounts (
    -- the custodial wallet's owner id: fixed for the fee account, the pooler's id for its
    -- share account
    id uuid PRIMARY KEY,
    kind pool.account_kind NOT NULL,
    pooler_id uuid UNIQUE REFERENCES pool.poolers (id),
    custodial_public_key text NOT NULL UNIQUE,
    payout_address text NOT NULL,
    -- derived from account_ledger by trigger
    current_balance bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_owner CHECK ((kind = 'pool_fee') = (pooler_id IS NULL)
        AND (pooler_id IS NULL OR pooler_id = id)),
    CONSTRAINT accounts_public_key_format CHECK (custodial_public_key ~ '^G[A-Z2-7]{55}$'),
    CONSTRAINT accounts_balance_nonnegative CHECK (current_balance >= 0)
);
CREATE UNIQUE INDEX accounts_one_fee_account ON pool.accounts (kind) WHERE kind = 'pool_fee';
CREATE TRIGGER accounts_immutable BEFORE UPDATE ON pool.accounts
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'kind', 'pooler_id', 'custodial_public_key', 'payout_address', 'created_at');
CREATE TRIGGER accounts_derived BEFORE INSERT OR UPDATE ON pool.accounts
    FOR EACH ROW EXECUTE FUNCTION shared.guard_derived_columns('current_balance');
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON pool.accounts
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON pool.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

CREATE TYPE pool.sweep_part AS ENUM ('fee', 'share');

CREATE TABLE pool.sweeps (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    harvest_id bigint NOT NULL REFERENCES pool.harvests (id),
    part pool.sweep_part NOT NULL,
    farmer_id uuid NOT NULL REFERENCES pool.farmers (id),
    account_id uuid NOT NULL REFERENCES pool.accounts (id),
    amount bigint NOT NULL,
    -- what the wallet signs under: 'fee:<harvest hash>' / 'share:<harvest hash>'
    wallet_key text NOT NULL UNIQUE,
    status pool.payout_status NOT NULL DEFAULT 'pending',
    tx_hash text,
    ledger bigint,
    error_code text,
    error_message text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sweeps_once_per_part UNIQUE (harvest_id, part),
    CONSTRAINT sweeps_amount_positive CHECK (amount > 0),
    CONSTRAINT sweeps_wallet_key_format CHECK (wallet_key ~ '^(fee|share):[0-9a-f]{64}$'),
    CONSTRAINT sweeps_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT sweeps_outcome CHECK (
        (status = 'pending' AND completed_at IS NULL)
        OR (status = 'success' AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND completed_at IS NOT NULL AND error_message IS NULL)
        OR (status = 'failed' AND error_message IS NOT NULL AND completed_at IS NOT NULL))
);
CREATE INDEX sweeps_pending ON pool.sweeps (requested_at) WHERE status = 'pending';
-- The shares loop reads the recent successful harvests each pass.
CREATE INDEX harvests_recent_success ON pool.harvests (created_at) WHERE status = 'success';
CREATE INDEX sweeps_account ON pool.sweeps (account_id, status);
CREATE TRIGGER sweeps_immutable BEFORE UPDATE ON pool.sweeps
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'harvest_id', 'part', 'farmer_id', 'account_id', 'amount', 'wallet_key',
        'requested_at');
CREATE TRIGGER sweeps_updated_at BEFORE UPDATE ON pool.sweeps
    FOR EACH ROW EXECUTE FUNCTION shared.touch_updated_at();
CREATE TRIGGER sweeps_no_delete BEFORE DELETE ON pool.sweeps
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER sweeps_no_truncate BEFORE TRUNCATE ON pool.sweeps
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

-- A settled sweep never changes again.
CREATE FUNCTION pool.sweeps_check_transition() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    IF OLD.status <> 'pending'
       AND ROW(NEW.status, NEW.tx_hash, NEW.ledger, NEW.error_code, NEW.error_message)
           IS DISTINCT FROM
           ROW(OLD.status, OLD.tx_hash, OLD.ledger, OLD.error_code, OLD.error_message) THEN
        RAISE EXCEPTION 'sweep % is settled (%); its outcome cannot change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sweeps_status_transition';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER sweeps_status_transition BEFORE UPDATE ON pool.sweeps
    FOR EACH ROW EXECUTE FUNCTION pool.sweeps_check_transition();

-- The farmer's side: its debit and, for a failed sweep, the reversal ------------------

ALTER TYPE pool.ledger_kind ADD VALUE IF NOT EXISTS 'pool_fee';
ALTER TYPE pool.ledger_kind ADD VALUE IF NOT EXISTS 'pooler_share';
ALTER TYPE pool.ledger_kind ADD VALUE IF NOT EXISTS 'sweep_reversal';

ALTER TABLE pool.balance_ledger ADD COLUMN sweep_id uuid REFERENCES pool.sweeps (id);
ALTER TABLE pool.balance_ledger ADD CONSTRAINT balance_ledger_sweep_shape CHECK (
    (kind::text IN ('pool_fee', 'pooler_share', 'sweep_reversal')) = (sweep_id IS NOT NULL)
    AND (sweep_id IS NULL
         OR (num_nonnulls(harvest_id, planting_id, transaction_id, compensation_id, payout_id,
                          deposit_id) = 0
             AND CASE WHEN kind::text = 'sweep_reversal' THEN amount > 0 ELSE amount < 0 END)));
CREATE UNIQUE INDEX balance_ledger_once_per_sweep ON pool.balance_ledger (sweep_id, kind);

-- A sweep entry matches its sweep: the same farmer and amount, the kind of its part; a
-- debit may not overdraw the balance (balance_ledger_verify, which runs first, holds the
-- farmer's lock); a reversal needs a failed, debited sweep.
CREATE FUNCTION pool.balance_ledger_verify_sweep() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
DECLARE
    s record;
    balance bigint;
BEGIN
    IF NEW.sweep_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT farmer_id, amount, part::text AS part, status::text AS status INTO s
        FROM sweeps WHERE id = NEW.sweep_id;
    IF NOT FOUND OR s.farmer_id <> NEW.farmer_id OR abs(NEW.amount) <> s.amount
       OR (NEW.kind::text = 'pool_fee' AND s.part <> 'fee')
       OR (NEW.kind::text = 'pooler_share' AND s.part <> 'share') THEN
        RAISE EXCEPTION 'a % entry must match the farmer, amount and part of its sweep', NEW.kind
            USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
    END IF;
    IF NEW.kind::text = 'sweep_reversal' THEN
        IF s.status <> 'failed' OR NOT EXISTS (
                SELECT 1 FROM balance_ledger WHERE sweep_id = NEW.sweep_id
                AND kind::text IN ('pool_fee', 'pooler_share')) THEN
            RAISE EXCEPTION 'sweep % is % or was never debited; only a failed, debited sweep is reversed',
                NEW.sweep_id, s.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    ELSE
        SELECT current_balance INTO balance FROM farmers WHERE id = NEW.farmer_id;
        IF s.status = 'failed' THEN
            RAISE EXCEPTION 'sweep % failed; it cannot be debited', NEW.sweep_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
        IF balance + NEW.amount < 0 THEN
            RAISE EXCEPTION 'farmer % has % stroops; a % of % would overdraw it',
                NEW.farmer_id, balance, NEW.kind, -NEW.amount
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_no_overdraft';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER balance_ledger_verify_sweep BEFORE INSERT ON pool.balance_ledger
    FOR EACH ROW EXECUTE FUNCTION pool.balance_ledger_verify_sweep();

-- The accounts' side ------------------------------------------------------------------

CREATE TYPE pool.account_entry_kind AS ENUM (
    'pool_fee', 'pooler_share', 'payout', 'payout_reversal', 'compensation',
    'compensation_reversal');

-- An account's payouts (a pooler's share paid to its registered key): as a farmer's, the
-- row and its debit are written in one transaction before the wallet is asked under
-- 'account-payout:<id>'; a failed one is reversed.
CREATE TABLE pool.account_payouts (
    id uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES pool.accounts (id),
    -- the account's payout address when requested
    destination text NOT NULL,
    amount bigint NOT NULL,
    request_key text,
    wallet_key text NOT NULL UNIQUE,
    status pool.payout_status NOT NULL DEFAULT 'pending',
    tx_hash text,
    ledger bigint,
    error_code text,
    error_message text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT account_payouts_amount_positive CHECK (amount > 0),
    CONSTRAINT account_payouts_request_key_key UNIQUE (account_id, request_key),
    CONSTRAINT account_payouts_request_key_length CHECK (length(request_key) BETWEEN 1 AND 200),
    CONSTRAINT account_payouts_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT account_payouts_outcome CHECK (
        (status = 'pending' AND completed_at IS NULL)
        OR (status = 'success' AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND completed_at IS NOT NULL AND error_message IS NULL)
        OR (status = 'failed' AND error_message IS NOT NULL AND completed_at IS NOT NULL))
);
CREATE INDEX account_payouts_pending ON pool.account_payouts (requested_at)
    WHERE status = 'pending';
CREATE TRIGGER account_payouts_immutable BEFORE UPDATE ON pool.account_payouts
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'account_id', 'destination', 'amount', 'request_key', 'wallet_key',
        'requested_at');
CREATE TRIGGER account_payouts_updated_at BEFORE UPDATE ON pool.account_payouts
    FOR EACH ROW EXECUTE FUNCTION shared.touch_updated_at();
CREATE TRIGGER account_payouts_no_delete BEFORE DELETE ON pool.account_payouts
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER account_payouts_no_truncate BEFORE TRUNCATE ON pool.account_payouts
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER account_payouts_status_transition BEFORE UPDATE ON pool.account_payouts
    FOR EACH ROW EXECUTE FUNCTION pool.sweeps_check_transition();

-- A compensation paid from the account of whoever owes it (the fee account for the
-- pool's faults, the pooler's share account for its own) into the farmer's custodial
-- account: the row and the account's debit first, then the wallet's transfer under
-- 'compensation:<id>'; a success credits the farmer ('compensation' entry of
-- balance_ledger, so compensation_status.is_paid follows), a failure reverses the debit
-- and a later pass may try again. At most one live (not failed) payment per compensation.
CREATE TABLE pool.compensation_payments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    compensation_id bigint NOT NULL REFERENCES pool.pooler_compensations (id),
    account_id uuid NOT NULL REFERENCES pool.accounts (id),
    farmer_id uuid NOT NULL REFERENCES pool.farmers (id),
    amount bigint NOT NULL,
    wallet_key text NOT NULL UNIQUE,
    status pool.payout_status NOT NULL DEFAULT 'pending',
    tx_hash text,
    ledger bigint,
    error_code text,
    error_message text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT compensation_payments_amount_positive CHECK (amount > 0),
    CONSTRAINT compensation_payments_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT compensation_payments_outcome CHECK (
        (status = 'pending' AND completed_at IS NULL)
        OR (status = 'success' AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND completed_at IS NOT NULL AND error_message IS NULL)
        OR (status = 'failed' AND error_message IS NOT NULL AND completed_at IS NOT NULL))
);
CREATE UNIQUE INDEX compensation_payments_live ON pool.compensation_payments (compensation_id)
    WHERE status <> 'failed';
CREATE INDEX compensation_payments_pending ON pool.compensation_payments (requested_at)
    WHERE status = 'pending';
CREATE TRIGGER compensation_payments_immutable BEFORE UPDATE ON pool.compensation_payments
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'compensation_id', 'account_id', 'farmer_id', 'amount', 'wallet_key',
        'requested_at');
CREATE TRIGGER compensation_payments_updated_at BEFORE UPDATE ON pool.compensation_payments
    FOR EACH ROW EXECUTE FUNCTION shared.touch_updated_at();
CREATE TRIGGER compensation_payments_no_delete BEFORE DELETE ON pool.compensation_payments
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER compensation_payments_no_truncate BEFORE TRUNCATE ON pool.compensation_payments
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER compensation_payments_status_transition BEFORE UPDATE ON pool.compensation_payments
    FOR EACH ROW EXECUTE FUNCTION pool.sweeps_check_transition();

CREATE TABLE pool.account_ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES pool.accounts (id),
    amount bigint NOT NULL,
    kind pool.account_entry_kind NOT NULL,
    sweep_id uuid REFERENCES pool.sweeps (id),
    account_payout_id uuid REFERENCES pool.account_payouts (id),
    compensation_payment_id uuid REFERENCES pool.compensation_payments (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT account_ledger_one_reference CHECK (
        num_nonnulls(sweep_id, account_payout_id, compensation_payment_id) = 1),
    CONSTRAINT account_ledger_kind_shape CHECK (CASE kind
        WHEN 'pool_fee' THEN amount > 0 AND sweep_id IS NOT NULL
        WHEN 'pooler_share' THEN amount > 0 AND sweep_id IS NOT NULL
        WHEN 'payout' THEN amount < 0 AND account_payout_id IS NOT NULL
        WHEN 'payout_reversal' THEN amount > 0 AND account_payout_id IS NOT NULL
        WHEN 'compensation' THEN amount < 0 AND compensation_payment_id IS NOT NULL
        WHEN 'compensation_reversal' THEN amount > 0 AND compensation_payment_id IS NOT NULL
    END)
);
CREATE UNIQUE INDEX account_ledger_once_per_sweep ON pool.account_ledger (sweep_id);
CREATE UNIQUE INDEX account_ledger_once_per_payout ON pool.account_ledger (account_payout_id, kind);
CREATE UNIQUE INDEX account_ledger_once_per_compensation_payment
    ON pool.account_ledger (compensation_payment_id, kind);
CREATE INDEX account_ledger_account ON pool.account_ledger (account_id, id);
CREATE TRIGGER account_ledger_append_only BEFORE UPDATE OR DELETE ON pool.account_ledger
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER account_ledger_no_truncate BEFORE TRUNCATE ON pool.account_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

-- A credit is exactly a successful sweep into this account, of its part; a payout entry
-- matches its payout (a debit not failed, a reversal only of a failed, debited one). The
-- balance may not go below zero (accounts_balance_nonnegative).
CREATE FUNCTION pool.account_ledger_verify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
DECLARE
    s record;
BEGIN
    PERFORM 1 FROM accounts WHERE id = NEW.account_id FOR UPDATE;
    IF NEW.compensation_payment_id IS NOT NULL THEN
        SELECT account_id, amount, status::text AS status INTO s
            FROM compensation_payments WHERE id = NEW.compensation_payment_id;
        IF NOT FOUND OR s.account_id <> NEW.account_id OR s.amount <> abs(NEW.amount)
           OR (NEW.kind = 'compensation' AND s.status = 'failed')
           OR (NEW.kind = 'compensation_reversal' AND (s.status <> 'failed' OR NOT EXISTS (
                SELECT 1 FROM account_ledger
                WHERE compensation_payment_id = NEW.compensation_payment_id
                AND kind = 'compensation'))) THEN
            RAISE EXCEPTION 'a % entry must match its compensation payment from the same account (a reversal only of a failed, debited one)', NEW.kind
                USING ERRCODE = 'check_violation', CONSTRAINT = 'account_ledger_reference';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.account_payout_id IS NOT NULL THEN
        SELECT account_id, amount, status::text AS status INTO s
            FROM account_payouts WHERE id = NEW.account_payout_id;
        IF NOT FOUND OR s.account_id <> NEW.account_id OR s.amount <> abs(NEW.amount)
           OR (NEW.kind = 'payout' AND s.status = 'failed')
           OR (NEW.kind = 'payout_reversal' AND (s.status <> 'failed' OR NOT EXISTS (
                SELECT 1 FROM account_ledger WHERE account_payout_id = NEW.account_payout_id
                AND kind = 'payout'))) THEN
            RAISE EXCEPTION 'a % entry must match its payout of the same account (a reversal only of a failed, debited one)', NEW.kind
                USING ERRCODE = 'check_violation', CONSTRAINT = 'account_ledger_reference';
        END IF;
        RETURN NEW;
    END IF;
    SELECT account_id, amount, part::text AS part, status::text AS status INTO s
        FROM sweeps WHERE id = NEW.sweep_id;
    IF NOT FOUND OR s.account_id <> NEW.account_id OR s.amount <> NEW.amount
       OR s.status <> 'success'
       OR (NEW.kind = 'pool_fee') <> (s.part = 'fee') THEN
        RAISE EXCEPTION 'an account entry must credit exactly a successful sweep into that account, of its part'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'account_ledger_reference';
    END IF;
    RETURN NEW;
END;
$$;
CREATE FUNCTION pool.account_ledger_apply() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    UPDATE accounts SET current_balance = current_balance + NEW.amount WHERE id = NEW.account_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER account_ledger_verify BEFORE INSERT ON pool.account_ledger
    FOR EACH ROW EXECUTE FUNCTION pool.account_ledger_verify();
CREATE TRIGGER account_ledger_apply AFTER INSERT ON pool.account_ledger
    FOR EACH ROW EXECUTE FUNCTION pool.account_ledger_apply();

-- Harvests recorded from this migration on owe shares; one from before owes nothing.
DO $$
BEGIN
    EXECUTE format(
        'CREATE FUNCTION pool.shares_since() RETURNS timestamptz LANGUAGE sql IMMUTABLE AS %L',
        format('SELECT %L::timestamptz', now()));
END;
$$;

-- What `kale-pool check` proves of them: balances are their entries' sum; every sweep
-- debited once, a failed one reversed once, a successful one credited once.
CREATE FUNCTION pool.share_problems() RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pool, shared AS $$
    SELECT format('account %s: current_balance is %s but its entries sum to %s',
                  a.id, a.current_balance, coalesce(e.total, 0))
    FROM accounts a
    LEFT JOIN (SELECT account_id, sum(amount)::bigint AS total FROM account_ledger
               GROUP BY account_id) e ON e.account_id = a.id
    WHERE a.current_balance <> coalesce(e.total, 0)
    UNION ALL
    SELECT format('sweep %s (%s of harvest %s) was never debited to farmer %s',
                  s.id, s.part, s.harvest_id, s.farmer_id)
    FROM sweeps s
    WHERE NOT EXISTS (SELECT 1 FROM balance_ledger l
                      WHERE l.sweep_id = s.id AND l.kind::text IN ('pool_fee', 'pooler_share'))
    UNION ALL
    SELECT format('sweep %s failed but its debit was never reversed', s.id)
    FROM sweeps s
    WHERE s.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM balance_ledger l
                      WHERE l.sweep_id = s.id AND l.kind::text = 'sweep_reversal')
    UNION ALL
    SELECT format('sweep %s succeeded but account %s was never credited', s.id, s.account_id)
    FROM sweeps s
    WHERE s.status = 'success'
      AND NOT EXISTS (SELECT 1 FROM account_ledger l WHERE l.sweep_id = s.id)
    UNION ALL
    SELECT format('account payout %s was never debited', p.id)
    FROM account_payouts p
    WHERE NOT EXISTS (SELECT 1 FROM account_ledger l
                      WHERE l.account_payout_id = p.id AND l.kind = 'payout')
    UNION ALL
    SELECT format('account payout %s failed but its debit was never reversed', p.id)
    FROM account_payouts p
    WHERE p.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM account_ledger l
                      WHERE l.account_payout_id = p.id AND l.kind = 'payout_reversal')
    UNION ALL
    SELECT format('compensation payment %s was never debited to account %s', p.id, p.account_id)
    FROM compensation_payments p
    WHERE NOT EXISTS (SELECT 1 FROM account_ledger l
                      WHERE l.compensation_payment_id = p.id AND l.kind = 'compensation')
    UNION ALL
    SELECT format('compensation payment %s failed but its debit was never reversed', p.id)
    FROM compensation_payments p
    WHERE p.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM account_ledger l
                      WHERE l.compensation_payment_id = p.id
                      AND l.kind = 'compensation_reversal')
    UNION ALL
    SELECT format('compensation payment %s succeeded but compensation %s was never credited',
                  p.id, p.compensation_id)
    FROM compensation_payments p
    WHERE p.status = 'success'
      AND NOT EXISTS (SELECT 1 FROM balance_ledger l WHERE l.compensation_id = p.compensation_id)
$$;

INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_auditor',
     'GRANT SELECT (purpose) ON wallet.custodial_wallets TO kalepool_auditor', '0020'),
    ('kalepool_pool',
     'GRANT SELECT, INSERT ON pool.accounts, pool.account_ledger TO kalepool_pool', '0020'),
    -- the balance, by the ledger's trigger only (guard_derived_columns)
    ('kalepool_pool', 'GRANT UPDATE (current_balance) ON pool.accounts TO kalepool_pool',
     '0020'),
    ('kalepool_pool', 'GRANT SELECT, INSERT ON pool.sweeps TO kalepool_pool', '0020'),
    ('kalepool_pool',
     'GRANT UPDATE (status, tx_hash, ledger, error_code, error_message, completed_at,'
     ' updated_at) ON pool.sweeps TO kalepool_pool', '0020'),
    ('kalepool_pool', 'GRANT SELECT, INSERT ON pool.account_payouts TO kalepool_pool', '0020'),
    ('kalepool_pool', 'GRANT SELECT, INSERT ON pool.compensation_payments TO kalepool_pool',
     '0020'),
    ('kalepool_pool',
     'GRANT UPDATE (status, tx_hash, ledger, error_code, error_message, completed_at,'
     ' updated_at) ON pool.compensation_payments TO kalepool_pool', '0020'),
    ('kalepool_pool',
     'GRANT UPDATE (status, tx_hash, ledger, error_code, error_message, completed_at,'
     ' updated_at) ON pool.account_payouts TO kalepool_pool', '0020'),
    ('kalepool_auditor',
     'GRANT SELECT ON pool.accounts, pool.account_ledger, pool.sweeps, pool.account_payouts,'
     ' pool.compensation_payments TO kalepool_auditor', '0020'),
    ('kalepool_auditor', 'GRANT EXECUTE ON FUNCTION pool.share_problems() TO kalepool_auditor',
     '0020'),
    ('kalepool_pool', 'GRANT EXECUTE ON FUNCTION pool.shares_since() TO kalepool_pool', '0020');
SELECT shared.grant_roles();
