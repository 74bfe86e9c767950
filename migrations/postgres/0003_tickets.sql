-- cem-bridge store, version 3 (PostgreSQL): the ticket loop (domain rules §4). Times are epoch ms.
-- Ticket bodies and outbound requests are sealed like the vault (free text may hold personal
-- data); the patient's clear data is added from the vault only at send time.

-- One row per CEM ticket: what the order rule (R-TKT-8) and the forwarding plan need.
CREATE TABLE tickets (
    ticket_id       TEXT    PRIMARY KEY,
    applied_version BIGINT  NOT NULL DEFAULT 0,
    grade           TEXT,
    status          TEXT,
    patient_key     TEXT,
    patient_known   BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT,
    -- arrival of the oldest early version still held, for the gap timeout (R-TKT-8)
    held_since      BIGINT,
    updated_at      BIGINT  NOT NULL
);
CREATE INDEX tickets_held ON tickets (held_since);

-- Every accepted version; state held | applied | skipped.
CREATE TABLE ticket_versions (
    ticket_id   TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    received_at BIGINT  NOT NULL,
    key_id      TEXT    NOT NULL,
    body        BYTEA   NOT NULL,
    PRIMARY KEY (ticket_id, version)
);

-- One row per request to HCRM or the call center (R-TKT-6), sent in id order per (ticket, sink):
-- a row waits while an earlier due row of its ticket and sink is pending (R-TKT-8).
-- status pending | sent | cancelled | dead.
CREATE TABLE ticket_outbox (
    id              BIGSERIAL PRIMARY KEY,
    ticket_id       TEXT    NOT NULL,
    sink            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    idem_key        TEXT    NOT NULL UNIQUE,
    patient_key     TEXT,
    status          TEXT    NOT NULL,
    reason          TEXT,
    due_at          BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    locked_until    BIGINT  NOT NULL DEFAULT 0,
    lock_owner      TEXT,
    key_id          TEXT    NOT NULL,
    body            BYTEA   NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    sent_at         BIGINT,
    last_status     BIGINT,
    last_error      TEXT
);
CREATE INDEX ticket_outbox_claim ON ticket_outbox (status, next_attempt_at);
CREATE INDEX ticket_outbox_order ON ticket_outbox (ticket_id, sink, id);

-- SLA escalations (R-TKT-4): one row per (ticket, clock, level); state pending | emitted | met
-- | void. pending → emitted happens once, in the transaction that queues the HCRM update.
CREATE TABLE ticket_escalations (
    ticket_id  TEXT    NOT NULL,
    clock      TEXT    NOT NULL,
    level      BIGINT  NOT NULL,
    grade      TEXT    NOT NULL,
    deadline   BIGINT  NOT NULL,
    due_at     BIGINT  NOT NULL,
    state      TEXT    NOT NULL,
    emitted_at BIGINT,
    PRIMARY KEY (ticket_id, clock, level)
);
CREATE INDEX ticket_escalations_due ON ticket_escalations (state, due_at);

-- R-TKT-11: signatures accepted recently; the same one again is a replay.
CREATE TABLE webhook_seen (
    signature TEXT    PRIMARY KEY,
    seen_at   BIGINT  NOT NULL
);
CREATE INDEX webhook_seen_at ON webhook_seen (seen_at);
