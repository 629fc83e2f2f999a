import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { readModelArtifact } from '../../../src/ml/artifact.js';
import { loadModel, SPARSE_MODEL_FORMAT, SPARSE_WEIGHTS_FILE, WEIGHTS_FILE } from '../../../src/ml/io.js';
import { compileStageValidator } from '../../../src/runtime/schema.js';
import { GateError } from '../../../src/runtime/errors.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { exportStage } from '../../../src/stages/export.js';
import { checkAccuracyDrop, prune, type PruneParams } from '../../../src/stages/prune.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { buildTinyShards, inputFrom, makeTinyModelArtifact, runStage, useTestBackend, type TinyShards } from '../stages/helpers.js';
import { useLayers, type Tf } from '../../../src/ml/backend.js';

/** What any TF.js app does: tfjs-layers' own loadLayersModel on the files, through tf.io.fromMemory (none of our code). */
async function loadWithStockTfjs(folder: string, weightsFile: string): Promise<LayersModel> {
  const json = JSON.parse(readFileSync(join(folder, 'model.json'), 'utf8'));
  const bin = readFileSync(join(folder, weightsFile));
  const weightData = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
  const tfl = await useLayers();
  return tfl.loadLayersModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: json.weightsManifest.flatMap((g: { weights: unknown[] }) => g.weights), weightData }));
}

let tf: Tf;
let dir: TestDir;
let shards: TinyShards;
let model: StageInput;

const DEFAULTS: PruneParams = {
  method: 'magnitude',
  sparsity: 0.5,
  scope: 'per-layer',
  layers: 'trainable',
  exclude: [],
  importance: 'l1',
  schedule: { initial_sparsity: 0, power: 3, end_fraction: 0.75, frequency: 4 },
  epochs: 2,
  lr_divisor: 100,
  batch: 8,
  augment_views: 1,
  max_accuracy_drop: 1,
  latency_batch: 1,
  latency_runs: 3,
};

beforeAll(async () => {
  ({ tf } = await useTestBackend());
  dir = testdir();
  shards = await buildTinyShards(dir.root);
  model = await makeTinyModelArtifact(dir.root, { classes: shards.classes, preprocess: shards.spec, train: { shards: shards.shards, epochs: 30 } });
});
afterAll(() => dir.cleanup());

function predict(m: LayersModel): Float32Array {
  return tf.tidy(() => (m.predict(tf.randomUniform([4, 8, 8, 3], -2, 2, 'float32', 5)) as TfCore.Tensor).dataSync() as Float32Array);
}

async function runPrune(params: Partial<PruneParams>) {
  return runStage(prune, { root: dir.root, params: { ...DEFAULTS, ...params }, inputs: [inputFrom({ kind: 'preprocess', provides: ['shards'] }, shards.shards.dir), model] });
}

