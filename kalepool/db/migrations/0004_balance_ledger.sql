-- The balance ledger: append-only, signed entries (stroops of KALE) from which
-- farmers.current_balance is derived by trigger. current_balance is the KALE
-- the pool accounts for in the farmer's custodial account.
--
-- Chain events enter the ledger by trigger, so no code path can forget them:
--   a successful planting with a stake  -> 'stake'   (-stake_amount)
--   a successful harvest                -> 'harvest' (+reward_amount + stake_amount)
-- Everything else is written by the services and checked here against what it
-- references: 'payout' (-amount of a payout transaction, debited when the
-- transaction is prepared), 'payout_reversal' (+the same amount once that
-- transaction failed or expired), 'fee', 'compensation' (+a pooler_compensations
-- amount) and 'adjustment' (either sign, with a note).

CREATE TYPE ledger_kind AS ENUM (
    'harvest', 'stake', 'payout', 'payout_reversal', 'fee', 'compensation', 'adjustment');

CREATE TABLE balance_ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    farmer_id uuid NOT NULL REFERENCES farmers (id),
    amount bigint NOT NULL,
    kind ledger_kind NOT NULL,
    harvest_id bigint REFERENCES harvests (id),
    planting_id bigint REFERENCES plantings (id),
    transaction_id uuid REFERENCES transactions (id),
    compensation_id bigint REFERENCES pooler_compensations (id),
    note text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT balance_ledger_amount_nonzero CHECK (amount <> 0),
    CONSTRAINT balance_ledger_kind_shape CHECK (CASE kind
        WHEN 'harvest' THEN amount > 0 AND harvest_id IS NOT NULL
            AND num_nonnulls(planting_id, transaction_id, compensation_id) = 0
        WHEN 'stake' THEN amount < 0 AND planting_id IS NOT NULL
            AND num_nonnulls(harvest_id, transaction_id, compensation_id) = 0
        WHEN 'payout' THEN amount < 0 AND transaction_id IS NOT NULL
            AND num_nonnulls(harvest_id, planting_id, compensation_id) = 0
        WHEN 'payout_reversal' THEN amount > 0 AND transaction_id IS NOT NULL
            AND num_nonnulls(harvest_id, planting_id, compensation_id) = 0
        WHEN 'fee' THEN amount < 0
            AND num_nonnulls(harvest_id, planting_id, compensation_id) = 0
        WHEN 'compensation' THEN amount > 0 AND compensation_id IS NOT NULL
            AND num_nonnulls(harvest_id, planting_id, transaction_id) = 0
        WHEN 'adjustment' THEN note IS NOT NULL AND length(btrim(note)) > 0
            AND num_nonnulls(harvest_id, planting_id, transaction_id, compensation_id) = 0
    END)
);

-- Nothing credited or debited twice.
CREATE UNIQUE INDEX balance_ledger_once_per_harvest ON balance_ledger (harvest_id);
CREATE UNIQUE INDEX balance_ledger_once_per_planting ON balance_ledger (planting_id);
CREATE UNIQUE INDEX balance_ledger_once_per_compensation ON balance_ledger (compensation_id);
CREATE UNIQUE INDEX balance_ledger_once_per_transaction ON balance_ledger (transaction_id, kind);
CREATE INDEX balance_ledger_farmer ON balance_ledger (farmer_id, id);

CREATE TRIGGER balance_ledger_append_only BEFORE UPDATE OR DELETE ON balance_ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER balance_ledger_no_truncate BEFORE TRUNCATE ON balance_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

-- An entry must agree with what it references, and money the pool decides to
-- move out (payout, fee, negative adjustment) may not overdraw the balance.
-- Chain-driven debits (stake) are never refused: the chain already burned it.
CREATE FUNCTION balance_ledger_verify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    balance bigint;
    ref_farmer uuid;
    ref_amount bigint;
    ref_ok boolean;
    tx_kind transaction_kind;
    tx_status transaction_status;
