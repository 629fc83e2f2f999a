/**
 * One frozen pass per pipeline: through the real runtime, the images go through the frozen
 * bottom once per image-view for the whole two-phase recipe (train-head, fine-tune, prune's
 * recovery and evaluate all read the same cached activations), at the lowest cut that the
 * downstream `unfreeze` needs; flip-only augmentation caches exactly two views.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configureBackend, useTf } from '../../../src/ml/backend.js';
import type { RunSummary } from '../../../src/runtime/execute.js';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { FASHION } from './helpers.js';

const pipeline = (from: string) => `name: one-pass
seed: 5
stages:
  data: { uses: ingest, with: { path: ${JSON.stringify(FASHION)}, split: { val: 0.25 } } }
  shards: { uses: preprocess, needs: [data], with: { size: [8, 8], augment: { flip: true } } }
  base: { uses: build-model, with: { input_shape: [8, 8, 3], filters: [4, 8, 8] } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 2, batch: 4, lr: 0.01 } }
  unfreeze: { uses: unfreeze, needs: [head], with: { from: ${from} } }
  tune: { uses: fine-tune, needs: [shards, unfreeze], with: { epochs: 2, batch: 4, early_stopping: false } }
  prune: { uses: prune, needs: [shards, tune], with: { sparsity: 0.3, epochs: 1, batch: 4, max_accuracy_drop: 1 } }
  evaluate: { uses: evaluate, needs: [shards, prune] }
`;

let dir: TestDir;
beforeAll(async () => {
  configureBackend('wasm');
  await useTf();
  dir = testdir({ 'p.yaml': pipeline('block_3_conv') });
});
afterAll(() => dir.cleanup());

const run = (overrides: string[] = []) => runPipeline({ file: dir.path('p.yaml'), registry: stages, artifacts: dir.path('artifacts'), overrides });
const metricsOf = (summary: RunSummary, id: string) => summary.stages.find((s) => s.id === id)!.metrics;
const forwards = (summary: RunSummary) => ['head', 'tune', 'prune', 'evaluate'].map((id) => metricsOf(summary, id).frozen_forwards as number);

describe('one frozen pass per pipeline', () => {
  let first: RunSummary;
  it('pushes each image-view through the frozen bottom once for the whole pipeline', async () => {
    first = await run();
    expect(first.status, JSON.stringify(first.stages.map((s) => s.error).filter(Boolean))).toBe('succeeded');
    const shards = metricsOf(first, 'shards');
    const train = shards.train as number;
    const val = shards.val as number;
    // flip-only: two views of each training image (plain, mirrored), one of each val image
    expect(forwards(first)).toEqual([2 * train + val, 0, 0, 0]);
    const head = metricsOf(first, 'head');
    // train-head's own frontier is the pooled vector above the cut: it ran the frozen block between
    expect(head.frontier).toBe('head_pool');
    expect(head.derived_records).toBe(2 * train + val);
    // the tiny conv/BN/ReLU base converts to ONNX, and so does the head's backward
    expect(first.engines?.head).toEqual({ frozen: 'onnxruntime', train: 'onnxruntime' });
    expect(first.engines?.tune).toEqual({ frozen: 'cached', train: 'onnxruntime' });
    for (const id of ['tune', 'prune', 'evaluate']) {
      expect(metricsOf(first, id).features, id).toBe('cached');
      expect(metricsOf(first, id).frontier, id).toBe('block_2_relu');
      expect(metricsOf(first, id).derived_records, id).toBe(0);
    }
  });

  it('a deeper unfreeze point re-runs train-head (its cut moved) with one new pass', async () => {
    dir.write('p.yaml', pipeline('block_2_conv'));
    const second = await run();
    const head = second.stages.find((s) => s.id === 'head')!;
    expect(head.status).toBe('ran');
    expect(head.reasons.join('; ')).toMatch(/downstream stages changed/);
    const shards = metricsOf(second, 'shards');
    expect(forwards(second)).toEqual([2 * (shards.train as number) + (shards.val as number), 0, 0, 0]);
    expect(metricsOf(second, 'tune').frontier).toBe('block_1_relu');
  });
});
