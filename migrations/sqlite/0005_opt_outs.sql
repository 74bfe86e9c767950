-- cem-bridge store, version 5: opt-outs the CEM reported (a 回复TD to a survey SMS, an
-- unsubscribe in WeChat), R-EXC-3. One row per pseudonym (`pk_…` patient, `mk_…` mobile);
-- checked when a survey is scheduled and again, in the claim transaction, when it is due.
-- Kept forever: an opt-out is withdrawn only by deleting its row (docs/operations.md).
CREATE TABLE opt_outs (
    opt_key TEXT    PRIMARY KEY,
    source  TEXT    NOT NULL,
    job_id  TEXT,
    at      INTEGER NOT NULL
);
