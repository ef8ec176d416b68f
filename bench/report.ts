/**
 * The printed report: one table of every scenario's figures beside their ceilings, with the
 * ratio, issue #10's target and PASS/FAIL; over several runs, the median of each figure and
 * the spread (min–max) of what is judged. Also the notes: errors and anomalies seen on the way.
 */

/** A target a figure must reach (issue #10). */
export interface Goal {
  /** What is judged: parley ÷ ceiling, or parley's own figure. */
  on: "ratio" | "parley";
  op: ">=" | "<=" | "<" | "=";
  value: number;
}

/** One row of the report; `null` where a side has no such figure or it could not be measured. */
export interface Figure {
  /** What is measured, with its unit; unique within its section (rows match across runs by it). */
  label: string;
  parley: number | null;
  ceiling: number | null;
  /** Decimals printed for parley and the ceiling (default 0). */
  digits?: number;
  /** Whether to print parley ÷ ceiling (default: when both are numbers). */
  ratio?: boolean;
  goal?: Goal;
}

/** The figures of one scenario. */
export interface Section {
  /** Stable across runs ("fanout-10x50"). */
  key: string;
  /** Printed above its rows: what ran and what the ceiling is. */
  title: string;
  figures: Figure[];
}

/** What one run produced. */
export interface RunResult {
  sections: Section[];
  notes: Notes;
  /** Wall time of the run, s. */
  seconds: number;
  /** Cores used by other processes just before the run. */
  backgroundCores: number;
}

/**
 * Errors and anomalies, by topic: every occurrence is counted, the first few of each topic
 * kept as samples (a misbehaving server can produce thousands of the same error).
 */
export class Notes {
  #topics = new Map<string, { count: number; samples: string[] }>();

  /** Records one occurrence of `topic`, keeping `text` as a sample while fewer than `keep`. */
  add(topic: string, text: string, keep = 5): void {
    let entry = this.#topics.get(topic);
    if (!entry) this.#topics.set(topic, entry = { count: 0, samples: [] });
    entry.count++;
    if (entry.samples.length < keep) entry.samples.push(text.slice(0, 400));
  }

  /** How many times `topic` was recorded. */
  count(topic: string): number {
    return this.#topics.get(topic)?.count ?? 0;
  }

  /** One line per sample, then "(N in all)" where samples were left out. */
  lines(): string[] {
    const lines: string[] = [];
    for (const [topic, { count, samples }] of this.#topics) {
      for (const sample of samples) lines.push(`${topic}: ${sample}`);
      if (count > samples.length) lines.push(`${topic}: (${count} in all)`);
    }
    return lines;
  }
}

