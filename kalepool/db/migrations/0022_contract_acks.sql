-- The contract watch: which code of the farm contract an operator has reviewed.
--
-- pool.contract_acks  one row per acknowledgement of the farm's code, append-only:
--                     wasm_hash        the SHA-256 of the contract's Wasm (64 lowercase hex
--                                      digits) as the farm's instance entry names it
--                     source           'first_seen': the pool's first read of the farm
--                                      (nothing to compare with yet, so the code the pool
--                                      started on is taken as reviewed); 'operator':
--                                      PoolService.AcknowledgeContract
--                     acknowledged_by  who: the operator certificate's common name, or
--                                      'pool' for the first sighting
--                     acknowledged_at  when
--
-- The newest row is the acknowledged code. Before any plant goes out the pool compares
-- the farm's current code with it (pool_service/contract_watch.py): another hash holds
-- every new plant until an operator acknowledges the new code.
--
-- At most one 'first_seen' row ever: replicas starting together on an empty table both
-- try, one wins (the partial unique index), and a sighting after any acknowledgement is
-- never taken (the pool inserts it only while the table is empty).

CREATE TABLE pool.contract_acks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wasm_hash       text NOT NULL CHECK (wasm_hash ~ '^[0-9a-f]{64}$'),
    source          text NOT NULL CHECK (source IN ('first_seen', 'operator')),
    acknowledged_by text NOT NULL CHECK (length(acknowledged_by) BETWEEN 1 AND 200),
    acknowledged_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX contract_acks_one_first_seen ON pool.contract_acks ((true))
    WHERE source = 'first_seen';

CREATE TRIGGER contract_acks_append_only BEFORE UPDATE OR DELETE ON pool.contract_acks
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();
CREATE TRIGGER contract_acks_no_truncate BEFORE TRUNCATE ON pool.contract_acks
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

-- The pool reads and appends; the auditor's SELECT ON ALL TABLES IN SCHEMA pool covers
-- the new table when grant_roles() runs again below.
INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool', 'GRANT SELECT, INSERT ON pool.contract_acks TO kalepool_pool', '0022');

SELECT shared.grant_roles();
