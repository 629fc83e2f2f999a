/**
 * The report's charts: Vega-Lite specs built from the `ReportModel` (pure, testable), compiled
 * with vega-lite and rendered to SVG by vega's headless `View.toSVG()` (no canvas, no browser),
 * and copied to PNG with sharp for places that cannot show SVG (CI comments, mail).
 */
import type { TopLevelSpec } from 'vega-lite';
import type { ReportModel } from './model.js';

/** One chart: a stable file-safe name, a title, and its Vega-Lite spec. */
export interface ChartSpec {
  /** `[a-z0-9-]+`: the PNG is `<assets>/<name>.png`. */
  name: string;
  title: string;
  spec: TopLevelSpec;
}

/** A chart drawn. */
export interface RenderedChart extends ChartSpec {
  svg: string;
}

const STATUS_COLORS = { domain: ['ran', 'cached', 'failed', 'skipped', 'pruned'], range: ['#2f7ed8', '#8bbf5a', '#d9534f', '#aaaaaa', '#e0a040'] };
const CONFIG = { font: 'sans-serif', view: { stroke: '#ddd' }, axis: { labelFontSize: 11, titleFontSize: 12 }, legend: { labelFontSize: 11 } };
const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
/**
 * The train/val legend as dashed strokes: vega-lite passes `encode` through to vega (the stroke
 * would be unset otherwise, as the symbols take the line's color channel), but its types omit it.
 */
const STROKE_LEGEND = { symbolType: 'stroke', symbolStrokeWidth: 2, symbolSize: 300, encode: { symbols: { update: { stroke: { value: '#333' }, fill: { value: 'transparent' } } } } } as never;

/** A file-safe name for a stage-specific chart (stage ids are `[a-z][a-z0-9-]*` already; be safe anyway). */
function safeName(text: string): string {
  return text.toLowerCase().replace(/[^a-z0-9-]+/g, '-');
}