/** The middle value (mean of the two middle ones for an even count); NaN for none. */
export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = values.toSorted((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function ratioOf(figure: Figure): number | null {
  const wanted = figure.ratio ?? true;
  if (!wanted || figure.parley === null || figure.ceiling === null) return null;
  const ratio = figure.parley / figure.ceiling;
  return Number.isFinite(ratio) ? ratio : null;
}

function judged(figure: Figure): number | null {
  if (!figure.goal) return null;
  return figure.goal.on === "ratio" ? ratioOf(figure) : figure.parley;
}

function meets(value: number | null, goal: Goal): boolean {
  if (value === null || !Number.isFinite(value)) return false;
  switch (goal.op) {
    case ">=":
      return value >= goal.value;
    case "<=":
      return value <= goal.value;
    case "<":
      return value < goal.value;
    case "=":
      return value === goal.value;
  }
}

function num(value: number | null, digits: number): string {
  if (value === null || !Number.isFinite(value)) return "-";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** Enough decimals to tell a ratio apart from its target. */
function ratioText(value: number | null): string {
  return value === null ? "" : `${num(value, value < 10 ? 3 : 1)}×`;
}

function goalText(goal: Goal | undefined): string {
  if (!goal) return "";
  const op = { ">=": "≥", "<=": "≤", "<": "<", "=": "=" }[goal.op];
  return goal.on === "ratio" ? `ratio ${op} ${goal.value}×` : `${op} ${goal.value}`;
}

/** A figure's values over all runs (null where a run did not have it). */
interface Row {
  figure: Figure;
  parley: (number | null)[];
  ceiling: (number | null)[];
  ratio: (number | null)[];
  judged: (number | null)[];
}

function medianOf(values: (number | null)[]): number | null {
  const present = values.filter((v): v is number => v !== null && Number.isFinite(v));
  return present.length ? median(present) : null;
}

/** Lines the table's rows, sections in the order they first ran, figures in their order. */
function collect(runs: RunResult[]): { section: Section; rows: Row[] }[] {
  const sections = new Map<string, { section: Section; rows: Map<string, Row> }>();
  runs.forEach((run, index) => {
    for (const section of run.sections) {
      let entry = sections.get(section.key);
      if (!entry) sections.set(section.key, entry = { section, rows: new Map() });
      for (const figure of section.figures) {
        let row = entry.rows.get(figure.label);
        if (!row) {
          const empty = () => Array<number | null>(runs.length).fill(null);
          row = { figure, parley: empty(), ceiling: empty(), ratio: empty(), judged: empty() };
          entry.rows.set(figure.label, row);
        }
        row.parley[index] = figure.parley;
        row.ceiling[index] = figure.ceiling;
        row.ratio[index] = ratioOf(figure);
        row.judged[index] = judged(figure);
      }
    }
  });
  return [...sections.values()].map(({ section, rows }) => ({ section, rows: [...rows.values()] }));
}

/**
 * How much a row moved between runs: the min–max of the judged value and how many runs met the
 * target, or of parley's figure for a row without a target.
 */
function spread(row: Row, runs: number): string {
  const { figure } = row;
  const values = (figure.goal ? row.judged : row.parley)
    .filter((v): v is number => v !== null && Number.isFinite(v));
  if (values.length === 0) return "";
  const decimals = figure.goal?.on === "ratio" ? 3 : figure.digits ?? 0;
  const range = `${num(Math.min(...values), decimals)}–${num(Math.max(...values), decimals)}`;
  if (!figure.goal) return range;
  const met = row.judged.filter((v) => meets(v, figure.goal!)).length;
  return `${range}${figure.goal.on === "ratio" ? "×" : ""} (${met}/${runs})`;
}

/** The verdict of every judged figure over the runs: how many targets were met on the median. */
export interface Verdict {
  passed: number;
  failed: number;
}

/**
 * Prints the table (medians over `runs` when there are several, with the min–max of the judged
 * value and how many runs met the target), then every run's notes. Returns the verdict.
 */
export function printReport(runs: RunResult[], header: string): Verdict {
  const many = runs.length > 1;
  const columns = ["metric", "parley", "ceiling", "ratio", "target", "result"];
  if (many) columns.push(`min–max of ${runs.length} runs (runs met)`);
  const table: (string[] | string)[] = [];
  const verdict: Verdict = { passed: 0, failed: 0 };
  for (const { section, rows } of collect(runs)) {
    table.push(section.title);
    for (const row of rows) {
      const { figure } = row;
      const digits = figure.digits ?? 0;
      const value = medianOf(row.judged);
      const cells = [
        `  ${figure.label}`,
        num(medianOf(row.parley), digits),
        num(medianOf(row.ceiling), digits),
        ratioText(medianOf(row.ratio)),
        goalText(figure.goal),
        "",
      ];
      if (figure.goal) {
        const ok = meets(value, figure.goal);
        cells[5] = ok ? "PASS" : "FAIL";
        if (ok) verdict.passed++;
        else verdict.failed++;
      }
      if (many) cells.push(spread(row, runs.length));
      table.push(cells);
    }
  }
  const widths = columns.map((name, i) =>
    Math.max(name.length, ...table.map((cells) => typeof cells === "string" ? 0 : cells[i].length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 || i >= 4 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ").trimEnd();
  console.log(`\n${header}`);
  console.log(line(columns));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const cells of table) console.log(typeof cells === "string" ? cells : line(cells));
  console.log(
    `\n${verdict.passed} targets met, ${verdict.failed} missed` +
      (many ? ` (judged on the median of ${runs.length} runs)` : ""),
  );
  runs.forEach((run, i) => {
    const lines = run.notes.lines();
    if (lines.length === 0) return;
    console.log(`\nnotes${many ? ` of run ${i + 1}` : ""}:`);
    for (const text of lines) console.log(`  ${text}`);
  });
  return verdict;
}
