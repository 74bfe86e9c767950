-- cem-bridge store, version 9: when a survey becomes stale (R-SRV-4: the visit's anchor + 72 h
-- outpatient / + 7 days inpatient), computed at scheduling, so the claim can suppress a job
-- found past it at send time (R-SRV-6) — after an outage, or retries that ran past it. NULL
-- for follow-up steps (planned on fixed days) and jobs scheduled before this version.
ALTER TABLE survey_jobs ADD COLUMN stale_at BIGINT;
