-- cem-bridge store, version 1 (SQLite). Times are epoch milliseconds (UTC).
-- No table holds a clear name, phone, ID-card number, patient id or visit number.

-- R-EVT-4: one row per message key and connector; content_hash tells a redelivery from a conflict.
CREATE TABLE inbox (
    connector    TEXT    NOT NULL,
    message_key  TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (connector, message_key)
);
CREATE INDEX inbox_received ON inbox (received_at);

-- R-SRV-5/R-SRV-6: one row per survey job id; payload is the anonymised CEM body.
CREATE TABLE survey_jobs (
    job_id          TEXT    PRIMARY KEY,
    template        TEXT    NOT NULL,
    patient_key     TEXT    NOT NULL,
    visit_key       TEXT    NOT NULL,
    id_card_key     TEXT,
    mobile_key      TEXT,
    status          TEXT    NOT NULL,
    reason          TEXT,
    due_at          INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER NOT NULL DEFAULT 0,
    lock_owner      TEXT,
    payload         TEXT    NOT NULL,
    connector       TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX survey_jobs_claim ON survey_jobs (status, next_attempt_at, job_id);
CREATE INDEX survey_jobs_finished ON survey_jobs (status, updated_at);
CREATE INDEX survey_jobs_visit ON survey_jobs (visit_key);
CREATE INDEX survey_jobs_patient ON survey_jobs (patient_key);

-- R-DND-1..4: the last survey touch per pseudonymous key (pk_, ik_, mk_); a job reserves its
-- keys when claimed (job_id), the reservation becomes the touch when the CEM accepts.
CREATE TABLE touches (
    dnd_key   TEXT    PRIMARY KEY,
    last_sent INTEGER NOT NULL,
    job_id    TEXT    NOT NULL
);
CREATE INDEX touches_job ON touches (job_id);

-- R-CAN-5 / R-EXC-1: what the store knows of a patient (pseudonyms only). `deceased` is 0/1 and
-- is never cleared; demographics apply only if not older than `demographics_at` (EX-22).
CREATE TABLE patients (
    patient_key     TEXT    PRIMARY KEY,
    deceased        INTEGER NOT NULL DEFAULT 0,
    mobile_key      TEXT,
    demographics_at INTEGER NOT NULL DEFAULT 0
);

-- R-CAN-6: a merged (non-surviving) patient pseudonym and the survivor it maps to.
CREATE TABLE patient_aliases (
    alias_key    TEXT PRIMARY KEY,
    survivor_key TEXT NOT NULL
);

-- R-CAN-2: a cancel that arrived before its registration, remembered until `until`.
CREATE TABLE tombstones (
    visit_key TEXT    PRIMARY KEY,
    reason    TEXT    NOT NULL,
    until     INTEGER NOT NULL
);

-- R-GEN-2: every decision with its rule and reason.
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    connector  TEXT,
    message_id TEXT,
    job_id     TEXT,
    patient_key TEXT,
    action     TEXT    NOT NULL,
    rule       TEXT,
    reason     TEXT,
    detail     TEXT
);
CREATE INDEX audit_message ON audit (message_id);
CREATE INDEX audit_job ON audit (job_id);
CREATE INDEX audit_patient ON audit (patient_key);
CREATE INDEX audit_at ON audit (at);

-- R-EVT-6: dead letters (metadata; the body stays in the broker's dead-letter queue).
CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    connector      TEXT    NOT NULL,
    message_id     TEXT,
    reason         TEXT    NOT NULL,
    detail         TEXT    NOT NULL,
    content_hash   TEXT    NOT NULL,
    size_bytes     INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL
);
CREATE INDEX dead_letters_at ON dead_letters (at);
