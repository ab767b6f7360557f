-- A /chat question is now a turn private to its asker (its JSON has "private_to"), unless a
-- thread showed it. Openings stored before could be either and name no asker's id: those of
-- conversations outside threads are forgotten, so that none reaches another member's prompt.
UPDATE conversations SET opening = NULL WHERE opening IS NOT NULL AND id NOT LIKE 'thread:%';
