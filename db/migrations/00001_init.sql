-- Users, their API tokens (hashes only), rooms with a per-room message counter,
-- room membership and messages numbered gap-free per room.

create table users (
  id uuid primary key default gen_random_uuid(),
  username text not null,
  avatar_url text,
  created_at timestamptz not null default now()
);
create unique index users_username_lower_key on users (lower(username));

create table tokens (
  hash text primary key,
  user_id uuid not null references users (id) on delete cascade,
  created_at timestamptz not null default now(),
  revoked_at timestamptz
);
create index tokens_user_id_idx on tokens (user_id);

create table rooms (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  thumbnail_url text,
  created_by uuid not null references users (id),
  created_at timestamptz not null default now(),
  last_seq integer not null default 0
);
create index rooms_created_at_id_idx on rooms (created_at desc, id desc);

create table room_members (
  room_id uuid not null references rooms (id) on delete cascade,
  user_id uuid not null references users (id) on delete cascade,
  joined_at timestamptz not null default now(),
  primary key (room_id, user_id)
);
create index room_members_user_id_idx on room_members (user_id);

create table messages (
  id uuid primary key default gen_random_uuid(),
  room_id uuid not null references rooms (id) on delete cascade,
  seq integer not null,
  user_id uuid not null references users (id),
  username text not null,
  avatar_url text,
  content text not null,
  client_message_id uuid,
  created_at timestamptz not null default now(),
  constraint messages_room_seq_key unique (room_id, seq)
);
create unique index messages_user_client_id_key on messages (user_id, client_message_id)
  where client_message_id is not null;
