/**
 * The model stages through the real runtime on tiny real images: the two-phase recipe runs and
 * caches, frozen BatchNorm stays frozen, a stage
 * interrupted mid-training resumes from its last finished epoch, and no tensors leak.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readModelArtifact } from '../../../src/ml/artifact.js';
import { configureBackend, useTf } from '../../../src/ml/backend.js';
import { createProgressView } from '../../../src/progress-view.js';
import { runPipeline } from '../../../src/runtime/run.js';
import type { RunSummary } from '../../../src/runtime/execute.js';
import { stages } from '../../../src/stages/index.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

const images = path.resolve(import.meta.dirname, '../../fixtures/images/fashion');
const pipeline = `name: tiny-two-phase
seed: 3
stages:
  data: { uses: ingest, with: { path: ${JSON.stringify(images)}, split: { val: 0.25 } } }
  shards: { uses: preprocess, needs: [data], with: { size: [8, 8], augment: { flip: true } } }
  base: { uses: build-model, with: { input_shape: [8, 8, 3], filters: [4, 8] } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 2, batch: 8, lr: 0.01, augment_views: 2 } }
  unfreeze: { uses: unfreeze, needs: [head], with: { from: block_2_conv } }
  tune: { uses: fine-tune, needs: [shards, unfreeze], with: { epochs: 4, batch: 8, early_stopping: false } }
`;

let dir: TestDir;
beforeAll(async () => {
  configureBackend('wasm');
  await useTf();
  dir = testdir({ 'p.yaml': pipeline });
});
afterAll(() => dir.cleanup());

const run = (overrides: string[] = [], extra: Record<string, unknown> = {}) =>
  runPipeline({ file: dir.path('p.yaml'), registry: stages, artifacts: dir.path('artifacts'), overrides, ...extra });
const stage = (summary: RunSummary, id: string) => summary.stages.find((s) => s.id === id)!;
const entry = (summary: RunSummary, id: string) => dir.path('artifacts/cache', stage(summary, id).key);

async function weightsOf(summary: RunSummary, id: string, layer: string): Promise<number[][]> {
  const { model } = await readModelArtifact(entry(summary, id));
  const values = model.getLayer(layer).getWeights().map((w) => Array.from(w.dataSync()));
  model.dispose();
  return values;
}

describe('two-phase recipe on tiny images', () => {
  let first: RunSummary;

  it('runs every stage, then reuses all of them; cached features survive a head param change', async () => {
    first = await run();
    expect(first.status, JSON.stringify(first.stages.map((s) => s.error))).toBe('succeeded');
    expect(first.stages.map((s) => s.status)).toEqual(Array(7).fill('ran'));
    expect(stage(first, 'head').metrics.features).toBe('computed');
    expect(stage(first, 'tune').metrics.epochs_run).toBe(4);
    expect(stage(first, 'tune').metrics.lr).toBeCloseTo(0.001);
    const again = await run();
    expect(again.stages.map((s) => s.status)).toEqual(Array(7).fill('cached'));
    expect(stage(again, 'tune').metrics).toEqual(stage(first, 'tune').metrics);
    const changed = await run(['stages.head.with.epochs=3']);
    expect(stage(changed, 'head').status).toBe('ran');
    expect(stage(changed, 'head').metrics.features).toBe('cached');
    expect(stage(changed, 'shards').status).toBe('cached');
  });

  it("on the onnxruntime route the final val metrics are the last epoch's, as history.json has them (no second pass)", async () => {
    const tune = stage(first, 'tune');
    expect(tune.metrics.train_engine).toBe('onnxruntime');
    const last = JSON.parse(readFileSync(path.join(entry(first, 'tune'), 'history.json'), 'utf8')).at(-1);
    expect(tune.metrics.val_loss).toBe(last.valLoss);
    expect(tune.metrics.val_acc).toBe(last.valAcc);
  });

  it('keeps frozen BatchNorm frozen: moving statistics and affine weights unchanged by train-head', async () => {
    const before = await weightsOf(first, 'freeze', 'block_1_bn');
    const after = await weightsOf(first, 'head', 'block_1_bn');
    expect(after).toEqual(before);
    // The head itself did train.
    const { model } = await readModelArtifact(entry(first, 'head'));
    expect(model.getLayer('head_output').trainable).toBe(true);
    model.dispose();
  });

  it('fine-tune trains the unfrozen block but keeps its BatchNorm statistics (batchnorm: frozen)', async () => {
    const [gammaBefore, , meanBefore, varianceBefore] = await weightsOf(first, 'unfreeze', 'block_2_bn');
    const [gammaAfter, , meanAfter, varianceAfter] = await weightsOf(first, 'tune', 'block_2_bn');
    expect(meanAfter).toEqual(meanBefore);
    expect(varianceAfter).toEqual(varianceBefore);
    expect(gammaAfter).not.toEqual(gammaBefore);
    expect(await weightsOf(first, 'tune', 'block_1_conv')).toEqual(await weightsOf(first, 'unfreeze', 'block_1_conv'));
    expect(await weightsOf(first, 'tune', 'block_2_conv')).not.toEqual(await weightsOf(first, 'unfreeze', 'block_2_conv'));
  });

  it('resumes an interrupted fine-tune from its last finished epoch', async () => {
    const controller = new AbortController();
    const interrupted = await run(['stages.tune.with.epochs=5'], {
      signal: controller.signal,
      observer: { progress: (id: string, event: { unit: string; done: number }) => id === 'tune' && event.unit === 'epoch' && event.done === 2 && controller.abort() },
    });
    expect(interrupted.status).toBe('interrupted');
    expect(stage(interrupted, 'tune').status).toBe('failed');
    let stderr = '';
    const resumed = await run(['stages.tune.with.epochs=5'], { observer: createProgressView({ write: (text) => void (stderr += text) }) });
    expect(stage(resumed, 'tune').status).toBe('ran');
    // The rerun says on stderr that it continued rather than started over.
    expect(stderr).toContain('↻ tune resumed from epoch 2/5');
    expect(stage(resumed, 'tune').metrics.resumed_from_epoch).toBe(2);
    expect(stage(resumed, 'tune').metrics.epochs_run).toBe(5);
  });

  it('leaks no tensors across runs', async () => {
    const tf = await useTf();
    await run([], { selection: { force: ['head', 'tune'] } });
    const before = tf.memory().numTensors;
    await run([], { selection: { force: ['head', 'unfreeze', 'tune'] } });
    expect(tf.memory().numTensors).toBe(before);
  });
});