describe('prune stage', () => {
  it('schema defaults validate and fill every param', () => {
    const validate = compileStageValidator(prune);
    const params: Record<string, unknown> = {};
    expect(validate(params)).toBe(true);
    // The schema's own default gate is 0.02 (these tests run with 1 unless they test the gate).
    const { lr: _lr, ...withDefaults } = { ...DEFAULTS, batch: 32, latency_runs: 7, max_accuracy_drop: 0.02 };
    expect(params).toEqual(withDefaults);
    expect(validate({ schedule: { power: 2 } })).toBe(true);
    expect(validate({ schedule: 'linear' })).toBe(false);
    expect(validate({ sparsity: 'auto' })).toBe(true);
    expect(validate({ sparsity: 'most' })).toBe(false);
  });

  for (const scope of ['per-layer', 'global'] as const) {
    it(`magnitude (${scope}): reaches the target exactly, shrinks the bytes, and the export reloads to the same predictions`, async () => {
      const { result, ctx } = await runPrune({ scope, sparsity: 0.75, layers: 'all', lr: 0.001 });
      const m = result.metrics!;
      const kernelScalars = m.kernel_scalars as number;
      expect(m.pruned_scalars).toBe(Math.round(0.75 * kernelScalars));
      expect(m.sparsity).toBeCloseTo(0.75, 2);
      expect(m.bytes_after).toBeLessThan(m.bytes_before as number);
      expect(m.bytes_after).toBe(statSync(join(ctx.outDir, WEIGHTS_FILE)).size);
      expect(m.epochs_run).toBe(2);
      // The recovery curve, in train-head's history format, for `pipeline report`.
      const history = JSON.parse(readFileSync(join(ctx.outDir, 'history.json'), 'utf8'));
      expect(history.map((h: { epoch: number }) => h.epoch)).toEqual([0, 1]);
      for (const h of history) expect(typeof h.loss === 'number' && typeof h.acc === 'number' && typeof h.valAcc === 'number').toBe(true);
      for (const key of ['params_before', 'macs_before', 'latency_ms_before', 'latency_ms_after', 'val_acc_before', 'val_acc_after']) expect(typeof m[key]).toBe('number');
      expect(m.nonzero_macs_after).toBeLessThan(m.macs_after as number);

      const pruned = await readModelArtifact(ctx.outDir);
      expect(pruned.info.lineage.at(-1)).toBe('prune');
      expect(pruned.info.notes?.pruning).toMatchObject({ method: 'magnitude', target: 0.75 });
      // The default export is a standard TF.js model: stock tfjs-layers loads it (no sparse encoding).
      const exported = await runStage(exportStage, { root: dir.root, params: {}, inputs: [inputFrom({ kind: 'prune', provides: ['model'] }, ctx.outDir)] });
      const exportJson = JSON.parse(readFileSync(join(exported.ctx.outDir, 'model.json'), 'utf8'));
      expect(exportJson.format).toBe('layers-model');
      expect(exportJson.weightsManifest[0]).not.toHaveProperty('encoding');
      expect(statSync(join(exported.ctx.outDir, WEIGHTS_FILE)).size).toBe(m.bytes_before);
      const stock = await loadWithStockTfjs(exported.ctx.outDir, WEIGHTS_FILE);
      const reloaded = await loadModel(exported.ctx.outDir);
      const [a, b, c] = [predict(pruned.model), predict(reloaded), predict(stock)];
      a.forEach((v, i) => expect(Math.abs(v - b[i])).toBeLessThan(1e-5));
      a.forEach((v, i) => expect(Math.abs(v - c[i])).toBeLessThan(1e-5));
      reloaded.dispose();
      stock.dispose();

      // `sparse: true` is the compact encoding, labelled: our loader reads it, a stock loader fails loudly.
      const compact = await runStage(exportStage, { root: dir.root, params: { sparse: true }, inputs: [inputFrom({ kind: 'prune', provides: ['model'] }, ctx.outDir)] });
      const compactJson = JSON.parse(readFileSync(join(compact.ctx.outDir, 'model.json'), 'utf8'));
      expect(compactJson.format).toBe(SPARSE_MODEL_FORMAT);
      expect(compactJson.weightsManifest[0].paths).toEqual([SPARSE_WEIGHTS_FILE]);
      expect(existsSync(join(compact.ctx.outDir, WEIGHTS_FILE))).toBe(false);
      expect(statSync(join(compact.ctx.outDir, SPARSE_WEIGHTS_FILE)).size).toBe(m.bytes_after);
      expect(compact.result.metrics).toMatchObject({ weightBytes: m.bytes_after, weightsEncoding: 'sparse' });
      await expect(loadWithStockTfjs(compact.ctx.outDir, SPARSE_WEIGHTS_FILE)).rejects.toThrow();
      const fromSparse = await loadModel(compact.ctx.outDir);
      predict(fromSparse).forEach((v, i) => expect(Math.abs(v - a[i])).toBeLessThan(1e-5));
      fromSparse.dispose();
      pruned.model.dispose();
    });
  }

  it('structured: an ordinary smaller model with fewer MACs, loadable by loadModel', async () => {
    const { result, ctx } = await runPrune({ method: 'structured', sparsity: 0.5, importance: 'bn', epochs: 1 });
    const m = result.metrics!;
    expect(m).toMatchObject({ kept_channel_ratio: 0.5, channels_before: 4, channels_after: 2, l1_fallback_groups: 1 });
    expect(m.params_after).toBeLessThan(m.params_before as number);
    expect(m.macs_after).toBeLessThan(m.macs_before as number);
    expect(m.bytes_after).toBeLessThan(m.bytes_before as number);
    const reloaded = await loadModel(ctx.outDir);
    expect((reloaded.getLayer('conv').getWeights()[0] as TfCore.Tensor).shape).toEqual([3, 3, 3, 2]);
    expect(reloaded.outputs[0].shape).toEqual([null, 3]);
    reloaded.dispose();
  });

  it('max_accuracy_drop fails the stage with a GateError that carries the metrics', async () => {
    const error = await runPrune({ sparsity: 0.95, layers: 'all', epochs: 0, max_accuracy_drop: 0 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(GateError);
    const details = (error as GateError).details as { metrics: Record<string, number>; drop: number };
    expect(details.drop).toBeGreaterThan(0);
    expect(details.metrics.val_acc_after).toBeLessThan(details.metrics.val_acc_before);
    expect(() => checkAccuracyDrop(0.8, 0.75, 0.05, {})).not.toThrow();
    expect(() => checkAccuracyDrop(0.8, 0.74, 0.05, {})).toThrow(GateError);
    expect(() => checkAccuracyDrop(0.8, 0.1, 1, {})).not.toThrow();
  });

  it('sparsity auto: bisects for the highest sparsity within max_accuracy_drop and reports every trial', async () => {
    const { result } = await runPrune({ sparsity: 'auto', layers: 'all', epochs: 1, max_accuracy_drop: 0.1 });
    const m = result.metrics!;
    const tried = m.sparsity_search as unknown as { sparsity: number; val_acc: number; drop: number; within: boolean }[];
    expect(tried.length).toBeGreaterThanOrEqual(4);
    expect(tried.length).toBeLessThanOrEqual(5);
    for (const t of tried) expect(t.within).toBe(t.drop <= 0.1 + 1e-9);
    const within = tried.filter((t) => t.within).map((t) => t.sparsity);
    const chosen = m.target_sparsity as number;
    // the chosen one is the highest passing trial, and every trial above it failed
    if (within.length) expect(chosen).toBe(Math.max(...within));
    for (const t of tried) if (t.sparsity > chosen) expect(t.within).toBe(false);
    // the saved model is the chosen trial's: its sparsity and accuracy are what was reported
    const trial = tried.find((t) => t.sparsity === chosen)!;
    expect(m.sparsity as number).toBeCloseTo(chosen, 2);
    expect(m.val_acc_after).toBeCloseTo(trial.val_acc, 6);
  });

  it('sparsity auto needs a bound', async () => {
    await expect(runPrune({ sparsity: 'auto', max_accuracy_drop: 1 })).rejects.toThrow(/max_accuracy_drop/);
  });

  it('names an unknown excluded layer', async () => {
    await expect(runPrune({ exclude: ['hed'] })).rejects.toThrow(/did you mean "head"/);
  });
});
