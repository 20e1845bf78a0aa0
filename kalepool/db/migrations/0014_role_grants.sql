-- The services' grants as rows, so that a migration adds what its new table needs instead
-- of rewriting shared.grant_roles() whole (a rewrite must repeat every earlier grant, and
-- two migrations written side by side would each drop the other's).
--
-- shared.role_grants   one GRANT statement per row, for the role it names; applied in id
--                      order by shared.grant_roles() to each of those roles that exists.
--                      The owner's alone: no service reads or writes it.
--
-- A later migration that needs a grant inserts its row and calls shared.grant_roles();
-- one that takes a grant away deletes the row and runs the REVOKE itself (grant_roles()
-- only ever grants). The rows below are exactly what 0012 granted.

CREATE TABLE shared.role_grants (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    role       name NOT NULL
               CHECK (role IN ('kalepool_wallet', 'kalepool_pool', 'kalepool_auditor')),
    statement  text NOT NULL
               CHECK (statement ~* '^\s*GRANT\s' AND statement !~ ';'),
    -- the migration that added it, for whoever reads the table
    added_by   text NOT NULL
);

INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_wallet', 'GRANT USAGE ON SCHEMA wallet, shared TO kalepool_wallet', '0012'),
    ('kalepool_wallet',
     'GRANT SELECT, INSERT ON wallet.custodial_wallets, wallet.transactions TO kalepool_wallet',
     '0012'),
    -- closing a wallet, rewrapping its key under a new master key
    ('kalepool_wallet',
     'GRANT UPDATE (closed_at, ciphertext, nonce, key_id, key_version)'
     ' ON wallet.custodial_wallets TO kalepool_wallet', '0012'),
    -- a transaction's outcome (what was signed never changes)
    ('kalepool_wallet',
     'GRANT UPDATE (status, ledger, error_code, error_message, result_xdr, fee_charged,'
     ' return_value, contract_error, fault, rejected, settled_at)'
     ' ON wallet.transactions TO kalepool_wallet', '0012'),
    -- written by the status trigger, as the role that changed the status
    ('kalepool_wallet', 'GRANT INSERT ON wallet.transaction_events TO kalepool_wallet', '0012'),
    ('kalepool_wallet',
     'GRANT EXECUTE ON FUNCTION shared.bytea_looks_like_plaintext(bytea) TO kalepool_wallet',
     '0012'),

    ('kalepool_pool', 'GRANT USAGE ON SCHEMA pool, shared TO kalepool_pool', '0012'),
    ('kalepool_pool',
     'GRANT SELECT, INSERT ON pool.plantings, pool.works, pool.harvests,'
     ' pool.pooler_compensations, pool.balance_ledger, pool.deposits TO kalepool_pool', '0012'),
    ('kalepool_pool',
     'GRANT SELECT, INSERT, UPDATE ON pool.poolers, pool.pooler_api_keys, pool.farmers,'
     ' pool.block_operations, pool.payouts, pool.plant_requests, pool.chain_cursors'
     ' TO kalepool_pool', '0012'),
    ('kalepool_pool', 'GRANT SELECT ON pool.compensation_status TO kalepool_pool', '0012'),
    ('kalepool_pool', 'GRANT EXECUTE ON FUNCTION shared.in_derived_write() TO kalepool_pool',
     '0012'),

    -- `kale-pool check`: reads both services' rows, writes nothing, and reads no secret
    -- (custodial_wallets without its ciphertext and nonce)
    ('kalepool_auditor', 'GRANT USAGE ON SCHEMA pool, wallet, shared TO kalepool_auditor',
     '0012'),
    ('kalepool_auditor', 'GRANT SELECT ON ALL TABLES IN SCHEMA pool TO kalepool_auditor',
     '0012'),
    ('kalepool_auditor',
     'GRANT SELECT ON wallet.transactions, wallet.transaction_events TO kalepool_auditor',
     '0012'),
    ('kalepool_auditor',
     'GRANT SELECT (id, owner_id, public_key, key_id, key_version, created_at, updated_at,'
     ' closed_at) ON wallet.custodial_wallets TO kalepool_auditor', '0012'),
    ('kalepool_auditor',
     'GRANT EXECUTE ON FUNCTION pool.consistency_problems(), pool.payout_problems(),'
     ' wallet.transaction_problems() TO kalepool_auditor', '0012');

-- What each service's role may do, granted to each of the roles that exists (idempotent;
-- run by the owner). Nothing is PUBLIC's: a role sees a schema only where granted. Every
-- role may read the runner's own table, to verify the schema at start-up.
CREATE OR REPLACE FUNCTION shared.grant_roles() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    granted text[] := '{}';
    migrations regclass := to_regclass('public.schema_migrations');
    grantee name;
    grant_row record;
BEGIN
    REVOKE ALL ON SCHEMA shared, wallet, pool FROM PUBLIC;
    REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA shared, wallet, pool FROM PUBLIC;

    FOR grantee IN
        SELECT DISTINCT g.role FROM shared.role_grants g
        JOIN pg_roles r ON r.rolname = g.role
        ORDER BY 1
    LOOP
        FOR grant_row IN
            SELECT statement FROM shared.role_grants WHERE role = grantee ORDER BY id
        LOOP
            EXECUTE grant_row.statement;
        END LOOP;
        IF migrations IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO %I', migrations, grantee);
        END IF;
        granted := granted || grantee::text;
    END LOOP;
    RETURN granted;
END;
$$;

SELECT shared.grant_roles();
