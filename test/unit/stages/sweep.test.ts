/**
 * A real sweep on the demo's pretrained base (pipelines/sweep-finetune.yaml: unfreeze depth
 * [1, 2] x fine-tune lr [3e-4, 1e-4], shortened epochs): the frozen base passes each image-view
 * once for all four branches, at the lowest cut any branch needs; the shallower branches derive
 * their cut from that pass; select passes the most accurate branch's model on to export.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunSummary } from '../../../src/runtime/execute.js';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
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