/** The specs of every chart the model has data for, in page order (curves, confusion, size, timeline). */
export function buildChartSpecs(model: ReportModel): ChartSpec[] {
  const charts: ChartSpec[] = [];
  const rows = model.curves.flatMap((c) =>
    c.points.flatMap((p) => [
      { epoch: p.epoch, stage: c.stage, split: 'train', loss: p.loss, accuracy: p.acc, stageEpoch: p.stageEpoch },
      ...(p.valLoss !== undefined || p.valAcc !== undefined ? [{ epoch: p.epoch, stage: c.stage, split: 'val', loss: p.valLoss ?? null, accuracy: p.valAcc ?? null, stageEpoch: p.stageEpoch }] : []),
    ]),
  );
  if (rows.length) {
    for (const [metric, title] of [['loss', 'Loss per epoch'], ['accuracy', 'Accuracy per epoch']] as const) {
      charts.push({
        name: `curves-${metric}`,
        title,
        spec: {
          $schema: SCHEMA,
          config: CONFIG,
          width: 560,
          height: 240,
          title,
          data: { values: rows.filter((r) => r[metric] !== null) },
          mark: { type: 'line', point: { size: 18 } },
          encoding: {
            x: { field: 'epoch', type: 'quantitative', title: 'epoch (all training stages in run order)', axis: { tickMinStep: 1 } },
            y: { field: metric, type: 'quantitative', title: metric, scale: { zero: false } },
            color: { field: 'stage', type: 'nominal', sort: model.curves.map((c) => c.stage), title: 'stage' },
            strokeDash: { field: 'split', type: 'nominal', title: 'split', scale: { domain: ['train', 'val'], range: [[1, 0], [5, 3]] }, legend: STROKE_LEGEND },
            detail: { field: 'split' },
            tooltip: [{ field: 'stage' }, { field: 'stageEpoch', title: 'epoch in stage' }, { field: 'split' }, { field: metric, format: '.4f' }],
          },
        },
      });
    }
  }
  for (const e of model.evaluations) {
    const cells = e.confusion.flatMap((row, i) => row.map((count, j) => ({ truth: e.classes[i], predicted: e.classes[j], count, share: row.reduce((a, b) => a + b, 0) ? count / row.reduce((a, b) => a + b, 0) : 0 })));
    const side = Math.min(480, Math.max(160, 40 * e.classes.length));
    charts.push({
      name: `confusion-${safeName(e.stage)}`,
      title: `Confusion matrix (${e.stage}, ${e.split})`,
      spec: {
        $schema: SCHEMA,
        config: CONFIG,
        width: side,
        height: side,
        title: `Confusion matrix: ${e.stage} on ${e.split}`,
        data: { values: cells },
        encoding: {
          x: { field: 'predicted', type: 'nominal', sort: e.classes, title: 'predicted class', axis: { labelAngle: e.classes.length > 6 ? -45 : 0 } },
          y: { field: 'truth', type: 'nominal', sort: e.classes, title: 'true class' },
        },
        layer: [
          { mark: 'rect', encoding: { color: { field: 'share', type: 'quantitative', title: 'share of row', scale: { scheme: 'blues', domain: [0, 1] } } } },
          {
            mark: { type: 'text', fontSize: e.classes.length > 12 ? 8 : 12 },
            encoding: { text: { field: 'count', type: 'quantitative' }, color: { condition: { test: 'datum.share > 0.5', value: 'white' }, value: 'black' } },
          },
        ],
      },
    });
  }
  if (model.modelSizes.length) {
    charts.push({
      name: 'model-size',
      title: 'Model weight bytes per stage',
      spec: {
        $schema: SCHEMA,
        config: CONFIG,
        width: 560,
        height: { step: 22 },
        title: 'Weight bytes of each model stage (pruning shrinks them)',
        data: { values: model.modelSizes.map((m, order) => ({ stage: m.stage, kind: m.kind, bytes: m.weightBytes, order })) },
        encoding: {
          y: { field: 'stage', type: 'nominal', sort: model.modelSizes.map((m) => m.stage), title: null },
          x: { field: 'bytes', type: 'quantitative', title: 'weight bytes' },
          tooltip: [{ field: 'stage' }, { field: 'kind' }, { field: 'bytes', format: ',' }],
        },
        layer: [
          { mark: { type: 'bar', color: '#4c78a8' } },
          { mark: { type: 'text', align: 'left', dx: 4, fontSize: 11 }, encoding: { text: { field: 'bytes', type: 'quantitative', format: ',' } } },
        ],
      },
    });
  }
  // A cached stage takes ~0 s: it gets a sliver (1% of the run) so its status still shows.
  const sliver = Math.max(0.005, model.run.seconds / 100);
  const timed = model.timeline.map((t, order) => ({ stage: t.id, status: t.status, start: t.start ?? 0, end: (t.start ?? 0) + Math.max(t.seconds, sliver), seconds: t.seconds, order }));
  if (timed.length) {
    charts.push({
      name: 'timeline',
      title: 'Stage timeline',
      spec: {
        $schema: SCHEMA,
        config: CONFIG,
        width: 560,
        height: { step: 18 },
        title: 'Stage timeline (seconds from the run start)',
        data: { values: timed },
        mark: { type: 'bar', minBandSize: 2 } as never,
        encoding: {
          y: { field: 'stage', type: 'nominal', sort: { field: 'order' }, title: null },
          x: { field: 'start', type: 'quantitative', title: 'seconds' },
          x2: { field: 'end' },
          color: { field: 'status', type: 'nominal', scale: STATUS_COLORS, title: 'status' },
          tooltip: [{ field: 'stage' }, { field: 'status' }, { field: 'seconds', format: '.2f' }],
        },
      },
    });
  }
  return charts;
}

/** Draws each spec to SVG with vega's headless renderer. */
export async function renderCharts(specs: ChartSpec[]): Promise<RenderedChart[]> {
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  const out: RenderedChart[] = [];
  for (const chart of specs) {
    const view = new vega.View(vega.parse(vegaLite.compile(chart.spec).spec), { renderer: 'none' });
    try {
      out.push({ ...chart, svg: await view.toSVG() });
    } finally {
      view.finalize();
    }
  }
  return out;
}

/** A PNG of an SVG chart (sharp renders SVG through librsvg), at twice the size for sharp text. */
export async function chartPng(svg: string): Promise<Buffer> {
  const { default: sharp } = await import('sharp');
  return sharp(Buffer.from(svg), { density: 144 }).flatten({ background: '#ffffff' }).png().toBuffer();
}
