-- The options behind each posted image, so its Reroll and Variations buttons keep working
-- after a restart. Deleted with the usage rows after the retention period.
CREATE TABLE image_requests (
    id         TEXT PRIMARY KEY,
    guild_id   INTEGER,
    user_id    TEXT NOT NULL,
    request    TEXT NOT NULL,            -- JSON of handlers.imagine.ImagineRequest
    created_at REAL NOT NULL
);
