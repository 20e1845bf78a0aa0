-- Payouts: a farmer's KALE sent from its custodial account to its payout address.
--
-- The pool records the payout and debits the ledger in one transaction *before* it
-- asks the wallet service to sign anything, so no KALE can leave without its debit
-- and two payouts can never spend the same balance. The wallet signs under the key
-- 'payout:<payout id>' (its transactions row follows); a payout that failed or
-- expired is reversed by a 'payout_reversal' entry referencing the payout. Before
-- 0007 a payout entry could only reference the wallet's transaction (written after
-- signing); it still may, for entries written that way.

CREATE TYPE payout_status AS ENUM ('pending', 'success', 'failed');

CREATE TABLE payouts (
    id uuid PRIMARY KEY,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    -- the farmer's payout address when requested (never anywhere else)
    destination text NOT NULL,
    amount bigint NOT NULL,
    -- the caller's key, when it gave one: the same key is the same payout
    request_key text,
    -- what the wallet signs under
    wallet_key text NOT NULL,
    status payout_status NOT NULL DEFAULT 'pending',
    tx_hash text,
    ledger bigint,
    error_code text,
    error_message text,
    fault fault_party,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payouts_amount_positive CHECK (amount > 0),
    CONSTRAINT payouts_wallet_key_key UNIQUE (wallet_key),
    CONSTRAINT payouts_request_key_key UNIQUE (farmer_id, request_key),
    CONSTRAINT payouts_request_key_length CHECK (length(request_key) BETWEEN 1 AND 200),
    CONSTRAINT payouts_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT payouts_outcome CHECK (
        (status = 'pending' AND completed_at IS NULL)
        OR (status = 'success' AND tx_hash IS NOT NULL AND ledger IS NOT NULL
            AND completed_at IS NOT NULL AND error_message IS NULL)
        OR (status = 'failed' AND error_message IS NOT NULL AND completed_at IS NOT NULL))
);

CREATE INDEX payouts_farmer ON payouts (farmer_id, requested_at);
CREATE INDEX payouts_pending ON payouts (requested_at) WHERE status = 'pending';

-- What was asked never changes; a settled payout never changes again.
CREATE TRIGGER payouts_immutable BEFORE UPDATE ON payouts
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns(
        'id', 'farmer_id', 'destination', 'amount', 'request_key', 'wallet_key', 'requested_at');
CREATE TRIGGER payouts_updated_at BEFORE UPDATE ON payouts
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER payouts_no_delete BEFORE DELETE ON payouts
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER payouts_no_truncate BEFORE TRUNCATE ON payouts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

CREATE FUNCTION payouts_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending'
       AND ROW(NEW.status, NEW.tx_hash, NEW.ledger, NEW.error_code, NEW.error_message, NEW.fault)
           IS DISTINCT FROM
           ROW(OLD.status, OLD.tx_hash, OLD.ledger, OLD.error_code, OLD.error_message, OLD.fault) THEN
        RAISE EXCEPTION 'payout % is settled (%); its outcome cannot change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payouts_status_transition';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER payouts_status_transition BEFORE UPDATE ON payouts
    FOR EACH ROW EXECUTE FUNCTION payouts_check_transition();

-- The ledger may reference a payout ------------------------------------------------

ALTER TABLE balance_ledger ADD COLUMN payout_id uuid REFERENCES payouts (id);

ALTER TABLE balance_ledger DROP CONSTRAINT balance_ledger_kind_shape;
ALTER TABLE balance_ledger ADD CONSTRAINT balance_ledger_kind_shape CHECK (CASE kind
    WHEN 'harvest' THEN amount > 0 AND harvest_id IS NOT NULL
        AND num_nonnulls(planting_id, transaction_id, compensation_id, payout_id) = 0
    WHEN 'stake' THEN amount < 0 AND planting_id IS NOT NULL
        AND num_nonnulls(harvest_id, transaction_id, compensation_id, payout_id) = 0
    WHEN 'payout' THEN amount < 0 AND num_nonnulls(transaction_id, payout_id) = 1
        AND num_nonnulls(harvest_id, planting_id, compensation_id) = 0
    WHEN 'payout_reversal' THEN amount > 0 AND num_nonnulls(transaction_id, payout_id) = 1
        AND num_nonnulls(harvest_id, planting_id, compensation_id) = 0
    WHEN 'fee' THEN amount < 0
        AND num_nonnulls(harvest_id, planting_id, compensation_id, payout_id) = 0
    WHEN 'compensation' THEN amount > 0 AND compensation_id IS NOT NULL
        AND num_nonnulls(harvest_id, planting_id, transaction_id, payout_id) = 0
    WHEN 'adjustment' THEN note IS NOT NULL AND length(btrim(note)) > 0
        AND num_nonnulls(harvest_id, planting_id, transaction_id, compensation_id, payout_id) = 0
END);

-- One debit and at most one reversal per payout.
CREATE UNIQUE INDEX balance_ledger_once_per_payout ON balance_ledger (payout_id, kind);

-- A payout entry must match its payout; a reversal needs a failed, debited payout.
-- (balance_ledger_verify, which runs first, holds the farmer's lock and refuses an
-- overdraft.)
CREATE FUNCTION balance_ledger_verify_payout() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ref_farmer uuid;
    ref_amount bigint;
    ref_status payout_status;
BEGIN
    IF NEW.payout_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT farmer_id, amount, status INTO ref_farmer, ref_amount, ref_status
        FROM payouts WHERE id = NEW.payout_id;
    IF NOT FOUND OR ref_farmer <> NEW.farmer_id OR abs(NEW.amount) <> ref_amount THEN
        RAISE EXCEPTION 'a % entry must match the amount of a payout of the same farmer', NEW.kind
            USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
    END IF;
    IF NEW.kind = 'payout' AND ref_status = 'failed' THEN
        RAISE EXCEPTION 'payout % failed; it cannot be debited', NEW.payout_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
    END IF;
    IF NEW.kind = 'payout_reversal' THEN
        IF ref_status <> 'failed' THEN
            RAISE EXCEPTION 'payout % is %; only a failed payout is reversed', NEW.payout_id, ref_status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM balance_ledger
                       WHERE payout_id = NEW.payout_id AND kind = 'payout') THEN
            RAISE EXCEPTION 'payout % was never debited; there is nothing to reverse', NEW.payout_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER balance_ledger_verify_payout BEFORE INSERT ON balance_ledger
    FOR EACH ROW EXECUTE FUNCTION balance_ledger_verify_payout();
