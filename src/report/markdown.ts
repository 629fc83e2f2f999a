/**
 * The report as Markdown for CI comments and job summaries: the key metrics, the diff against
 * the previous run, per-class scores, the stage timeline, and links to the PNG charts (which
 * render where SVG does not). User text is escaped for Markdown tables.
 */
import type { ReportModel } from './model.js';
import { formatBytes, formatMetric, formatSigned } from './format.js';

/** Escapes text for a Markdown table cell (and inline HTML GitHub would render). */
export function escapeMarkdown(text: unknown): string {
  return String(text)
    .replace(/[\\`*_{}[\]()#+!|~]/g, (c) => `\\${c}`)
    .replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!)
    .replace(/\r?\n/g, ' ');
}

function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** The Markdown; `pngs` maps chart names to paths relative to the Markdown file. */
export function renderMarkdown(model: ReportModel, pngs: { name: string; title: string; path: string }[]): string {
  const r = model.run;
  const out: string[] = [];
  out.push(`## Run report: ${escapeMarkdown(r.pipeline)} — ${r.status}`);
  out.push(`Run \`${r.id}\`, started ${r.started}, ${r.seconds.toFixed(1)} s, backend ${escapeMarkdown(r.backend)}${r.previous ? `; compared with \`${r.previous}\`` : ''}.`);
  if (model.keyMetrics.length) {
    out.push('### Key metrics');
    out.push(
      table(
        ['stage', 'metric', 'value', 'previous', 'change'],
        model.keyMetrics.map((k) => [escapeMarkdown(k.stage), escapeMarkdown(k.metric), formatMetric(k.value, k.metric), k.before === undefined ? '' : formatMetric(k.before, k.metric), k.before === undefined || k.before === k.value ? '' : formatSigned(k.value - k.before, k.metric)]),
      ),
    );
  }
  out.push('### Changes since the previous run');
  if (!r.previous) out.push('First run of this pipeline: nothing to compare with.');
  else if (!model.changes.length) out.push(`No numeric metric changed since \`${r.previous}\`.`);
  else out.push(table(['stage', 'metric', 'before', 'after', 'change'], model.changes.map((c) => [escapeMarkdown(c.stage), escapeMarkdown(c.metric), formatMetric(c.before, c.metric), formatMetric(c.after, c.metric), formatSigned(c.after - c.before, c.metric)])));
  for (const e of model.evaluations) {
    out.push(`### Evaluation: ${escapeMarkdown(e.stage)} on ${escapeMarkdown(e.split)}`);
    out.push(`${e.records} records, accuracy ${formatMetric(e.accuracy, 'accuracy')}, loss ${formatMetric(e.loss, 'loss')}${e.macro ? `, macro F1 ${formatMetric(e.macro.f1, 'f1')}` : ''}; ${e.misclassified.total} misclassified.`);
    out.push(table(['class', 'precision', 'recall', 'F1', 'support'], e.perClass.map((c) => [escapeMarkdown(c.class), c.precision.toFixed(4), c.recall.toFixed(4), c.f1.toFixed(4), String(c.support)])));
  }
  for (const p of model.pruning) out.push(`**Model size (${escapeMarkdown(p.stage)})**: ${formatBytes(p.bytesBefore)} → ${formatBytes(p.bytesAfter)}${p.sparsity !== undefined ? ` at sparsity ${p.sparsity.toFixed(3)}` : ''}${p.valAccBefore !== undefined && p.valAccAfter !== undefined ? `, val accuracy ${p.valAccBefore.toFixed(4)} → ${p.valAccAfter.toFixed(4)}` : ''}.`);
  for (const i of model.ingest) {
    if (i.skipped.length || i.ignored.length) out.push(`**Ingest (${escapeMarkdown(i.stage)})**: ${i.skipped.length} skipped, ${i.ignored.length} ignored files (list: \`${i.reportPath}\`).`);
  }
  out.push('### Stages');
  out.push(table(['stage', 'status', 'seconds', 'engines'], model.timeline.map((t) => [escapeMarkdown(t.id), t.status, t.seconds.toFixed(2), escapeMarkdown(Object.entries(t.engines).map(([k, v]) => `${k}=${v}`).join(' '))])));
  if (pngs.length) {
    out.push('### Charts');
    out.push(pngs.map((p) => `![${escapeMarkdown(p.title)}](${p.path})`).join('\n'));
  }
  if (model.notes.length) out.push(model.notes.map((n) => `> ${escapeMarkdown(n)}`).join('\n'));
  return out.join('\n\n') + '\n';
}
