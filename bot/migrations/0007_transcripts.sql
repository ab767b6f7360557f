-- What a member's voice message in a conversation was heard as: Discord keeps the audio, not
-- its words, so a conversation read back later needs them. Kept with the conversation's
-- memory and deleted with it (BOT_CHAT__MEMORY_DAYS after its last turn).
CREATE TABLE transcripts (
    message_id      INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    text            TEXT NOT NULL,
    created_at      REAL NOT NULL
);
CREATE INDEX transcripts_by_conversation ON transcripts (conversation_id);
