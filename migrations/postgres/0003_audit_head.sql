-- The head follows the newest event: one statement fewer per append. The head's seq is
-- advanced first (which locks it), so only the event carrying that seq moves the hash.
CREATE FUNCTION audit_event_move_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_head SET hash = NEW.hash WHERE id = 1 AND seq = NEW.seq;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_event_moves_head AFTER INSERT ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_move_head();
