/**
 * Human rendering of validation issues, plans, stage lines and summaries (progress: progress-view.ts). Data in, strings out;
 * the CLI decides where they go.
 */
import path from 'node:path';
import type { ValidationIssue } from './runtime/errors.js';
import type { RunSummary, StageSummary } from './runtime/execute.js';
import { budgetOf, describeHalving } from './runtime/halving.js';
import { listSome } from './runtime/join.js';
import { describeMatrix, formatValue } from './runtime/matrix.js';
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

/**
 * `plan --json`: per stage its id, kind, action, key and reasons (and, for a branch of a sweep,
 * `branch: { template, coords }`; `pruned: true` for one its cached rungs stop); `matrix` with
 * the axes and each swept stage's branches.
 */
export function planJson(plan: Plan): Record<string, unknown> {
  const matrix = plan.pipeline.matrix;
  return {
    pipeline: plan.pipeline.name,
    ...(matrix ? { matrix: describeMatrix(matrix) } : {}),
    stages: plan.stages.map((p) => ({
      id: p.stage.id,
      uses: p.stage.kind,
      action: p.action,
      key: p.key,
      reasons: p.reasons,
      ...(p.pruned ? { pruned: true } : {}),
      ...(p.stage.template ? { branch: { template: p.stage.template, coords: p.stage.coords ?? {} } } : {}),
    })),
  };
}

export function renderPlan(plan: Plan): string {
  const width = Math.max(...plan.stages.map((p) => p.stage.id.length), 5);
  const lines = [`pipeline ${plan.pipeline.name} (${plan.pipeline.file})`];
  const matrix = plan.pipeline.matrix;
  if (matrix) {
    const count = matrix.axes.reduce((n, axis) => n * axis.values.length, 1);
    lines.push(`matrix: ${matrix.axes.map(describeAxis).join(' x ')} -> ${count} branch${count === 1 ? '' : 'es'}`);
    for (const [template, ids] of Object.entries(matrix.branches)) lines.push(`  ${template} -> ${ids.join(', ')}`);
  }
  for (const planned of plan.stages) {
    const mark = planned.pruned ? 'pruned' : planned.action === 'run' ? 'run   ' : 'cached';
    const coords = planned.stage.coords ? `[${formatCoords(planned.stage.coords)}]  ` : '';
    lines.push(`  ${mark}  ${planned.stage.id.padEnd(width)}  ${planned.stage.kind.padEnd(12)}  ${planned.key.slice(0, 12)}  ${coords}${planned.reasons.join('; ')}`);
  }
  for (const planned of plan.stages.filter((p) => p.stage.definition.join)) {
    lines.push(`${planned.stage.id} joins ${planned.stage.needs.length} branches: if some fail, it chooses among those that succeed (the run still fails); if all fail, it is skipped`);
    const spec = planned.stage.definition.halving?.(planned.stage.params);
    const full = plan.stages.find((p) => p.stage.id === planned.stage.needs[0]);
    if (spec && full?.stage.definition.budget) lines.push(`${planned.stage.id} halves them (successive halving, factor ${spec.factor}): ${describeHalving(spec, planned.stage.needs.length, budgetOf(full))}`);
  }
  const toRun = plan.stages.filter((p) => p.action === 'run').length;
  const pruned = plan.stages.filter((p) => p.pruned).length;
  lines.push(`${toRun} to run, ${plan.stages.length - toRun - pruned} cached${pruned ? `, ${pruned} pruned by cached rungs` : ''}`);
  return lines.join('\n') + '\n';
}

/** `fine-tune.lr [1e-4, 1e-5]` */
function describeAxis(axis: { stage: string; param: string; values: Json[] }): string {
  return `${axis.stage}.${axis.param} [${axis.values.map(formatValue).join(', ')}]`;
}

/** `blocks=2 lr=1e-4` */
export function formatCoords(coords: Record<string, Json>): string {
  return Object.entries(coords).map(([label, value]) => `${label}=${formatValue(value)}`).join(' ');
}

/**
 * The grid of a run's sweep, for `pipeline status`: the axes, then one row per branch with its
 * coordinates and value — from a joining stage's `table` metric (select's, with the chosen row
 * marked), or else the metrics of the last swept stage's branches. Empty when nothing was swept.
 */
