-- cem-bridge store, version 8 (postgres): what a store made by an earlier text of a migration lacks.
-- 0001_init.sql was extended after the first release under the same version 1, so a store the
-- first release created has version 1 without the tables and indexes below (and 0004 gained
-- dead_letters.replayed_at after its first version). Everything here is a no-op on a store
-- made by today's migrations. The missing columns (survey_jobs.id_card_key, mobile_key;
-- dead_letters.replayed_at) are added by the store's code before this script runs, since
-- SQLite has no ADD COLUMN IF NOT EXISTS (src/store/mod.rs, LATE_COLUMNS).

CREATE INDEX IF NOT EXISTS inbox_received ON inbox (received_at);
CREATE INDEX IF NOT EXISTS survey_jobs_finished ON survey_jobs (status, updated_at);
CREATE INDEX IF NOT EXISTS survey_jobs_visit ON survey_jobs (visit_key);
CREATE INDEX IF NOT EXISTS survey_jobs_patient ON survey_jobs (patient_key);

CREATE TABLE IF NOT EXISTS touches (
    dnd_key   TEXT    PRIMARY KEY,
    last_sent BIGINT  NOT NULL,
    job_id    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS touches_job ON touches (job_id);

CREATE TABLE IF NOT EXISTS patients (
    patient_key     TEXT    PRIMARY KEY,
    deceased        BIGINT  NOT NULL DEFAULT 0,
    mobile_key      TEXT,
    demographics_at BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS patient_aliases (
    alias_key    TEXT PRIMARY KEY,
    survivor_key TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS tombstones (
    visit_key TEXT    PRIMARY KEY,
    reason    TEXT    NOT NULL,
    until     BIGINT  NOT NULL
);

CREATE INDEX IF NOT EXISTS audit_patient ON audit (patient_key);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
