/**
 * The report as one self-contained HTML page: inline CSS, the charts as inline SVG, thumbnails
 * as `data:` URIs, no script and nothing fetched. Every text that comes from a user (class
 * names, file names, stage ids, error messages) goes through `escapeHtml`.
 */
import type { RenderedChart } from './charts.js';
import type { EvaluationView, ReportModel } from './model.js';
import { betterDirection, formatBytes, formatMetric, formatSigned } from './format.js';

/** Escapes text for HTML element content and double-quoted attribute values. */
export function escapeHtml(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const CSS = `
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto; max-width: 1100px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; } th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; } th { background: #f4f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } code, .path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.meta { color: #555; } .status { font-weight: 600; padding: 1px 8px; border-radius: 10px; }
.status-succeeded, .status-ran { background: #e3f0fb; color: #1b5e9a; } .status-cached { background: #eaf4e0; color: #3f6b1d; }
.status-failed, .status-interrupted { background: #fbe3e3; color: #9a1b1b; } .status-skipped { background: #eee; color: #555; }
.up { color: #2e7d32; } .down { color: #c62828; } figure.chart { margin: 8px 0 16px; } figure.chart svg { max-width: 100%; height: auto; }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; } .thumb { width: 120px; font-size: 11px; } .thumb img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc; background: #fff; display: block; }
.note { color: #7a5b00; background: #fff8e1; padding: 4px 8px; margin: 4px 0; }
`;

/** The whole page. `charts` are the drawn charts by name (`buildChartSpecs` names). */
export function renderHtml(model: ReportModel, charts: RenderedChart[]): string {
  const chart = (name: string) => {
    const c = charts.find((x) => x.name === name);
    return c ? `<figure class="chart" data-chart="${escapeHtml(c.name)}">${c.svg}</figure>` : '';
  };
  const r = model.run;
  const parts: string[] = [];
  parts.push(`<h1>Run report: ${escapeHtml(r.pipeline)}</h1>`);
  parts.push(
    `<p class="meta">run <code>${escapeHtml(r.id)}</code> · <span class="status status-${escapeHtml(r.status)}">${escapeHtml(r.status)}</span> · started ${escapeHtml(r.started)} · ${r.seconds.toFixed(1)} s · backend ${escapeHtml(r.backend)}${r.previous ? ` · compared with <code>${escapeHtml(r.previous)}</code>` : ''}</p>`,
  );
  parts.push(section('Key metrics', keyMetricsTable(model)));
  parts.push(section('Changes since the previous run', changesTable(model)));
  if (model.curves.length) parts.push(section('Training curves', `<p class="meta">stages: ${model.curves.map((c) => `${escapeHtml(c.stage)} (${c.points.length} epochs)`).join(', ')}; solid = train, dashed = validation</p>${chart('curves-loss')}${chart('curves-accuracy')}`));
  for (const e of model.evaluations) parts.push(section(`Evaluation: ${e.stage} on ${e.split}`, evaluationBody(e, chart(`confusion-${e.stage.toLowerCase().replace(/[^a-z0-9-]+/g, '-')}`))));
  if (model.modelSizes.length || model.pruning.length) parts.push(section('Model size', `${chart('model-size')}${modelSizeTables(model)}`));
  for (const i of model.ingest) parts.push(section(`Ingest: ${i.stage}`, ingestBody(i)));
  parts.push(section('Stage timeline', `${chart('timeline')}${timelineTable(model)}`));
  if (model.notes.length) parts.push(section('Notes', model.notes.map((n) => `<p class="note">${escapeHtml(n)}</p>`).join('')));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(`${r.pipeline} ${r.id}`)}</title><style>${CSS}</style></head>
<body>
${parts.join('\n')}
</body></html>
`;
}

function section(title: string, body: string): string {
  return `<section><h2>${escapeHtml(title)}</h2>\n${body}\n</section>`;
}

function table(head: string[], rows: string[][], numeric: number[] = []): string {
  if (!rows.length) return '';
  const cell = (value: string, i: number, tag: string) => `<${tag}${numeric.includes(i) && tag === 'td' ? ' class="num"' : ''}>${value}</${tag}>`;
  return `<table><thead><tr>${head.map((h, i) => cell(escapeHtml(h), i, 'th')).join('')}</tr></thead><tbody>${rows.map((row) => `<tr>${row.map((v, i) => cell(v, i, 'td')).join('')}</tr>`).join('')}</tbody></table>`;
}

function delta(before: number | undefined, after: number, metric: string): string {
  if (before === undefined) return '';
  const d = after - before;
  const direction = betterDirection(metric);
  const tone = d === 0 || direction === 0 ? '' : d * direction > 0 ? ' class="up"' : ' class="down"';
  return `<span${tone}>${escapeHtml(formatSigned(d, metric))}</span>`;
}

function keyMetricsTable(model: ReportModel): string {
  if (!model.keyMetrics.length) return '<p class="meta">no metrics recorded</p>';
  return table(
    ['stage', 'metric', 'value', 'previous run', 'change'],
    model.keyMetrics.map((k) => [escapeHtml(k.stage), escapeHtml(k.metric), escapeHtml(formatMetric(k.value, k.metric)), k.before === undefined ? '' : escapeHtml(formatMetric(k.before, k.metric)), k.before === k.value ? '' : delta(k.before, k.value, k.metric)]),
    [2, 3, 4],
  );
}

function changesTable(model: ReportModel): string {
  if (!model.run.previous) return '<p class="meta">first run of this pipeline: nothing to compare with</p>';
  if (!model.changes.length) return `<p class="meta">no numeric metric changed since <code>${escapeHtml(model.run.previous)}</code></p>`;
  return table(
    ['stage', 'metric', 'before', 'after', 'change'],
    model.changes.map((c) => [escapeHtml(c.stage), escapeHtml(c.metric), escapeHtml(formatMetric(c.before, c.metric)), escapeHtml(formatMetric(c.after, c.metric)), delta(c.before, c.after, c.metric)]),
    [2, 3, 4],
  );
}

function evaluationBody(e: EvaluationView, confusionChart: string): string {
  const facts = [`${e.records} records`, `accuracy ${formatMetric(e.accuracy, 'accuracy')}`, `loss ${formatMetric(e.loss, 'loss')}`];
  if (e.macro) facts.push(`macro F1 ${formatMetric(e.macro.f1, 'f1')}`);
  if (e.rocAuc !== undefined) facts.push(`ROC-AUC ${formatMetric(e.rocAuc, 'roc_auc')}`);
  const perClass = table(
    ['class', 'precision', 'recall', 'F1', 'support'],
    e.perClass.map((c) => [escapeHtml(c.class), c.precision.toFixed(4), c.recall.toFixed(4), c.f1.toFixed(4), String(c.support)]),
    [1, 2, 3, 4],
  );
  const shown = e.misclassified.records.filter((m) => m.thumbnail);
  const thumbs = shown
    .map((m) => {
      const t = m.thumbnail!;
      const img = 'uri' in t ? `<img src="${t.uri}" alt="${escapeHtml(m.file ?? `record ${m.index}`)}" title="${t.source === 'record' ? 'preprocessed record (the original file is gone)' : 'original image'}">` : `<div class="note">${escapeHtml(t.missing)}</div>`;
      return `<div class="thumb">${img}<div class="path">${escapeHtml(m.file ?? `#${m.index}`)}</div><div>true <b>${escapeHtml(m.label)}</b><br>predicted <b>${escapeHtml(m.predicted)}</b> ${m.probability.toFixed(2)}</div></div>`;
    })
    .join('');
  const rest = e.misclassified.records.length - shown.length;
  const unlisted = e.misclassified.total - e.misclassified.listed;
  const misclassified = e.misclassified.total
    ? `<h3>Misclassified (${e.misclassified.total} of ${e.records})</h3><div class="thumbs">${thumbs}</div>${rest > 0 ? `<p class="meta">${rest} more listed in evaluation.json without a thumbnail</p>` : ''}${unlisted > 0 ? `<p class="meta">${unlisted} more not listed (evaluate lists at most ${e.misclassified.listed})</p>` : ''}`
    : '<h3>Misclassified</h3><p class="meta">none</p>';
  return `<p>${facts.map(escapeHtml).join(' · ')}</p>${confusionChart}<h3>Per class</h3>${perClass}${misclassified}`;
}

function modelSizeTables(model: ReportModel): string {
  const sizes = table(
    ['stage', 'kind', 'params', 'trainable', 'weight bytes'],
    model.modelSizes.map((m) => [escapeHtml(m.stage), escapeHtml(m.kind), m.params?.toLocaleString('en-US') ?? '', m.trainableParams?.toLocaleString('en-US') ?? '', escapeHtml(formatBytes(m.weightBytes))]),
    [2, 3, 4],
  );
  const pruning = model.pruning
    .map((p) =>
      table(
        ['', 'before', 'after'],
        [
          ['weight bytes', escapeHtml(formatBytes(p.bytesBefore)), escapeHtml(`${formatBytes(p.bytesAfter)} (${((100 * p.bytesAfter) / p.bytesBefore).toFixed(0)}%)`)],
          ['params (nonzero)', p.paramsBefore?.toLocaleString('en-US') ?? '', `${p.paramsAfter?.toLocaleString('en-US') ?? ''}${p.nonzeroParamsAfter !== undefined ? ` (${p.nonzeroParamsAfter.toLocaleString('en-US')})` : ''}`],
          ['latency ms', p.latencyMsBefore?.toFixed(3) ?? '', p.latencyMsAfter?.toFixed(3) ?? ''],
          ['val accuracy', p.valAccBefore?.toFixed(4) ?? '', p.valAccAfter?.toFixed(4) ?? ''],
        ],
        [1, 2],
      ).replace('<table>', `<table><caption>${escapeHtml(`${p.stage}: ${p.method ?? 'pruning'}${p.sparsity !== undefined ? `, sparsity ${p.sparsity.toFixed(3)}` : ''}`)}</caption>`),
    )
    .join('');
  return sizes + pruning;
}

function ingestBody(i: ReportModel['ingest'][number]): string {
  const counts = table(
    ['split', ...i.classes, 'total'],
    i.splits.map((s) => [escapeHtml(s.split), ...s.perClass.map(String), String(s.total)]),
    i.classes.map((_, n) => n + 1).concat(i.classes.length + 1),
  );
  const list = (title: string, items: { path: string; reason: string }[]) =>
    items.length ? `<h3>${escapeHtml(title)} (${items.length})</h3>${table(['file', 'reason'], items.slice(0, 200).map((s) => [`<span class="path">${escapeHtml(s.path)}</span>`, escapeHtml(s.reason)]))}${items.length > 200 ? `<p class="meta">${items.length - 200} more in report.json</p>` : ''}` : '';
  const facts = `<p class="meta">${i.skipped.length} skipped · ${i.ignored.length} ignored · ${i.emptyClasses} empty classes · ${i.missingFromSplit} classes missing from a split · ${i.duplicates} duplicates across splits · full list: <span class="path">${escapeHtml(i.reportPath)}</span></p>`;
  return `${counts}${facts}${list('Skipped files', i.skipped)}${list('Ignored files', i.ignored)}${i.notes.map((n) => `<p class="note">${escapeHtml(n)}</p>`).join('')}`;
}

function timelineTable(model: ReportModel): string {
  return table(
    ['stage', 'kind', 'status', 'start s', 'seconds', 'engines', 'why', 'artifact'],
    model.timeline.map((t) => [
      escapeHtml(t.id),
      escapeHtml(t.uses),
      `<span class="status status-${escapeHtml(t.status)}">${escapeHtml(t.status)}</span>`,
      t.start === undefined ? '' : t.start.toFixed(2),
      t.seconds.toFixed(2),
      escapeHtml(Object.entries(t.engines).map(([k, v]) => `${k}=${v}`).join(' ')),
      escapeHtml([...t.reasons, ...(t.error ? [t.error] : [])].join('; ')),
      `<span class="path">${escapeHtml(t.dir)}</span>`,
    ]),
    [3, 4],
  );
}
