/**
 * `pipeline report [RUN] [--out FILE] [--artifacts DIR] [--json]`: a run's report as one
 * self-contained HTML page (default `runs/<run-id>/report.html` in the store), `report.md`
 * beside it for CI comments, and PNG copies of the charts in `report-assets/`. Prints the
 * page's path (or, with `--json`, one object naming every file written).
 */
import { refusePseudoLocation } from '../runtime/fsutil.js';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../runtime/errors.js';
import { ArtifactStore } from '../runtime/store.js';
import { buildChartSpecs, chartPng, renderCharts } from '../report/charts.js';
import { collectRun, findRun } from '../report/collect.js';
import { renderHtml } from '../report/html.js';
import { renderMarkdown } from '../report/markdown.js';
import { buildReportModel, type ReportModel } from '../report/model.js';
import { attachThumbnails } from '../report/thumbnails.js';

/** What `pipeline report` wrote. */
export interface ReportFiles {
  run: string;
  pipeline: string;
  status: string;
  /** Absolute path of the HTML page. */
  html: string;
  /** Absolute path of the Markdown beside it. */
  markdown: string;
  /** The PNG copy of each chart. */
  charts: { name: string; title: string; png: string }[];
  /** What the report could not show (`ReportModel.notes`). */
  notes: string[];
}

/** Builds and writes the report of run `requested` (default the newest run) in the store at `artifacts`. */
export async function writeRunReport(artifacts: string, requested: string | undefined, out: string | undefined): Promise<ReportFiles & { model: ReportModel }> {
  const store = new ArtifactStore(artifacts);
  if (out) refusePseudoLocation(out, '--out');
  const summary = await findRun(store, requested);
  const inputs = await collectRun(store, summary);
  await attachThumbnails(inputs);
  const model = buildReportModel(inputs);
  const charts = await renderCharts(buildChartSpecs(model));

  const html = out ? path.resolve(out) : path.join(inputs.runDir, 'report.html');
  if (out && html.endsWith(path.sep)) throw new UsageError(`--out ${out}: name a file (e.g. ${path.join(out, 'report.html')}), not a folder`);
  const base = path.basename(html).replace(/\.html?$/i, '');
  const dir = path.dirname(html);
  const markdown = path.join(dir, `${base}.md`);
  const assets = path.join(dir, `${base}-assets`);
  await mkdir(dir, { recursive: true });
  // A report written again replaces the charts of the last one (a chart that no longer exists must not linger).
  await rm(assets, { recursive: true, force: true });
  await mkdir(assets, { recursive: true });
  const pngs: ReportFiles['charts'] = [];
  for (const chart of charts) {
    const png = path.join(assets, `${chart.name}.png`);
    await writeFile(png, await chartPng(chart.svg));
    pngs.push({ name: chart.name, title: chart.title, png });
  }
  await writeFile(html, renderHtml(model, charts));
  const relative = (file: string) => path.relative(dir, file).split(path.sep).join('/');
  await writeFile(markdown, renderMarkdown(model, pngs.map((p) => ({ name: p.name, title: p.title, path: relative(p.png) }))));
  return { run: summary.run, pipeline: summary.pipeline, status: summary.status, html, markdown, charts: pngs, notes: model.notes, model };
}

/** The command: returns the exit code (errors are thrown for the CLI to map). */
export async function commandReport(rest: string[], values: { json?: boolean; out?: string }, artifacts: string, io: { stdout(text: string): void; stderr(text: string): void }): Promise<number> {
  if (rest.length > 1) throw new UsageError(`report takes at most one run id, got ${rest.length} (${rest.join(' ')})`);
  const { model: _model, ...files } = await writeRunReport(artifacts, rest[0], values.out);
  if (values.json) io.stdout(JSON.stringify(files) + '\n');
  else {
    io.stdout(`${files.html}\n`);
    io.stderr(`report of run ${files.run} (${files.pipeline}, ${files.status}); Markdown: ${files.markdown}; ${files.charts.length} chart PNGs in ${path.dirname(files.charts[0]?.png ?? files.markdown)}\n`);
  }
  return 0;
}
