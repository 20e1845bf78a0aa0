-- Chain transactions: a state table written *before* anything is sent, so that
-- after a crash every transaction is reconciled by its hash (resubmit the same
-- envelope or record its outcome), never blindly rebuilt. Each status change is
-- also recorded, by trigger, in the append-only transaction_events.

CREATE TYPE transaction_kind AS ENUM ('plant', 'work', 'harvest', 'payout', 'trustline', 'merge');
CREATE TYPE transaction_status AS ENUM ('prepared', 'submitted', 'pending', 'success', 'failed', 'expired');

CREATE TABLE transactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- the caller's key for "this one operation" (e.g. plant:<farmer>:<block>),
    -- so a retried request finds the transaction it already prepared
    idempotency_key text NOT NULL,
    kind transaction_kind NOT NULL,
    farmer_id uuid REFERENCES farmers (id),
    block_index bigint,
    source_account text NOT NULL,
    sequence_number bigint NOT NULL,
    -- time bounds exactly as in the envelope (unix seconds); max_time is required
    min_time bigint NOT NULL DEFAULT 0,
    max_time bigint NOT NULL,
    -- KALE moved, in stroops (payouts)
    amount bigint,
    envelope_xdr text NOT NULL,
    tx_hash text NOT NULL,
    status transaction_status NOT NULL DEFAULT 'prepared',
    result_xdr text,
    ledger bigint,
    error_code text,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT transactions_tx_hash_key UNIQUE (tx_hash),
    CONSTRAINT transactions_idempotency_key_length CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT transactions_source_account_format
        CHECK (source_account ~ '^G[A-Z2-7]{55}$' OR source_account ~ '^M[A-Z2-7]{68}$'),
    CONSTRAINT transactions_sequence_positive CHECK (sequence_number > 0),
    CONSTRAINT transactions_time_bounds CHECK (min_time >= 0 AND max_time > 0 AND min_time <= max_time),
    CONSTRAINT transactions_block_index_range CHECK (block_index BETWEEN 0 AND 4294967295),
    CONSTRAINT transactions_amount_positive CHECK (amount > 0),
    CONSTRAINT transactions_envelope_base64 CHECK (envelope_xdr ~ '^[A-Za-z0-9+/]+={0,2}$'),
    CONSTRAINT transactions_tx_hash_format CHECK (tx_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT transactions_ledger_positive CHECK (ledger > 0),
    CONSTRAINT transactions_farm_call_shape
        CHECK (kind NOT IN ('plant', 'harvest') OR (farmer_id IS NOT NULL AND block_index IS NOT NULL)),
    CONSTRAINT transactions_payout_shape
        CHECK (kind <> 'payout' OR (farmer_id IS NOT NULL AND amount IS NOT NULL)),
    CONSTRAINT transactions_success_has_ledger CHECK (status <> 'success' OR ledger IS NOT NULL)
);

-- One live envelope per (source account, sequence number): a second one could
-- be applied as well as the first. Expired envelopes never consumed their
-- sequence number, and failed ones may not have, so they leave the index.
CREATE UNIQUE INDEX transactions_source_sequence_live ON transactions (source_account, sequence_number)
    WHERE status IN ('prepared', 'submitted', 'pending', 'success');
-- reconciliation after a restart: everything not yet settled
CREATE INDEX transactions_unsettled ON transactions (status, created_at)
    WHERE status IN ('prepared', 'submitted', 'pending');
CREATE INDEX transactions_farmer ON transactions (farmer_id, created_at);
CREATE INDEX transactions_kind_block ON transactions (kind, block_index) WHERE block_index IS NOT NULL;

-- What was signed never changes; only the outcome columns do.
CREATE TRIGGER transactions_immutable BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION guard_immutable_columns(
        'id', 'idempotency_key', 'kind', 'farmer_id', 'block_index', 'source_account',
        'sequence_number', 'min_time', 'max_time', 'amount', 'envelope_xdr', 'tx_hash', 'created_at');
CREATE TRIGGER transactions_updated_at BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
-- Rows are history too: a transaction is settled, never removed.
CREATE TRIGGER transactions_no_delete BEFORE DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

-- success, failed and expired are final; nothing goes back to prepared. Any
-- unsettled state may settle directly: after a crash, a transaction recorded
-- only as prepared may turn out to be on the chain already.
CREATE FUNCTION transactions_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('success', 'failed', 'expired') THEN
        IF ROW(NEW.status, NEW.result_xdr, NEW.ledger, NEW.error_code, NEW.error_message)
           IS DISTINCT FROM ROW(OLD.status, OLD.result_xdr, OLD.ledger, OLD.error_code, OLD.error_message) THEN
            RAISE EXCEPTION 'transaction % is settled (%); its outcome cannot change', OLD.id, OLD.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'transactions_status_transition';
        END IF;
    ELSIF NEW.status = 'prepared' AND OLD.status <> 'prepared' THEN
        RAISE EXCEPTION 'transaction % was already sent (%); it cannot go back to prepared', OLD.id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transactions_status_transition';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER transactions_status_transition BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_check_transition();

CREATE TABLE transaction_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid NOT NULL REFERENCES transactions (id),
    from_status transaction_status,
    to_status transaction_status NOT NULL,
    ledger bigint,
    error_code text,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX transaction_events_transaction ON transaction_events (transaction_id, id);

CREATE TRIGGER transaction_events_append_only BEFORE UPDATE OR DELETE ON transaction_events
    FOR EACH ROW EXECUTE FUNCTION refuse_mutation();
CREATE TRIGGER transaction_events_no_truncate BEFORE TRUNCATE ON transaction_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_mutation();

-- Every insert and status change leaves an event, whoever wrote it.
CREATE FUNCTION transactions_record_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO transaction_events (transaction_id, from_status, to_status, ledger, error_code, error_message)
        VALUES (NEW.id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
                NEW.ledger, NEW.error_code, NEW.error_message);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER transactions_events AFTER INSERT OR UPDATE OF status ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_record_event();
