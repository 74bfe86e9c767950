-- cem-bridge store, version 2 (SQLite): the re-identification vault (R-ANO-6) and encrypted
-- dead-letter bodies (R-ANO-8).

-- One AES-256-GCM sealed record per pseudonym (pk_, vk_, mk_): 12-byte nonce || ciphertext+tag,
-- the associated data binds it to its pseudonym and key id, so a swapped or edited row fails.
CREATE TABLE vault (
    pseudonym     TEXT    PRIMARY KEY,
    key_id        TEXT    NOT NULL,
    sealed        BLOB    NOT NULL,
    last_event_at INTEGER NOT NULL
);
CREATE INDEX vault_last_event ON vault (last_event_at);

-- The body of each dead letter, sealed like the vault (for `dlq show --body` and replay).
ALTER TABLE dead_letters ADD COLUMN body_key_id TEXT;
ALTER TABLE dead_letters ADD COLUMN body BLOB;
