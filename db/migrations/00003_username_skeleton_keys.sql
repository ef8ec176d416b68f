-- Usernames are unique by three keys computed in TypeScript (server/username_key.ts), each
-- under its own unique index; a name is taken when any of its keys is:
--
-- - username_key becomes NFKC_Casefold alone: the same name in another case or form. Until now
--   it also took the look-alike skeleton of the case-folded name, which judged a capital by its
--   lower case ("Νick" was "vick", "AIice" was "aiice");
-- - username_skeleton_key: the UTS #39 skeleton of the name as written, then case-folded;
-- - username_skeleton_i_key: the same, reading capitals shaped like I as the capital of i, not l.
--
-- SQL cannot compute them: every key is cleared here and given anew at startup, right after the
-- migrations, by fillUsernameKeys in db/users.ts, which recomputes all three keys of any row
-- that lacks one. Until then, and for a key an older user's name already has, a key is null,
-- which the unique indexes let through. A row written during a rolling deploy by an instance of
-- the previous release (old username_key, no skeleton keys) is recomputed at the next start; a
-- rename by such an instance keeps the former name's skeleton keys until its keys are cleared
-- (set username_key to null) and the fill runs again. Collation "C" compares keys byte for byte.
alter table users
  add column username_skeleton_key text collate "C",
  add column username_skeleton_i_key text collate "C";
update users set username_key = null;
create unique index users_username_skeleton_key_idx on users (username_skeleton_key);
create unique index users_username_skeleton_i_key_idx on users (username_skeleton_i_key);
