/**
 * A real sweep on the demo's pretrained base (pipelines/sweep-finetune.yaml: unfreeze depth
 * [1, 2] x fine-tune lr [3e-4, 1e-4], shortened epochs): the frozen base passes each image-view
 * once for all four branches, at the lowest cut any branch needs; the shallower branches derive
 * their cut from that pass; select passes the most accurate branch's model on to export. And a
 * sweep where two branches fail their own evaluate gate (lr 10 learns nothing): select chooses
 * among the other two, lists the failed ones, export ships the choice, and the run fails.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunSummary } from '../../../src/runtime/execute.js';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
import { gatedSweep } from '../../fixtures/sweep-gated.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { useTestBackend } from './helpers.js';

const FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'pipelines', 'sweep-finetune.yaml');

let dir: TestDir;
let summary: RunSummary;
beforeAll(async () => {
  await useTestBackend();
  dir = testdir({});
  const overrides = ['stages.train-head.with.epochs=3', 'stages.fine-tune.with.epochs=2', 'stages.select.with.gate={}', 'stages.evaluate.with.gate={}', `stages.export.with.dir=${dir.path('export')}`];
  summary = await runPipeline({ file: FILE, registry: stages, artifacts: dir.path('artifacts'), overrides });
}, 240_000);
afterAll(() => dir?.cleanup());

const stage = (id: string) => summary.stages.find((s) => s.id === id)!;
const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

describe('a 2x2 sweep on the demo base', () => {
  it('runs every branch and the stages upstream once', () => {
    expect(summary.status, JSON.stringify(summary.stages.map((s) => s.error).filter(Boolean))).toBe('succeeded');
    expect(summary.stages.map((s) => s.id)).toEqual([
      'ingest', 'preprocess', 'load-base', 'freeze', 'train-head',
      'unfreeze-blocks-1', 'unfreeze-blocks-2',
      'fine-tune-blocks-1-lr-3e-4', 'fine-tune-blocks-1-lr-1e-4', 'fine-tune-blocks-2-lr-3e-4', 'fine-tune-blocks-2-lr-1e-4',
      'select', 'evaluate', 'export',
    ]);
    expect(summary.stages.every((s) => s.status === 'ran')).toBe(true);
    expect(stage('fine-tune-blocks-2-lr-1e-4').metrics.lr).toBe(1e-4);
  });

  it('passes each image-view through the frozen base once for all four branches', () => {
    const shards = stage('preprocess').metrics;
    const views = 2 * (shards.train as number) + (shards.val as number); // flips: two views per training image
    const forwards = summary.stages.map((s) => [s.id, s.metrics.frozen_forwards ?? 0]).filter(([, n]) => n !== 0);
    expect(forwards).toEqual([['train-head', views]]);
    // the pass is at the cut below block_2, the lowest any branch trains
    for (const lr of ['3e-4', '1e-4']) {
      expect(stage(`fine-tune-blocks-2-lr-${lr}`).metrics.frontier).toBe('block_1_relu2');
      expect(stage(`fine-tune-blocks-1-lr-${lr}`).metrics.frontier).toBe('block_2_relu2');
    }
    // block_2 over the cached activations, once for both blocks-1 branches; evaluate (after select) reuses a pass too
    const derived = summary.stages.filter((s) => s.id !== 'train-head').map((s) => (s.metrics.derived_records as number | undefined) ?? 0);
    expect(derived.reduce((a, b) => a + b, 0)).toBe(views);
    expect(stage('evaluate').metrics.features).toBe('cached');
  });

  it('select picks the most accurate branch and export ships its model', () => {
    const branches = summary.stages.filter((s) => s.branch?.template === 'fine-tune');
    const best = branches.reduce((a, b) => ((b.metrics.val_acc as number) > (a.metrics.val_acc as number) ? b : a));
    const select = stage('select').metrics;
    expect(select.chosen).toBe(best.id);
    expect(select.model).toBe(best.id);
    // evaluate scores the chosen model on val: the accuracy fine-tune reported for it
    expect(stage('evaluate').metrics.accuracy).toBeCloseTo(best.metrics.val_acc as number, 3);
    expect((select.table as unknown[]).length).toBe(4);
    const entry = (id: string) => path.join(dir.path('artifacts'), 'cache', stage(id).key);
    expect(sha(path.join(entry('select'), 'weights.bin'))).toBe(sha(path.join(entry(select.model as string), 'weights.bin')));
    expect(sha(path.join(dir.path('export'), 'weights.bin'))).toBe(sha(path.join(entry(select.model as string), 'weights.bin')));
    expect(summary.matrix!.branches['fine-tune']).toHaveLength(4);
  });
});

describe('a sweep where some branches fail their own gate', () => {
  const root = path.join(path.dirname(FILE), '..');

  it('select chooses among the branches that passed, lists the two that failed, export ships the choice; a rerun reuses select', async () => {
    const file = dir.path('gated.yaml');
    writeFileSync(file, gatedSweep(root, dir.path('export-gated')));
    const gatedRun = await runPipeline({ file, registry: stages, artifacts: dir.path('artifacts') });
    const byId = new Map(gatedRun.stages.map((s) => [s.id, s]));
    expect(gatedRun.status).toBe('failed');
    for (const blocks of [1, 2]) {
      expect(byId.get(`evaluate-blocks-${blocks}-lr-10`)!).toMatchObject({ status: 'failed', error: { code: 'gate_failed' } });
      expect(byId.get(`evaluate-blocks-${blocks}-lr-3e-4`)!.status).toBe('ran');
    }
    const select = byId.get('select')!;
    expect(select.status).toBe('ran');
    const passing = ['evaluate-blocks-1-lr-3e-4', 'evaluate-blocks-2-lr-3e-4'].map((id) => byId.get(id)!);
    const best = passing.reduce((a, b) => ((b.metrics.accuracy as number) > (a.metrics.accuracy as number) ? b : a));
    expect(select.metrics).toMatchObject({ chosen: best.id, model: best.id.replace('evaluate', 'fine-tune'), branches: 4, passed: 2 });
    expect((select.metrics.failed as { id: string; status: string; code: string }[]).map((f) => [f.id, f.status, f.code])).toEqual([
      ['evaluate-blocks-1-lr-10', 'failed', 'gate_failed'],
      ['evaluate-blocks-2-lr-10', 'failed', 'gate_failed'],
    ]);
    expect(byId.get('export')!.status).toBe('ran');
    const entry = (key: string) => path.join(dir.path('artifacts'), 'cache', key);
    expect(sha(path.join(dir.path('export-gated'), 'weights.bin'))).toBe(sha(path.join(entry(byId.get(select.metrics.model as string)!.key), 'weights.bin')));

    // the same failures again: select and export come from the cache
    const again = await runPipeline({ file, registry: stages, artifacts: dir.path('artifacts') });
    expect(again.stages.find((s) => s.id === 'select')!).toMatchObject({ status: 'cached', key: select.key });
    expect(again.stages.find((s) => s.id === 'export')!.status).toBe('cached');
  }, 240_000);
});
