-- Renders of redelivered messages that started and have not finished. RabbitMQ redelivers the
-- messages a dead worker held; a message whose render killed its worker (an abort, which no
-- panic handler sees) would otherwise kill the next one too. Only redelivered messages get a
-- row, before their render, and lose it once the render returns: normal traffic never writes
-- here, and a message that finds an earlier unfinished render is dead-lettered instead.
CREATE TABLE render_attempts (
    execution_id     uuid NOT NULL,
    recipient_index  integer NOT NULL,
    unfinished       integer NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (execution_id, recipient_index)
);
