-- Room life, second part (issue #12): one gap-free order of every stored event of a room, so a
-- subscriber of rooms.onEvent resumes after exactly the events it missed.
--
-- A room's events are numbered 1, 2, 3, ... by `rooms.last_event_id`, bumped under the room's
-- row lock like `last_seq`, so ids commit in order. A new message takes its event id in the
-- send statement itself (`messages.event_id`); every other stored event (an edit, a deletion,
-- a reaction, a member joining or leaving) is a row of `room_events`. Until now every event was
-- a message, so existing rooms start with event id = seq: the messages stored before this
-- migration keep `event_id` null and count as event `seq` up to `rooms.seq_events_until` (no
-- rewrite of the messages table, which would block sends for as long as it takes).
--
-- An instance of the previous release keeps running against this schema: its sends leave
-- `event_id` null, so during a rolling deploy the messages it stores reach `messages.onMessage`
-- but not the event order (a trigger numbering them would break its send statement, which
-- updates the room's row itself).

alter table rooms
  add column last_event_id bigint not null default 0,
  add column seq_events_until integer not null default 0;
update rooms set last_event_id = last_seq, seq_events_until = last_seq;

alter table messages add column event_id bigint;
create unique index messages_room_event_key on messages (room_id, event_id)
  where event_id is not null;

-- The stored events that are not new messages. `message_id` names the message an edit,
-- deletion or reaction is about; `user_id` the member who joined or left, or who reacted.
-- `payload` holds what the rows do not: a reaction's emoji, whether it was added and the count
-- after; a deletion's time; a membership's `joinedAt`.
create table room_events (
  room_id uuid not null references rooms (id) on delete cascade,
  event_id bigint not null,
  type text not null,
  message_id uuid references messages (id) on delete cascade,
  user_id uuid references users (id) on delete set null,
  payload jsonb not null default '{}',
  created_at timestamptz not null default now(),
  primary key (room_id, event_id)
);
create index room_events_user_id_idx on room_events (user_id);
create index room_events_message_id_idx on room_events (message_id);
