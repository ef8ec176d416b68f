-- Usernames are unique by one comparison key computed in TypeScript (server/username_key.ts:
-- NFKC_Casefold, then the UTS #39 confusable skeleton), not by lower(), whose folding depends
-- on the database's LC_CTYPE (with C it folds ASCII only). Collation "C" compares keys byte for
-- byte whatever the database's default.
--
-- Existing rows get their key at startup, right after the migrations, from fillUsernameKeys in
-- db/users.ts (SQL cannot compute it); until then, and for an old name whose key an older
-- user's name already has, the key is null, which the unique index lets through.
alter table users add column username_key text collate "C";
create unique index users_username_key_idx on users (username_key);
drop index users_username_lower_key;
