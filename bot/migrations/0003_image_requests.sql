-- The options behind each posted image, so its Reroll and Variations buttons keep working
-- after a restart. Deleted after BOT_IMAGINE__REROLL_HOURS.
CREATE TABLE image_requests (
    id         TEXT PRIMARY KEY,
    guild_id   INTEGER,
    user_id    TEXT NOT NULL,
    request    TEXT NOT NULL,            -- JSON of handlers.imagine.ImagineRequest
    created_at REAL NOT NULL
);
