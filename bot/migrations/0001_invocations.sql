-- One row per invocation, from Discord or the command line, whatever its outcome.
CREATE TABLE invocations (
    id          TEXT PRIMARY KEY,
    started_at  REAL NOT NULL,           -- unix seconds
    ended_at    REAL,
    source      TEXT NOT NULL,           -- discord | cli
    guild_id    INTEGER,
    channel_id  INTEGER,
    user_id     TEXT NOT NULL,
    task        TEXT NOT NULL,
    model       TEXT,
    options     TEXT,                    -- JSON summary of the options, never free text
    prompt      TEXT,                    -- only with BOT_LOG_PROMPTS
    status      TEXT NOT NULL,           -- running until it ends
    wait_ms     REAL,
    run_ms      REAL,
    batch_size  INTEGER,
    input_size  INTEGER,
    output_size INTEGER,
    error_kind  TEXT
);
CREATE INDEX invocations_started ON invocations (started_at);
