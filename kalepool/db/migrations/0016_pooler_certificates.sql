-- A pooler is its client certificate and its API key together.
--
-- pool.pooler_certificates  the client certificates registered for each pooler: the
--                           SHA-256 fingerprint of the certificate's DER bytes (lowercase
--                           hex), its subject (for people), when it expires, when it was
--                           added and, once revoked, when. PoolerService admits a call only
--                           when the certificate it presents is an active (unrevoked,
--                           unexpired) certificate of the pooler whose API key it sends.
--
-- A fingerprint belongs to one pooler forever: the unique constraint covers revoked rows
-- too, so a revoked certificate can never be added again (to that pooler or another).
-- Revocation is final: revoked_at is set once and never changed or cleared.
--
-- Poolers registered before this migration have no row here, so PoolerService refuses
-- them until an operator registers their certificate (`kale-pool pooler cert add`): the
-- pool never recorded which certificate was theirs, and guessing would keep the hole open.

CREATE TABLE pool.pooler_certificates (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pooler_id   uuid NOT NULL REFERENCES pool.poolers (id),
    fingerprint text NOT NULL,
    subject     text NOT NULL,
    not_after   timestamptz NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT pooler_certificates_fingerprint_key UNIQUE (fingerprint),
    CONSTRAINT pooler_certificates_fingerprint_format CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    CONSTRAINT pooler_certificates_subject_length CHECK (length(subject) BETWEEN 1 AND 1024)
);

CREATE INDEX pooler_certificates_pooler ON pool.pooler_certificates (pooler_id);

CREATE TRIGGER pooler_certificates_immutable BEFORE UPDATE ON pool.pooler_certificates
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'pooler_id', 'fingerprint', 'subject', 'not_after', 'added_at');

CREATE FUNCTION pool.pooler_certificates_revoke_once() RETURNS trigger
LANGUAGE plpgsql SET search_path = pool, shared AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'pooler certificate % is revoked; revocation cannot be changed or undone', OLD.fingerprint
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER pooler_certificates_revoke_once BEFORE UPDATE ON pool.pooler_certificates
    FOR EACH ROW EXECUTE FUNCTION pool.pooler_certificates_revoke_once();

-- The pool adds certificates and revokes them; nothing else of a row ever changes. The
-- auditor's SELECT ON ALL TABLES IN SCHEMA pool covers the new table when
-- grant_roles() runs it again below.
INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool',
     'GRANT SELECT, INSERT, UPDATE (revoked_at) ON pool.pooler_certificates TO kalepool_pool',
     '0016');

SELECT shared.grant_roles();
