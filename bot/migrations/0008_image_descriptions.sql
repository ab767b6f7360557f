-- What an image in a conversation shows, in a line: Discord keeps the image, but once a
-- conversation holds more images than the vision model is shown (BOT_DESCRIBE__
-- CONVERSATION_IMAGES), or the chat model answers, older images reach the model as these
-- lines. Described once, when first needed; deleted with the conversation's memory.
CREATE TABLE image_descriptions (
    message_id      INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    conversation_id TEXT NOT NULL,
    text            TEXT NOT NULL,
    created_at      REAL NOT NULL,
    PRIMARY KEY (message_id, position)
);
CREATE INDEX image_descriptions_by_conversation ON image_descriptions (conversation_id);