export function renderGrid(summary: RunSummary, indent = '    '): string {
  if (!summary.matrix) return '';
  const { axes, branches } = summary.matrix;
  const labels = axes.map((a) => a.label);
  const lines = [`${indent}grid: ${axes.map(describeAxis).join(' x ')}`];
  type Row = { coords: Record<string, Json>; cells: string[] };
  const table = (title: string, rows: Row[]) => {
    const widths = labels.map((label) => Math.max(label.length, ...rows.map((r) => formatValue(r.coords[label] ?? '-').length)));
    const cellWidths = rows[0]?.cells.map((_, i) => Math.max(...rows.map((r) => r.cells[i]?.length ?? 0))) ?? [];
    lines.push(`${indent}  ${title}`);
    lines.push(`${indent}    ${labels.map((l, i) => l.padEnd(widths[i])).join('  ')}`.trimEnd());
    for (const row of rows) lines.push(`${indent}    ${labels.map((l, i) => formatValue(row.coords[l] ?? '-').padEnd(widths[i])).join('  ')}  ${row.cells.map((c, i) => c.padEnd(cellWidths[i])).join('  ')}`.trimEnd());
  };
  const joins = summary.stages.filter((s) => Array.isArray(s.metrics.table));
  for (const join of joins) {
    const metric = String(join.metrics.metric ?? 'value');
    const rows = (join.metrics.table as { id: string; coords: Record<string, Json>; value: number; passed: boolean }[]).map((row) => ({
      coords: row.coords ?? {},
      cells: [`${metric}=${fmt(row.value)}`, row.id, row.id === join.metrics.chosen ? '<- chosen' : row.passed === false ? '(below the gate)' : ''],
    }));
    // A halving select's pruned branches, with their value where they stopped.
    const pruned = Array.isArray(join.metrics.pruned) ? (join.metrics.pruned as unknown as { id: string; coords?: Record<string, Json>; value: number | null; budget: number; of: number }[]) : [];
    for (const row of pruned) rows.push({ coords: row.coords ?? {}, cells: [`${metric}=${row.value === null ? '-' : fmt(row.value)}`, row.id, `(pruned after ${row.budget} of ${row.of} epochs)`] });
    const failed = failedRowsOf(join);
    for (const row of failed) rows.push({ coords: row.coords ?? {}, cells: [`${metric}=-`, row.id, `(${describeFailedRow(row)})`] });
    const among = failed.length ? ` among ${rows.length - failed.length} of ${rows.length} branches` : pruned.length ? `, halving: ${pruned.length} of ${rows.length} branches pruned` : '';
    table(`${join.id} (${join.uses}): ${join.status === 'failed' ? `failed: ${join.error?.message ?? ''}` : `chose ${join.metrics.chosen} by ${metric} (${join.metrics.mode ?? 'max'})${among}`}`, rows);
  }
  const last = Object.keys(branches).at(-1);
  if (!joins.length && last) {
    const rows = summary.stages.filter((s) => s.branch?.template === last).map((s) => ({ coords: s.branch!.coords, cells: [s.status, formatMetrics(s.metrics, 3)] }));
    table(`${last}: ${rows.length} branches`, rows);
  }
  return lines.join('\n') + '\n';
}

/** A branch a join went without (select's `failed` metric). */
interface FailedRowMetric {
  id: string;
  coords?: Record<string, Json>;
  status: string;
  stage: string;
  code: string;
  message: string;
}

function failedRowsOf(join: StageSummary): FailedRowMetric[] {
  return Array.isArray(join.metrics.failed) ? (join.metrics.failed as unknown as FailedRowMetric[]) : [];
}

/** `failed [fake_failure]`, or `skipped: 'tune-lr-0p1' failed [fake_failure]`. */
function describeFailedRow(row: FailedRowMetric): string {
  if (row.status === 'failed') return `failed [${row.code}]`;
  return row.stage === row.id ? `skipped [${row.code}]` : `skipped: '${row.stage}' failed [${row.code}]`;
}

/**
 * One line per joining stage that went without some branches: what it chose among how many,
 * and which failed, so a run that failed only in some branches still says what it delivered.
 */
export function renderJoins(summary: RunSummary): string {
  return summary.stages
    .filter((s) => (s.status === 'ran' || s.status === 'cached') && failedRowsOf(s).length)
    .map((join) => {
      const failed = failedRowsOf(join);
      const total = Number(join.metrics.branches ?? failed.length);
      return `${join.id} chose ${join.metrics.chosen} among the ${total - failed.length} of ${total} branches that succeeded; failed: ${listSome(failed.map((row) => `${row.id} (${describeFailedRow(row)}: ${row.message})`))}\n`;
    })
    .join('');
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
  const mark = { ran: '✓', cached: '=', failed: '✗', skipped: '-', pruned: '✂' }[summary.status];
  const detail = summary.error ? `${summary.error.message} [${summary.error.code}]` : formatMetrics(summary.metrics);
  const time = summary.status === 'ran' || summary.status === 'failed' || summary.status === 'pruned' ? ` ${summary.seconds.toFixed(1)}s` : '';
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
  return `${warnings}${renderJoins(summary)}${summary.status} in ${summary.seconds.toFixed(1)}s (${parts.join(', ')}; backend ${summary.backend}); run ${summary.run}\n`;
}
