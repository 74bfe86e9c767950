-- cem-bridge store, version 4: post-operative follow-up plans (domain rules §5) and dead-letter
-- replay.
-- Follow-up calls are rows of ticket_outbox (sink 'callcenter', ticket_id 'fu:{stayKey}',
-- idem_key = the step key 'fu:{stayKey}:{plan}:{step}', R-FUP-4); follow-up questionnaires and
-- health reminders are survey_jobs rows that skip do-not-disturb and leave no touch (R-FUP-2).

-- 1 = the job is a survey under do-not-disturb (R-DND); 0 = a follow-up step, exempt.
ALTER TABLE survey_jobs ADD COLUMN dnd INTEGER NOT NULL DEFAULT 1;

-- R-FUP-3 (one call per patient per day), deaths and merges look calls up by patient.
CREATE INDEX ticket_outbox_patient ON ticket_outbox (patient_key, sink, status);

-- `cem-bridge dlq replay`: when a dead letter was republished to its source queue.
ALTER TABLE dead_letters ADD COLUMN replayed_at BIGINT;
