-- The head follows the newest event once per INSERT statement, not once per row: a batch
-- of events costs one head update. Same rule as before: only the statement whose newest
-- event carries the head's seq moves the hash.
DROP TRIGGER audit_event_moves_head ON audit_event;
DROP FUNCTION audit_event_move_head();
CREATE FUNCTION audit_event_move_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_head h SET hash = n.hash
      FROM (SELECT seq, hash FROM new_events ORDER BY seq DESC LIMIT 1) n
     WHERE h.id = 1 AND h.seq = n.seq;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_event_moves_head AFTER INSERT ON audit_event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_move_head();
