-- Daily digests managers schedule (/digest schedule): one per channel, posted into that
-- channel at a local time. last_day is the local date of the last digest run (or skipped as
-- quiet), so a digest missed while the bot was down runs once when it is back, not once a day.
CREATE TABLE digests (
    channel_id  INTEGER PRIMARY KEY,
    guild_id    INTEGER NOT NULL,
    at_minute   INTEGER NOT NULL,  -- minutes after local midnight
    timezone    TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    last_day    TEXT,
    created_at  REAL NOT NULL
);
CREATE INDEX digests_by_guild ON digests (guild_id);
