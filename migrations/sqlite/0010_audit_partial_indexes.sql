-- cem-bridge store, version 10: the audit's job and patient indexes leave out the `scheduled`
-- rows (issue 17). Every registration writes one, and its job id and patient pseudonym are
-- hashes: two random index inserts per message, a fifth of the pages an ingest commit wrote.
-- A `scheduled` row is found through its message id instead (`audit_message`): the job keeps
-- the id of the message that created it in `created_by` (`message_id` moves on when a
-- cancelled discharge is recorded again, R-CAN-3), so a lookup by job id or patient pseudonym
-- reads the jobs' `created_by` first (`store::ops::audit_about_sql`).
ALTER TABLE survey_jobs ADD COLUMN created_by TEXT;
UPDATE survey_jobs SET created_by = COALESCE(
    (SELECT a.message_id FROM audit a
     WHERE a.job_id = survey_jobs.job_id AND a.action = 'scheduled' ORDER BY a.id DESC LIMIT 1),
    message_id);
DROP INDEX IF EXISTS audit_job;
DROP INDEX IF EXISTS audit_patient;
CREATE INDEX audit_job_later ON audit (job_id) WHERE action <> 'scheduled';
CREATE INDEX audit_patient_later ON audit (patient_key) WHERE action <> 'scheduled';
