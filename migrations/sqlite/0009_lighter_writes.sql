-- No query reads undelivered entries through this index (a replay reads the user's range by
-- the primary key), yet every inbox entry was added to it and marking it delivered took it
-- out again: two index writes per entry for nothing.
DROP INDEX inbox_undelivered;
