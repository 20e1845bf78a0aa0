-- Who owns a plant the pool recorded too late, and the plant reconciler's pace.
--
-- plantings.recorded_late    the pool recorded this successful plant when the chain's
--                            clock was already past its block's work window (the block's
--                            opening time + the block interval - the pooler's submit
--                            margin): its assignment could not reach the pooler in time,
--                            so a missing or late work of the pail is the pool's fault.
-- plant_requests.opened_at   when the request's current attempt was opened (its first
--                            call, or the repeat that opened it again after a failure):
--                            the request's age. A block that moved on before the wallet
--                            sent the plant is the chain's doing while the request is
--                            younger than the plant deadline, and the pool's after.
-- plant_requests_unsettled   the reconciler's work list, oldest-attempted first
--                            (`updated_at`: each reconciler pass that takes a request
--                            counts an attempt and so moves it to the back).

ALTER TABLE plantings ADD COLUMN recorded_late boolean NOT NULL DEFAULT false;
ALTER TABLE plantings ADD CONSTRAINT plantings_recorded_late_success
    CHECK (NOT recorded_late OR status = 'success');

ALTER TABLE plant_requests ADD COLUMN opened_at timestamptz;
UPDATE plant_requests SET opened_at = requested_at;
ALTER TABLE plant_requests
    ALTER COLUMN opened_at SET DEFAULT now(),
    ALTER COLUMN opened_at SET NOT NULL;

DROP INDEX plant_requests_unsettled;
CREATE INDEX plant_requests_unsettled ON plant_requests (updated_at) WHERE settled_at IS NULL;
