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

/**
 * Which way a metric is better: 1 higher (accuracy, F1, AUC), -1 lower (loss, bytes, time, an
 * accuracy drop), 0 neither (epochs run, steps): the report colours a change only when it knows.
 */
export function betterDirection(metric: string): 1 | -1 | 0 {
  if (/loss|bytes|seconds|latency|drop|macs/.test(metric)) return -1;
  if (/acc|precision|recall|f1|auc/.test(metric)) return 1;
  return 0;
}
