import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tensor } from '@tensorflow/tfjs-core';
import { openDataset } from '../../../src/data/shards.js';
import { readModelArtifact } from '../../../src/ml/artifact.js';
import type { Tf } from '../../../src/ml/backend.js';
import { rocAuc } from '../../../src/ml/metrics.js';
import { GateError, StageError } from '../../../src/runtime/errors.js';
import { compileStageValidator } from '../../../src/runtime/schema.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { evaluate, type EvaluateParams } from '../../../src/stages/evaluate.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { buildTinyShards, makeTinyModelArtifact, runStage, useTestBackend, type TinyShards } from './helpers.js';

let tf: Tf;
let dir: TestDir;
let data: TinyShards;
/** Always outputs [0.5, 0.3, 0.2]: every record is predicted `sneaker` (class 0). */
let constant: StageInput;

const defaults: EvaluateParams = { split: 'val', batch: 32, top_k: 5, gate: {} };

async function failure(promise: Promise<unknown>): Promise<StageError> {
  const error = await promise.then(() => null, (e: unknown) => e);
  expect(error).toBeInstanceOf(StageError);
  return error as StageError;
}

function run(params: Partial<EvaluateParams>, inputs: StageInput[]) {
  return runStage(evaluate, { root: dir.root, params: { ...defaults, ...params }, inputs });
}

beforeAll(async () => {
  ({ tf } = await useTestBackend());
  dir = testdir();
  data = await buildTinyShards(dir.root);
  constant = await makeTinyModelArtifact(dir.root, { classes: data.classes, preprocess: data.spec, constantOutput: [0.5, 0.3, 0.2] });
});
afterAll(() => dir.cleanup());

