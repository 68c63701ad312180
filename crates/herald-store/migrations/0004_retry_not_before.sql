-- A delivery waiting in a retry tier is not claimed again before its tier delay has passed, so a
-- duplicate copy of the message (at-least-once dead-lettering can make one) cannot jump the queue.
ALTER TABLE deliveries ADD COLUMN not_before timestamptz;
