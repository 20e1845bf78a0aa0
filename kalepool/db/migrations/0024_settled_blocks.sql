-- The compensation sweep's memory: which blocks it found settled, and on how many events.
--
-- pool.settled_blocks  one row per block the sweep found settled (docs/pool.md,
--                      pool_service/books/compensations.py):
--                      block_index  the block
--                      events       how many event rows (plantings, works, harvests of
--                                   every pooler) the block had when found settled: the
--                                   sum of its block_operations counters, which each
--                                   event's insert raises by one in its own transaction
--                      settled_at   when it was last found so
--
-- The events are append-only, so a block whose count is unchanged has exactly the
-- events it was settled on and owes nothing more: the sweep passes it by. A new event
-- of the block changes its count, and the next sweep examines it again (its writes are
-- idempotent). The sweep reads the counters and the events in one statement's snapshot,
-- so the count it records is the count of the events it examined.

CREATE TABLE pool.settled_blocks (
    block_index bigint PRIMARY KEY CHECK (block_index BETWEEN 0 AND 4294967295),
    events      bigint NOT NULL CHECK (events >= 0),
    settled_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER settled_blocks_no_truncate BEFORE TRUNCATE ON pool.settled_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION shared.refuse_mutation();

-- The pool's sweep records and updates; the auditor's SELECT ON ALL TABLES IN SCHEMA
-- pool covers the new table when grant_roles() runs again below.
INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool', 'GRANT SELECT, INSERT, UPDATE ON pool.settled_blocks TO kalepool_pool',
     '0024');

SELECT shared.grant_roles();
