/** Bounding text that came from a request before it goes into a log line or a response. */

/**
 * Cuts request-supplied text to at most `max` code points (never splitting a surrogate pair),
 * marks the cut with "…" and replaces lone surrogates, so that nothing from a request reaches a
 * log line or a response unbounded or malformed.
 */
export function clip(text: string, max = 120): string {
  // The common case: no more UTF-16 units than max, so no more code points either.
  if (text.length <= max) return text.isWellFormed() ? text : text.toWellFormed();
  // A slice of 4 × max UTF-16 units holds more than max code points whenever it cuts anything.
  const points = Array.from(text.length > 4 * max ? text.slice(0, 4 * max) : text);
  const kept = points.length > max ? `${points.slice(0, max).join("")}…` : points.join("");
  return kept.toWellFormed();
}
