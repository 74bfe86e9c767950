-- cem-bridge store, version 6: the AMQP headers of a dead letter (e.g. the platform's
-- `service-code`, which the XML mappings match on), sealed like its body (same key id, own
-- associated data), so `dlq replay` maps and republishes the message with them.
ALTER TABLE dead_letters ADD COLUMN headers BYTEA;