BEGIN
    -- Lock the farmer: concurrent entries for one farmer serialise here, so the
    -- overdraft test below reads the latest balance.
    SELECT current_balance INTO balance FROM farmers WHERE id = NEW.farmer_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports the unknown farmer
    END IF;

    -- A missing reference is left to balance_ledger_kind_shape to report.
    IF NEW.kind = 'harvest' AND NEW.harvest_id IS NOT NULL THEN
        SELECT farmer_id, reward_amount + stake_amount, status = 'success'
            INTO ref_farmer, ref_amount, ref_ok FROM harvests WHERE id = NEW.harvest_id;
        IF NOT FOUND OR NOT ref_ok OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
            RAISE EXCEPTION 'a harvest entry must credit exactly reward + stake of a successful harvest of the same farmer'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    ELSIF NEW.kind = 'stake' AND NEW.planting_id IS NOT NULL THEN
        SELECT farmer_id, -stake_amount, status = 'success'
            INTO ref_farmer, ref_amount, ref_ok FROM plantings WHERE id = NEW.planting_id;
        IF NOT FOUND OR NOT ref_ok OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
            RAISE EXCEPTION 'a stake entry must debit exactly the stake of a successful planting of the same farmer'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    ELSIF NEW.kind = 'compensation' AND NEW.compensation_id IS NOT NULL THEN
        SELECT farmer_id, amount INTO ref_farmer, ref_amount
            FROM pooler_compensations WHERE id = NEW.compensation_id;
        IF NOT FOUND OR ref_farmer <> NEW.farmer_id OR ref_amount <> NEW.amount THEN
            RAISE EXCEPTION 'a compensation entry must credit exactly the compensation owed to the same farmer'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
    ELSIF NEW.kind IN ('payout', 'payout_reversal') AND NEW.transaction_id IS NOT NULL THEN
        SELECT farmer_id, amount, kind, status INTO ref_farmer, ref_amount, tx_kind, tx_status
            FROM transactions WHERE id = NEW.transaction_id;
        IF NOT FOUND OR tx_kind <> 'payout' OR ref_farmer <> NEW.farmer_id
           OR abs(NEW.amount) <> ref_amount THEN
            RAISE EXCEPTION 'a % entry must match the amount of a payout transaction of the same farmer', NEW.kind
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
        IF NEW.kind = 'payout' AND tx_status IN ('failed', 'expired') THEN
            RAISE EXCEPTION 'payout transaction % is %; it cannot be debited', NEW.transaction_id, tx_status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
        END IF;
        IF NEW.kind = 'payout_reversal' THEN
            IF tx_status NOT IN ('failed', 'expired') THEN
                RAISE EXCEPTION 'payout transaction % is %; only a failed or expired payout is reversed',
                    NEW.transaction_id, tx_status
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
            END IF;
            IF NOT EXISTS (SELECT 1 FROM balance_ledger
                           WHERE transaction_id = NEW.transaction_id AND kind = 'payout') THEN
                RAISE EXCEPTION 'payout transaction % was never debited; there is nothing to reverse',
                    NEW.transaction_id
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_reference';
            END IF;
        END IF;
    END IF;

    IF NEW.amount < 0 AND NEW.kind IN ('payout', 'fee', 'adjustment') AND balance + NEW.amount < 0 THEN
        RAISE EXCEPTION 'farmer % has % stroops; a % of % would overdraw it',
            NEW.farmer_id, balance, NEW.kind, -NEW.amount
            USING ERRCODE = 'check_violation', CONSTRAINT = 'balance_ledger_no_overdraft';
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION balance_ledger_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE farmers SET current_balance = current_balance + NEW.amount WHERE id = NEW.farmer_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER balance_ledger_verify BEFORE INSERT ON balance_ledger
    FOR EACH ROW EXECUTE FUNCTION balance_ledger_verify();
CREATE TRIGGER balance_ledger_apply AFTER INSERT ON balance_ledger
    FOR EACH ROW EXECUTE FUNCTION balance_ledger_apply();

-- Chain events post themselves -------------------------------------------------

CREATE FUNCTION plantings_post_stake() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'success' AND NEW.stake_amount > 0 THEN
        INSERT INTO balance_ledger (farmer_id, amount, kind, planting_id)
        VALUES (NEW.farmer_id, -NEW.stake_amount, 'stake', NEW.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION harvests_post_credit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'success' AND NEW.reward_amount + NEW.stake_amount > 0 THEN
        INSERT INTO balance_ledger (farmer_id, amount, kind, harvest_id)
        VALUES (NEW.farmer_id, NEW.reward_amount + NEW.stake_amount, 'harvest', NEW.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER plantings_ledger AFTER INSERT ON plantings
    FOR EACH ROW EXECUTE FUNCTION plantings_post_stake();
CREATE TRIGGER harvests_ledger AFTER INSERT ON harvests
    FOR EACH ROW EXECUTE FUNCTION harvests_post_credit();

-- Whether each compensation has been credited.
CREATE VIEW compensation_status AS
SELECT c.*,
       l.id IS NOT NULL AS is_paid,
       l.id AS ledger_entry_id,
       l.created_at AS paid_at
FROM pooler_compensations c
LEFT JOIN balance_ledger l ON l.compensation_id = c.id;
