-- cem-bridge store, version 7: the visit pseudonym (`vk_…`) a ticket's first version named,
-- so every HCRM request of the ticket carries the 门诊号/住院号 from the vault (R-ANO-1).
ALTER TABLE tickets ADD COLUMN visit_key TEXT;
