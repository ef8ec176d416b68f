-- Accounts across devices (issue #11): passwords, identities from the front end's identity
-- provider, sessions that expire, and accounts that can be deleted.
--
-- Written so that an instance of the previous release keeps running against this schema during
-- a rolling deploy: the table keeps its name `tokens` (every row is a session: one per device),
-- `revoked_at` stays (this release deletes a session instead of marking it), every new column
-- has a default, and every ended session is also announced as the previous release's
-- `logout:<hash>`. What it cannot do is expire sessions: until it is stopped, an old instance
-- accepts a session past its `expires_at`.

-- Sessions: an id to name a session by (the hash never leaves the server), when it was last
-- used, when it expires (extended on use, see server/sessions.ts) and the device's user agent.
alter table tokens
  add column id uuid not null default gen_random_uuid(),
  add column last_used_at timestamptz not null default now(),
  add column expires_at timestamptz not null default now() + interval '30 days',
  add column user_agent text,
  -- How the session was opened: sign-up, password or identity-provider (null before 00004).
  add column opened_by text;
alter table tokens add constraint tokens_id_key unique (id);
delete from tokens where revoked_at is not null;

-- A password (a PHC-style scrypt string, see server/password.ts), or null for a guest account.
alter table users add column password_hash text;

-- Users who came through the identity provider, found by the token's (iss, sub).
create table identities (
  issuer text not null,
  subject text not null,
  user_id uuid not null references users (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (issuer, subject)
);
create index identities_user_id_idx on identities (user_id);

-- Failed sign-ins per username (by its username_key, so "Alice" and "alice" count together; or
-- `user:<id>` for a signed-in user's current password), in a fixed window that starts at the
-- first failure: the lockout holds on every instance.
create table sign_in_failures (
  username_key text collate "C" primary key,
  failures integer not null,
  window_started_at timestamptz not null
);

-- A deleted account's messages stay in history without the person: user_id becomes null.
-- Rooms it created stay too, without a creator. The foreign keys only change their action:
-- every existing row satisfied the old ones, so "not valid" skips a scan of the whole table
-- under this migration's lock (new rows are checked all the same).
alter table messages alter column user_id drop not null;
alter table messages drop constraint messages_user_id_fkey;
alter table messages add constraint messages_user_id_fkey
  foreign key (user_id) references users (id) on delete set null not valid;
alter table rooms alter column created_by drop not null;
alter table rooms drop constraint rooms_created_by_fkey;
alter table rooms add constraint rooms_created_by_fkey
  foreign key (created_by) references users (id) on delete set null not valid;
-- Deleting an account finds its messages and rooms by index (the foreign keys above need it too).
create index messages_user_id_idx on messages (user_id);
create index rooms_created_by_idx on rooms (created_by);
