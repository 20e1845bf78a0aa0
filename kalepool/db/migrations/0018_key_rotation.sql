-- Master key rotations of the custodial keys (`kale-pool wallet rotate-key`).
--
-- wallet.key_rotations   one row per rotation: the master key every custodial key is
--                        being rewrapped under, how many were rewrapped, when it finished
--                        and which key versions were retired after it. The command
--                        rewraps each wallet row in its own transaction together with the
--                        count here, so a rotation cut short (a crash, a SIGKILL) is
--                        continued by the next run from what the rows say. No secret here:
--                        a key is named by its fingerprint (key_id) and version.

CREATE TABLE wallet.key_rotations (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_key_id       text NOT NULL CHECK (target_key_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    target_key_version  integer NOT NULL CHECK (target_key_version >= 1),
    started_at          timestamptz NOT NULL DEFAULT now(),
    -- wallet rows rewrapped so far by this rotation (each in its own transaction)
    rewrapped           integer NOT NULL DEFAULT 0 CHECK (rewrapped >= 0),
    finished_at         timestamptz,
    -- key versions removed from the keyring after this rotation (--retire)
    retired_versions    integer[] NOT NULL DEFAULT '{}'
);

-- One rotation at a time: a second run continues the open one instead of starting another.
CREATE UNIQUE INDEX key_rotations_one_open ON wallet.key_rotations ((true))
    WHERE finished_at IS NULL;

-- A rotation's target and start never change; only its progress does.
CREATE TRIGGER key_rotations_immutable BEFORE UPDATE ON wallet.key_rotations
    FOR EACH ROW EXECUTE FUNCTION shared.guard_immutable_columns(
        'id', 'target_key_id', 'target_key_version', 'started_at');
CREATE TRIGGER key_rotations_no_delete BEFORE DELETE ON wallet.key_rotations
    FOR EACH ROW EXECUTE FUNCTION shared.refuse_mutation();

-- The rotation command connects as the wallet's role (the custodial keys are its alone);
-- `kale-pool check` may read the history.
INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_wallet',
     'GRANT SELECT, INSERT, UPDATE (rewrapped, finished_at, retired_versions)'
     ' ON wallet.key_rotations TO kalepool_wallet', '0018'),
    ('kalepool_auditor', 'GRANT SELECT ON wallet.key_rotations TO kalepool_auditor', '0018');
SELECT shared.grant_roles();
