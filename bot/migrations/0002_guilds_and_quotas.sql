-- Per-guild settings, and an index for per-user daily quota counts.
CREATE TABLE guild_settings (
    guild_id   INTEGER PRIMARY KEY,
    settings   TEXT NOT NULL,            -- JSON of bot.guilds.GuildSettings
    updated_at REAL NOT NULL
);
CREATE INDEX invocations_user_task ON invocations (user_id, task, started_at);
