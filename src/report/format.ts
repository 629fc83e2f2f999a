/** How the report writes numbers, shared by the HTML page and the Markdown. */

/** Bytes as `290,376 B (284 KiB)`. */
export function formatBytes(bytes: number): string {
  const kib = bytes / 1024;
  const short = kib >= 1024 ? `${(kib / 1024).toFixed(1)} MiB` : `${kib.toFixed(0)} KiB`;
  return `${bytes.toLocaleString('en-US')} B (${short})`;
}

/** A metric value: byte counts with separators, integers as they are, fractions to 4 places. */
export function formatMetric(value: number, metric: string): string {
  if (/bytes/.test(metric)) return value.toLocaleString('en-US');
  return Number.isInteger(value) ? String(value) : value.toFixed(4);
}

/** A difference with its sign (`+0.0033`, `-103,864`). */
export function formatSigned(value: number, metric: string): string {
  const text = formatMetric(Math.abs(value), metric);
  return value > 0 ? `+${text}` : value < 0 ? `-${text}` : '0';
}
