-- Monitoring: the machine figures of a pooler's heartbeat, and the alert engine's
-- incidents (pool_service/alerts.py, docs/operations.md "Monitoring and alerts").
--
-- pool.poolers.heartbeat_cpu_percent, heartbeat_memory_percent
--               the share of the mining machine's CPU and memory in use when it last
--               beat (HeartbeatRequest.cpu_percent / memory_percent), 0-100; NULL before
--               an agent that reports them.
--
-- pool.alerts   one row per incident: a rule (`api_latency`, `pooler_unseen`, ...) true
--               of one subject (an RPC on one replica, a wallet, a pooler). At most one
--               open incident per rule and subject (the partial unique index), so of
--               several replicas evaluating the same rule exactly one opens it and posts
--               "firing", and exactly one closes it and posts "resolved".
--   rule        the rule's name
--   subject     what it is about: ids and names, never a secret
--   message     what was posted when it opened
--   opened_at   when it was opened
--   resolved_at when it cleared (NULL while open)

ALTER TABLE pool.poolers
    ADD COLUMN heartbeat_cpu_percent smallint,
    ADD COLUMN heartbeat_memory_percent smallint,
    ADD CONSTRAINT poolers_heartbeat_cpu_percent_range
        CHECK (heartbeat_cpu_percent BETWEEN 0 AND 100),
    ADD CONSTRAINT poolers_heartbeat_memory_percent_range
        CHECK (heartbeat_memory_percent BETWEEN 0 AND 100);

CREATE TABLE pool.alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule        text NOT NULL CHECK (length(rule) BETWEEN 1 AND 64),
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 300),
    message     text NOT NULL CHECK (length(message) BETWEEN 1 AND 2000),
    opened_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    CHECK (resolved_at IS NULL OR resolved_at >= opened_at)
);

CREATE UNIQUE INDEX alerts_one_open_incident ON pool.alerts (rule, subject)
    WHERE resolved_at IS NULL;

INSERT INTO shared.role_grants (role, statement, added_by) VALUES
    ('kalepool_pool', 'GRANT SELECT, INSERT, UPDATE ON pool.alerts TO kalepool_pool', '0021'),
    ('kalepool_auditor', 'GRANT SELECT ON pool.alerts TO kalepool_auditor', '0021');
SELECT shared.grant_roles();