describe('evaluate', () => {
  it('computes the hand-worked metrics of a model with a known constant output', async () => {
    expect(data.classes).toEqual(['sneaker', 't-shirt', 'trouser']);
    const { result, ctx } = await run({}, [data.shards, constant, data.dataset]);
    // val: 2 records per class, all predicted sneaker.
    expect(result.metrics).toEqual({
      features: 'none',
      records: 6,
      accuracy: 0.3333,
      loss: round(-(Math.log(0.5) + Math.log(0.3) + Math.log(0.2)) / 3),
      macro_precision: round(1 / 9),
      macro_recall: 0.3333,
      macro_f1: round(0.5 / 3),
      top_k: 3,
      top_k_accuracy: 1,
      per_class: {
        sneaker: { precision: 0.3333, recall: 1, f1: 0.5, support: 2 },
        't-shirt': { precision: 0, recall: 0, f1: 0, support: 2 },
        trouser: { precision: 0, recall: 0, f1: 0, support: 2 },
      },
      confusion: [
        [2, 0, 0],
        [2, 0, 0],
        [2, 0, 0],
      ],
    });
    expect(ctx.progressEvents.at(-1)).toEqual({ unit: 'score val', done: 1, total: 1, phase: 'end' });
    // progress lines print the stage id (or kind) before the label: the label must not repeat it
    expect(ctx.progressEvents.filter((e) => /^evaluate\b/.test(e.unit))).toEqual([]);

    const report = JSON.parse(await readFile(join(ctx.outDir, 'evaluation.json'), 'utf8'));
    expect(report.accuracy).toBeCloseTo(1 / 3, 6);
    expect(report.confusion.classes).toEqual(data.classes);
    expect(report.per_class.map((row: { class: string }) => row.class)).toEqual(data.classes);
    expect(report.misclassified.total).toBe(4);
    expect(report.misclassified.records).toHaveLength(4);
    for (const record of report.misclassified.records) {
      expect(record.predicted).toBe('sneaker');
      expect(record.probability).toBeCloseTo(0.5, 4);
      expect(record.labelProbability).toBeCloseTo(record.label === 't-shirt' ? 0.3 : 0.2, 4);
      // The file name comes from the dataset's files.jsonl: its class folder is the true label.
      expect(record.file.split('/')[0]).toBe(record.label);
    }
  });

  it('caps top_k at the requested k, and names no files without a dataset input', async () => {
    const { result, ctx } = await run({ top_k: 2, batch: 4 }, [data.shards, constant]);
    expect(result.metrics).toMatchObject({ top_k: 2, top_k_accuracy: 0.6667, accuracy: 0.3333 });
    expect(ctx.progressEvents.map((e) => [e.phase, e.done])).toEqual([['start', 0], ['tick', 1], ['tick', 2], ['end', 2]]);
    const report = JSON.parse(await readFile(join(ctx.outDir, 'evaluation.json'), 'utf8'));
    expect(report.misclassified.records[0].file).toBeUndefined();
  });

  it('passes a gate the metrics meet', async () => {
    const { result } = await run({ gate: { accuracy: 0.33, top_k_accuracy: 1 } }, [data.shards, constant]);
    expect(result.metrics?.accuracy).toBe(0.3333);
  });

  it('fails a gate with a GateError that carries the metrics and the failed bounds', async () => {
    const error = await failure(run({ gate: { accuracy: 0.9, macro_f1: 0.1, macro_recall: 0.34 } }, [data.shards, constant]));
    expect(error).toBeInstanceOf(GateError);
    expect(error.code).toBe('gate_failed');
    expect(error.message).toBe("gate failed on 'val': accuracy 0.3333 < 0.9, macro_recall 0.3333 < 0.34");
    expect((error.details.metrics as Record<string, unknown>).accuracy).toBe(0.3333);
    expect(error.details.failed).toEqual([
      { metric: 'accuracy', value: 1 / 3, minimum: 0.9 },
      { metric: 'macro_recall', value: 1 / 3, minimum: 0.34 },
    ]);
  });

  it('refuses a model trained on other classes or another order', async () => {
    const reordered = await makeTinyModelArtifact(dir.root, { classes: ['sneaker', 'trouser', 't-shirt'], preprocess: data.spec });
    const error = await failure(run({}, [data.shards, reordered]));
    expect(error.code).toBe('classes_mismatch');
    expect(error.message).toContain('[sneaker, trouser, t-shirt] but the shards have [sneaker, t-shirt, trouser]');
  });

  it('refuses a model without a head and a model of another input size', async () => {
    const headless = await makeTinyModelArtifact(dir.root, { classes: data.classes, headless: true, lineage: ['load-base'] });
    expect((await failure(run({}, [data.shards, headless]))).code).toBe('model_has_no_head');
    const small = await makeTinyModelArtifact(dir.root, { classes: data.classes, preprocess: data.spec, inputShape: [6, 6, 3] });
    const error = await failure(run({}, [data.shards, small]));
    expect(error.code).toBe('input_shape_mismatch');
    expect(error.message).toContain('[6, 6, 3] but the shards hold records of [8, 8, 3]');
  });

  it('names the available splits when the requested one is missing', async () => {
    const error = await failure(run({ split: 'test' }, [data.shards, constant]));
    expect(error.code).toBe('split_missing');
    expect(error.message).toContain('(available: train, val)');
  });

  it('adds ROC-AUC for two classes (equal to the metric on model.predict) and refuses a roc_auc gate otherwise', async () => {
    const two = await buildTinyShards(dir.root, { classes: ['sneaker', 'trouser'] });
    const model = await makeTinyModelArtifact(dir.root, { classes: two.classes, preprocess: two.spec, seed: 7, train: { shards: two.shards, epochs: 3 } });
    const { result } = await run({}, [two.shards, model]);
    const dataset = await openDataset(two.shards.dir);
    const { model: layers } = await readModelArtifact(model.dir);
    let expected: number | null = null;
    for await (const batch of dataset.batches('val', { batchSize: 64 })) {
      const p = tf.tidy(() => (layers.predict(tf.tensor4d(batch.x, batch.shape)) as Tensor).dataSync());
      expected = rocAuc(batch.y, Array.from({ length: batch.count }, (_, i) => p[i * 2 + 1]));
    }
    layers.dispose();
    await dataset.close();
    expect(expected).not.toBeNull();
    expect(result.metrics?.roc_auc).toBe(round(expected!));

    const error = await failure(run({ gate: { roc_auc: 0.5 } }, [data.shards, constant]));
    expect(error.code).toBe('gate_metric_unavailable');
  });

  it('leaves no tensors behind', async () => {
    await run({}, [data.shards, constant]);
    const before = tf.memory().numTensors;
    await run({ batch: 2 }, [data.shards, constant]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('schema: applies defaults and rejects unknown gate metrics', () => {
    const validate = compileStageValidator(evaluate);
    const params = {};
    expect(validate(params)).toBe(true);
    expect(params).toEqual({ split: 'val', batch: 32, top_k: 5, gate: {} });
    expect(validate({ gate: { acuracy: 0.9 } })).toBe(false);
    expect(validate({ gate: { accuracy: 1.5 } })).toBe(false);
    expect(validate({ gate: { loss: 0.5 } })).toBe(false);
  });
});

function round(value: number): number {
  return Math.round(value * 10_000) / 10_000;
}
