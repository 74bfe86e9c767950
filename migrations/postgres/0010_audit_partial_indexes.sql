-- cem-bridge store, version 10: the audit's job and patient indexes leave out the `scheduled`
-- rows (issue 17). Every registration writes one, and its job id and patient pseudonym are
-- hashes: two random index inserts per message, a fifth of the pages an ingest commit writes.
-- A `scheduled` row is found through its message id instead (`audit_message`): the job it
-- created keeps that message id (`survey_jobs.message_id`), so a lookup by job id or patient
-- pseudonym reads the jobs' message ids first (`store::ops::AUDIT_ABOUT`).
DROP INDEX IF EXISTS audit_job;
DROP INDEX IF EXISTS audit_patient;
CREATE INDEX audit_job_later ON audit (job_id) WHERE action <> 'scheduled';
CREATE INDEX audit_patient_later ON audit (patient_key) WHERE action <> 'scheduled';
