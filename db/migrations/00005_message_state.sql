-- Room life, first part (issue #12): messages that can be edited, deleted and reacted to, and
-- each member's read position in a room. Every new column is nullable and every new table is
-- new, so instances of the previous release keep running against this schema.

-- An edited message carries when; a deleted one keeps its place (seq) with empty content.
alter table messages
  add column edited_at timestamptz,
  add column deleted_at timestamptz;

-- One row per (message, emoji, user): a user's reaction with one emoji.
create table message_reactions (
  message_id uuid not null references messages (id) on delete cascade,
  emoji text not null,
  user_id uuid not null references users (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (message_id, emoji, user_id)
);
create index message_reactions_user_id_idx on message_reactions (user_id);

-- How far a member has read a room: the highest seq they marked read (never lower).
create table read_positions (
  user_id uuid not null references users (id) on delete cascade,
  room_id uuid not null references rooms (id) on delete cascade,
  last_read_seq integer not null default 0,
  primary key (user_id, room_id)
);
create index read_positions_room_id_idx on read_positions (room_id);
