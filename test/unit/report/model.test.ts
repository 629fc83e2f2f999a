/**
 * The report model on literal inputs: which sections appear with which data, what is said when
 * data is missing, and that user text (class names, file names, stage errors) is escaped in the
 * HTML, in the charts' SVG and in the Markdown.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { RunSummary, StageSummary } from '../../../src/runtime/execute.js';
import { buildChartSpecs, renderCharts } from '../../../src/report/charts.js';
import { readStartOffsets, type ReportInputs, type StageArtifact } from '../../../src/report/collect.js';
import { escapeHtml, renderHtml } from '../../../src/report/html.js';
import { escapeMarkdown, renderMarkdown } from '../../../src/report/markdown.js';
import { buildReportModel } from '../../../src/report/model.js';
import { testdir } from '../../fixtures/testdir.js';

const EVIL = '<script>alert("x")</script>';
const EVIL_FILE = 'val/a&b"<img src=x onerror=alert(1)>|.png';

function stage(id: string, uses: string, metrics: StageSummary['metrics'] = {}, extra: Partial<StageSummary> = {}): StageSummary {
  return { id, uses, status: 'ran', key: `${id}-key`, seconds: 1.5, metrics, reasons: ['no cached result (first run of this stage)'], ...extra };
}

function artifact(summary: StageSummary, fields: Partial<StageArtifact> = {}): StageArtifact {
  return { summary, dir: `/store/cache/${summary.key}`, present: true, files: [], startOffset: 0.5, ...fields };
}

function inputs(overrides: { stages?: StageArtifact[]; previous?: RunSummary; summary?: Partial<RunSummary> } = {}): ReportInputs {
  const history = (n: number) => Array.from({ length: n }, (_, epoch) => ({ epoch, loss: 1 / (epoch + 1), acc: 0.5 + epoch / 10, valLoss: 1.1 / (epoch + 1), valAcc: 0.45 + epoch / 10, lr: 0.01, seconds: 0.1 }));
  const stages = overrides.stages ?? [
    artifact(stage('ingest', 'ingest', { images: 8 }), {
      dataset: { root: '/data', classes: ['cat', EVIL], counts: { train: 6, val: 2 }, classCounts: { train: [3, 3], val: [1, 1], test: [0, 0] } },
      ingestReport: { skipped: [{ path: EVIL_FILE, reason: 'truncated: Premature end of JPEG file' }], ignored: [], emptyClasses: [], missingFromSplit: [], duplicates: [], notes: [] },
    }),
    artifact(stage('head', 'train-head', { epochs_run: 3, val_acc: 0.65, val_loss: 0.4 }), { history: history(3), model: { params: 100, trainableParams: 10, weightBytes: 400 } }),
    artifact(stage('tune', 'fine-tune', { epochs_run: 2, val_acc: 0.7, val_loss: 0.3 }, { changes: { val_acc: { before: 0.6, after: 0.7 } } }), { history: history(2), model: { params: 100, trainableParams: 60, weightBytes: 400 } }),
    artifact(stage('prune', 'prune', { method: 'magnitude', sparsity: 0.5, bytes_before: 400, bytes_after: 260, val_acc_before: 0.7, val_acc_after: 0.69, epochs_run: 1 }), { history: history(1), model: { params: 100, weightBytes: 260 } }),
    artifact(stage('eval', 'evaluate', { accuracy: 0.5, loss: 0.9 }), {
      evaluation: {
        split: 'val',
        records: 2,
        classes: ['cat', EVIL],
        accuracy: 0.5,
        loss: 0.9,
        roc_auc: 0.75,
        macro: { precision: 0.5, recall: 0.5, f1: 0.5 },
        per_class: [
          { class: 'cat', precision: 1, recall: 0.5, f1: 0.667, support: 1 },
          { class: EVIL, precision: 0, recall: 0, f1: 0, support: 1 },
        ],
        confusion: { matrix: [[1, 0], [1, 0]] },
        misclassified: { total: 1, listed: 1, records: [{ index: 1, file: EVIL_FILE, label: EVIL, predicted: 'cat', probability: 0.8 }] },
      },
    }),
  ];
  const summary: RunSummary = {
    pipeline: 'pets',
    run: '20261201-000000000-abcd',
    status: 'succeeded',
    backend: 'wasm',
    started: '2026-12-01T00:00:00.000Z',
    seconds: 7.5,
    stages: stages.map((s) => s.summary),
    engines: { head: { frozen: 'onnxruntime', train: 'tfjs' } },
    ...overrides.summary,
  };
  return { summary, runDir: '/store/runs/x', stages, previous: overrides.previous, thumbnails: { 'eval:1': { uri: 'data:image/png;base64,iVBORw0KGgo=', source: 'image' } } };
}

describe('buildReportModel', () => {
  it('has every section when the run holds its data', () => {
    const model = buildReportModel(inputs());
    // Curves run on one epoch axis across the training stages, in run order.
    expect(model.curves.map((c) => [c.stage, c.points.map((p) => p.epoch)])).toEqual([['head', [1, 2, 3]], ['tune', [4, 5]], ['prune', [6]]]);
    expect(model.curves[1].points[0]).toMatchObject({ stageEpoch: 1, stage: 'tune', loss: 1, valAcc: 0.45 });
    expect(model.evaluations).toHaveLength(1);
    expect(model.evaluations[0]).toMatchObject({ stage: 'eval', split: 'val', confusion: [[1, 0], [1, 0]], rocAuc: 0.75 });
    expect(model.evaluations[0].misclassified.records[0].thumbnail).toEqual({ uri: 'data:image/png;base64,iVBORw0KGgo=', source: 'image' });
    expect(model.ingest[0]).toMatchObject({ classes: ['cat', EVIL], skipped: [{ path: EVIL_FILE }], reportPath: '/store/cache/ingest-key/report.json' });
    expect(model.ingest[0].splits.map((s) => [s.split, s.total])).toEqual([['train', 6], ['val', 2]]); // the empty test split is left out
    expect(model.pruning).toEqual([expect.objectContaining({ stage: 'prune', bytesBefore: 400, bytesAfter: 260, sparsity: 0.5 })]);
    expect(model.modelSizes.map((m) => [m.stage, m.weightBytes])).toEqual([['head', 400], ['tune', 400], ['prune', 260]]);
    expect(model.timeline.find((t) => t.id === 'head')).toMatchObject({ engines: { frozen: 'onnxruntime', train: 'tfjs' }, start: 0.5, dir: '/store/cache/head-key' });
    expect(model.changes).toEqual([{ stage: 'tune', metric: 'val_acc', before: 0.6, after: 0.7 }]);
    expect(model.keyMetrics.filter((k) => k.stage === 'eval').map((k) => k.metric)).toEqual(['accuracy', 'loss']);
    expect(model.keyMetrics.find((k) => k.stage === 'tune' && k.metric === 'val_acc')).toEqual({ stage: 'tune', metric: 'val_acc', value: 0.7, before: 0.6 });
    expect(model.notes).toEqual(['no previous run of this pipeline to compare with']);
    expect(buildChartSpecs(model).map((c) => c.name)).toEqual(['curves-loss', 'curves-accuracy', 'confusion-eval', 'model-size', 'timeline']);
  });

  it('leaves out what the run lacks and says why', () => {
    const old = artifact(stage('head', 'train-head', { epochs_run: 3 })); // an artifact from before history.json
    const gone = artifact(stage('tune', 'fine-tune', { epochs_run: 2 }, { status: 'cached' }), { present: false });
    const model = buildReportModel(inputs({ stages: [old, gone], summary: { previous: '20261130-000000000-beef' } }));
    expect(model.curves).toEqual([]);
    expect(model.evaluations).toEqual([]);
    expect(model.ingest).toEqual([]);
    expect(model.pruning).toEqual([]);
    expect(model.notes).toEqual([
      'the previous run 20261130-000000000-beef is no longer in the store: its metrics are compared from this run\'s summary only',
      "the artifact of 'tune' is no longer in the store (removed by gc?): its report files are missing",
      "'head' trained 3 epochs but its artifact has no history.json (made by an older version): no curve for it",
    ]);
    expect(buildChartSpecs(model).map((c) => c.name)).toEqual(['timeline']);
    const html = renderHtml(model, []);
    expect(html).not.toContain('Training curves');
    expect(html).not.toContain('Evaluation:');
    expect(html).toContain('no longer in the store');
  });

  it('takes the previous value of an unchanged metric from the previous run', () => {
    const base = inputs();
    const previous: RunSummary = { ...base.summary, run: '20261130-000000000-beef', stages: base.summary.stages.map((s) => ({ ...s, metrics: { ...s.metrics } })) };
    const model = buildReportModel(inputs({ previous, summary: { previous: previous.run } }));
    expect(model.keyMetrics.find((k) => k.stage === 'head' && k.metric === 'val_acc')).toEqual({ stage: 'head', metric: 'val_acc', value: 0.65, before: 0.65 });
    expect(model.notes).toEqual([]);
  });
});

describe('escaping', () => {
  it('escapeHtml and escapeMarkdown neutralise markup', () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
    expect(escapeMarkdown('a|b <i>*x*</i> & _y_\nnext')).toBe('a\\|b &lt;i&gt;\\*x\\*&lt;/i&gt; &amp; \\_y\\_ next');
  });

  it('user text never reaches the page, the SVG or the Markdown as markup', async () => {
    const model = buildReportModel(inputs());
    const charts = await renderCharts(buildChartSpecs(model));
    for (const chart of charts) expect(chart.svg.startsWith('<svg')).toBe(true);
    const confusion = charts.find((c) => c.name === 'confusion-eval')!.svg;
    expect(confusion).toContain('&lt;script&gt;'); // vega escapes axis labels
    const html = renderHtml(model, charts);
    expect(html).not.toContain('<script');
    expect(html).not.toContain('<img src=x');
    expect(html).toContain(escapeHtml(EVIL));
    expect(html).toContain(escapeHtml(EVIL_FILE));
    expect(html.match(/<figure class="chart"/g)).toHaveLength(5);
    const md = renderMarkdown(model, [{ name: 'timeline', title: 'Stage timeline', path: 'report-assets/timeline.png' }]);
    expect(md).not.toContain('<script');
    expect(md).toContain(escapeMarkdown(EVIL));
    expect(md).toContain('![Stage timeline](report-assets/timeline.png)');
    expect(md).toContain('| tune | val\\_acc | 0.7000 | 0.6000 | +0.1000 |');
  });
});

describe('readStartOffsets', () => {
  it('takes each stage\'s start from its `stage start` line, skipping planned and cut lines', async () => {
    const dir = testdir();
    try {
      mkdirSync(dir.path('run'));
      const t0 = Date.parse('2026-12-01T00:00:00.000Z');
      const lines = [
        { stage: 'a', time: t0 + 1, msg: 'stage planned' },
        { stage: 'a', time: t0 + 250, msg: 'stage start' },
        { stage: 'b', time: t0 + 900, msg: 'memo cached' },
        { stage: 'b', time: t0 + 1000, msg: 'stage start' },
      ].map((l) => JSON.stringify(l));
      writeFileSync(dir.path('run/log.jsonl'), `${lines.join('\n')}\n{"stage":"c","time":`);
      expect(await readStartOffsets(dir.path('run'), '2026-12-01T00:00:00.000Z')).toEqual({ a: 0.25, b: 1 });
    } finally {
      dir.cleanup();
    }
  });
});
