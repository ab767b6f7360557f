-- Quizzes made from a study group's material (/quiz make): each question and its right
-- answer, and every member's first answer to it, which /quiz scores counts per server.
CREATE TABLE quizzes (
    id          TEXT PRIMARY KEY,
    guild_id    INTEGER NOT NULL,  -- 0 for a quiz made in direct messages
    channel_id  INTEGER,
    created_by  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    questions   TEXT NOT NULL      -- JSON: [{"question", "choices", "answer"}]
);
CREATE TABLE quiz_answers (
    quiz_id     TEXT NOT NULL REFERENCES quizzes (id),
    question    INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    guild_id    INTEGER NOT NULL,
    choice      INTEGER NOT NULL,
    correct     INTEGER NOT NULL,  -- 1 or 0
    answered_at REAL NOT NULL,
    PRIMARY KEY (quiz_id, question, user_id)
);
CREATE INDEX quiz_answers_by_guild ON quiz_answers (guild_id, user_id);
