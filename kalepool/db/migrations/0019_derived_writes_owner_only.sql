-- Only the owner may rebuild derived state.
--
-- shared.in_derived_write() let a derived column (a balance, a counter, a block total) be
-- written while the transaction-local setting `kalepool.rebuilding_derived` was 'on', the
-- flag pool.rebuild_derived_state() sets. Any session may set any custom setting, so a
-- service's role (the pool's, or whoever holds its credentials) could set the flag and
-- write a balance by hand, past the triggers that derive it from the ledger. The flag now
-- counts only for the owner of the schemas (the migrator, who runs the rebuild) or a
-- member of it; nested trigger writes (depth > 1) are unchanged.

CREATE OR REPLACE FUNCTION shared.in_derived_write() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN pg_trigger_depth() > 1 THEN true
        WHEN coalesce(current_setting('kalepool.rebuilding_derived', true), '') <> 'on'
            THEN false
        ELSE pg_has_role(
            current_user,
            (SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'shared'),
            'MEMBER')
    END
$$;
