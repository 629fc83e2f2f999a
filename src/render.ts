/**
 * Human rendering of validation issues, plans, stage lines and summaries (progress: progress-view.ts). Data in, strings out;
 * the CLI decides where they go.
 */
import path from 'node:path';
import type { ValidationIssue } from './runtime/errors.js';
import type { RunSummary, StageSummary } from './runtime/execute.js';
import type { Plan } from './runtime/plan.js';
import type { Json } from './runtime/types.js';

/** `file:line:col  path  message` per issue, with the source line under it. */
export function renderIssues(issues: ValidationIssue[]): string {
  const lines: string[] = [];
  for (const issue of issues) {
    const where = [issue.file, issue.line, issue.col].filter((v) => v !== undefined && v !== '').join(':');
    lines.push(`${where || '(command line)'}  ${issue.path || '-'}  ${issue.message}  [${issue.code}]`);
    if (issue.snippet !== undefined && issue.line !== undefined) {
      lines.push(`  ${String(issue.line).padStart(4)} | ${issue.snippet}`);
      if (issue.col) lines.push(`       | ${' '.repeat(Math.max(0, issue.col - 1))}^`);
    }
  }
  lines.push(`${issues.length} problem${issues.length === 1 ? '' : 's'} found; nothing was run or written.`);
  return lines.join('\n') + '\n';
}

export function renderPlan(plan: Plan): string {
  const width = Math.max(...plan.stages.map((p) => p.stage.id.length), 5);
  const lines = [`pipeline ${plan.pipeline.name} (${plan.pipeline.file})`];
  for (const planned of plan.stages) {
    const mark = planned.action === 'run' ? 'run   ' : 'cached';
    lines.push(`  ${mark}  ${planned.stage.id.padEnd(width)}  ${planned.stage.kind.padEnd(12)}  ${planned.key.slice(0, 12)}  ${planned.reasons.join('; ')}`);
  }
  const toRun = plan.stages.filter((p) => p.action === 'run').length;
  lines.push(`${toRun} to run, ${plan.stages.length - toRun} cached`);
  return lines.join('\n') + '\n';
}

export function formatMetrics(metrics: Record<string, Json>, max = 6): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(metrics)) {
    if (key === 'report') continue; // a file name, shown by stageLine as a path
    if (typeof value === 'number') parts.push(`${key}=${Number.isInteger(value) ? value : value.toFixed(4)}`);
    else if (typeof value === 'string' || typeof value === 'boolean') parts.push(`${key}=${value}`);
    if (parts.length >= max) break;
  }
  return parts.join(' ');
}

/** Where a stage's artifact lives, to point at files inside it (a `report` metric). */
export type EntryDirOf = (key: string) => string;

/**
 * One line per finished stage. A string metric `report` names a file inside the stage's artifact
 * that lists what the numbers count (ingest's skipped and ignored files); the line says where it is.
 */
export function stageLine(summary: StageSummary, entryDir?: EntryDirOf): string {
  const mark = { ran: '✓', cached: '=', failed: '✗', skipped: '-' }[summary.status];
  const detail = summary.error ? `${summary.error.message} [${summary.error.code}]` : formatMetrics(summary.metrics);
  const time = summary.status === 'ran' || summary.status === 'failed' ? ` ${summary.seconds.toFixed(1)}s` : '';
  const changes = Object.entries(summary.changes ?? {})
    .slice(0, 4)
    .map(([name, c]) => `${name} ${fmt(c.before)} -> ${fmt(c.after)}`);
  const report = typeof summary.metrics.report === 'string' && !summary.error ? `  (details: ${entryDir ? path.join(entryDir(summary.key), summary.metrics.report) : summary.metrics.report})` : '';
  return `${mark} ${summary.id} ${summary.status}${time}  ${detail}${report}${changes.length ? `  (vs previous run: ${changes.join(', ')})` : ''}`;
}

function fmt(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toFixed(4);
}

export function renderSummary(summary: RunSummary): string {
  const counts = summary.stages.reduce<Record<string, number>>((acc, s) => ({ ...acc, [s.status]: (acc[s.status] ?? 0) + 1 }), {});
  const parts = Object.entries(counts).map(([status, n]) => `${n} ${status}`);
  const warnings = (summary.warnings ?? []).map((w) => `⚠ ${w.stage}: ${w.message}\n`).join('');
  return `${warnings}${summary.status} in ${summary.seconds.toFixed(1)}s (${parts.join(', ')}; backend ${summary.backend}); run ${summary.run}\n`;
}
