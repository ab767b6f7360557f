-- Conversations with the chat model. Discord keeps the messages; the bot keeps only what
-- Discord cannot give back: the running summary of the turns folded out of the model's
-- window, where a reset begins, the question that opened a conversation started by /chat
-- (an interaction's answer does not show it), and which of its messages are chat answers.
-- Deleted BOT_CHAT__MEMORY_DAYS after a conversation's last turn.
CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,  -- reply:<first message>, slash:<interaction>, thread:<id>, dm:<channel>, cli:<n>
    guild_id        INTEGER,
    summary         TEXT NOT NULL DEFAULT '',
    summary_through INTEGER NOT NULL DEFAULT 0,  -- the newest turn (message id) the summary covers
    reset_after     INTEGER NOT NULL DEFAULT 0,  -- turns up to this message id are forgotten
    opening         TEXT,                        -- JSON {id, name, text}: what /chat was asked
    updated_at      REAL NOT NULL
);
CREATE INDEX conversations_by_age ON conversations (updated_at);

CREATE TABLE chat_answers (
    message_id      INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    is_turn         INTEGER NOT NULL DEFAULT 1,  -- 0: a reply to `reset` or `memory`, not a turn
    created_at      REAL NOT NULL
);
CREATE INDEX chat_answers_by_conversation ON chat_answers (conversation_id);
