/**
 * The frozen pass over images feeds the engine raw records (onnxruntime normalizes and mirrors
 * them inside its graph): what it caches equals the bottom's TF.js outputs on the shard
 * reader's own batches — the plain view, the mirrored view of flip-only augmentation, and val —
 * within 1e-5 of the largest value; on TF.js (normalization in JavaScript) bit for bit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { MIRROR_DRAW } from '../../../src/data/augment.js';
import { openDataset, type ShardDataset } from '../../../src/data/shards.js';
import type { Tf, TfLayersApi } from '../../../src/ml/backend.js';
import { frozenActivations } from '../../../src/ml/frozen-pass.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { compare } from '../onnx/parity.js';
import { buildTinyShards, makeStageContext, useTestBackend } from '../stages/helpers.js';

let tf: Tf;
let tfl: TfLayersApi;
let dir: TestDir;
let dataset: ShardDataset;
let shards: Awaited<ReturnType<typeof buildTinyShards>>['shards'];
beforeAll(async () => {
  ({ tf, tfl } = await useTestBackend());
  dir = testdir({});
  ({ shards } = await buildTinyShards(dir.root, { size: [8, 8], normalize: 'imagenet', augment: { flip: true } }));
  dataset = await openDataset(shards.dir);
});
afterAll(async () => {
  await dataset.close();
  dir.cleanup();
});

/** conv + relu (frozen), then a trainable conv and a head: the pass stops at `frozen_relu`. */
function model(): LayersModel {
  const input = tfl.input({ shape: [8, 8, 3], name: 'image' });
  let x = tfl.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }), name: 'frozen_conv' }).apply(input) as SymbolicTensor;
  x = tfl.layers.reLU({ name: 'frozen_relu' }).apply(x) as SymbolicTensor;
  x = tfl.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', kernelInitializer: tfl.initializers.glorotUniform({ seed: 2 }), name: 'top_conv' }).apply(x) as SymbolicTensor;
  x = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as SymbolicTensor;
  const out = tfl.layers.dense({ units: 3, activation: 'softmax', name: 'head' }).apply(x) as SymbolicTensor;
  const built = tfl.model({ inputs: input, outputs: out });
  for (const name of ['frozen_conv', 'frozen_relu']) built.getLayer(name).trainable = false;
  return built;
}

/** The bottom's TF.js outputs on the reader's batches of `split` (float path, as before). */
async function expected(bottom: LayersModel, split: string, mirror: boolean): Promise<Float32Array> {
  const parts: Float32Array[] = [];
  for await (const batch of dataset.batches(split, { batchSize: 4, draw: mirror ? MIRROR_DRAW : null })) {
    const out = tf.tidy(() => bottom.predict(tf.tensor4d(batch.x, batch.shape)) as TfCore.Tensor);
    parts.push((await out.data()) as Float32Array);
    out.dispose();
  }
  const all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
  return all;
}

describe('the frozen pass over raw records', () => {
  for (const engine of ['onnxruntime', 'tfjs'] as const) {
    it(`${engine}: caches what the bottom computes on the reader's plain and mirrored batches`, async () => {
      const built = model();
      const bottom = tfl.model({ inputs: built.inputs, outputs: built.getLayer('frozen_relu').output as SymbolicTensor });
      const ctx = await makeStageContext({ root: dir.root, params: {}, inputs: [shards], kind: `train-head-${engine}` });
      const pass = await frozenActivations({ tf, ctx, model: built, dataset, batch: 5, augmentViews: 1, engine });
      expect(pass!.stats.engine).toBe(engine);
      expect(pass!.frontier.tensors.map((t) => t.layer)).toEqual(['frozen_relu']);
      const { train, val } = pass!.splits;
      expect([train.views, val.views]).toEqual([2, 1]);
      expect(pass!.stats.images).toBe(2 * train.count + val.count);
      const size = 8 * 8 * 4;
      const views = [train.xs[0].subarray(0, train.count * size), train.xs[0].subarray(train.count * size), val.xs[0]];
      const references = [await expected(bottom, 'train', false), await expected(bottom, 'train', true), await expected(bottom, 'val', false)];
      for (const [i, view] of views.entries()) {
        if (engine === 'tfjs') expect(Array.from(view), `view ${i}`).toEqual(Array.from(references[i]));
        else expect(compare(view, references[i]).relative, `view ${i}`).toBeLessThanOrEqual(1e-5);
      }
      // the mirrored view is not the plain one
      expect(compare(views[0], views[1]).maxDiff).toBeGreaterThan(1e-3);
      expect(Array.from(train.y)).toEqual(Array.from(await dataset.labels('train')));
      built.dispose();
    });
  }
});
