/**
 * Where the frozen part ends, on the three shapes of network that break naive splits: a plain
 * stack, a residual block whose shortcut crosses the cut, and an Inception-style mixed block
 * with the unfreeze point inside it (several frontier tensors). The top built above the
 * frontier computes what the whole model computes, and trains.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { disposeModels } from '../../../src/ml/artifact.js';
import type { Tf, TfLayersApi } from '../../../src/ml/backend.js';
import { buildBetween, buildBottom, buildTop, findFrontier, isTrivial, laterTrainable } from '../../../src/ml/frontier.js';
import { cachedSource, planViews } from '../../../src/ml/frozen-pass.js';
import { freezeLayers, unfreezeLayers } from '../../../src/ml/surgery.js';
import { fitModel } from '../../../src/ml/train.js';
import { useTestBackend } from '../stages/helpers.js';

let tf: Tf;
let tfl: TfLayersApi;
beforeAll(async () => {
  ({ tf, tfl } = await useTestBackend());
});

const init = (seed: number) => tfl.initializers.glorotUniform({ seed });
const conv = (x: SymbolicTensor, filters: number, kernel: number, name: string, seed: number) =>
  tfl.layers.conv2d({ filters, kernelSize: kernel, padding: 'same', kernelInitializer: init(seed), name }).apply(x) as SymbolicTensor;

/** Stem, then two mixed blocks (1x1 | 3x3 | maxpool+1x1 -> concat), then a softmax head. */
function inceptionLike(): LayersModel {
  const input = tfl.input({ shape: [8, 8, 3], name: 'input' });
  let x = conv(input, 4, 3, 'stem', 1);
  for (const b of [1, 2]) {
    const a = conv(x, 2, 1, `mixed${b}_1x1`, 10 * b);
    const c = conv(conv(x, 2, 1, `mixed${b}_3x3_reduce`, 10 * b + 1), 3, 3, `mixed${b}_3x3`, 10 * b + 2);
    const p = conv(tfl.layers.maxPooling2d({ poolSize: 3, strides: 1, padding: 'same', name: `mixed${b}_pool` }).apply(x) as SymbolicTensor, 2, 1, `mixed${b}_pool_proj`, 10 * b + 3);
    x = tfl.layers.concatenate({ name: `mixed${b}` }).apply([a, c, p]) as SymbolicTensor;
  }
  x = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as SymbolicTensor;
  const out = tfl.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: init(99), name: 'head' }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: out });
}

/** Stem, a residual block (conv, BN, conv, add with the shortcut), head. */
function residualLike(): LayersModel {
  const input = tfl.input({ shape: [8, 8, 3], name: 'input' });
  const stem = conv(input, 4, 3, 'stem', 1);
  let y = conv(stem, 4, 3, 'res_a', 2);
  y = tfl.layers.batchNormalization({ name: 'res_bn' }).apply(y) as SymbolicTensor;
  y = conv(y, 4, 3, 'res_b', 3);
  let x = tfl.layers.add({ name: 'res_add' }).apply([stem, y]) as SymbolicTensor;
  x = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as SymbolicTensor;
  const out = tfl.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: init(9), name: 'head' }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: out });
}

function images(n: number, seed = 3): TfCore.Tensor {
  return tf.randomUniform([n, 8, 8, 3], -1, 1, 'float32', seed);
}

/** The top on the bottom's outputs equals the whole model. */
async function expectTopEqualsModel(model: LayersModel, frontierLayers: string[]): Promise<void> {
  const frontier = findFrontier(model)!;
  expect(frontier.tensors.map((t) => t.layer)).toEqual(frontierLayers);
  const bottom = await buildBottom(model, frontier);
  const top = await buildTop(model, frontier);
  const x = images(4);
  const whole = model.predict(x) as TfCore.Tensor;
  const cached = bottom.predict(x) as TfCore.Tensor | TfCore.Tensor[];
  const viaTop = top.predict(cached) as TfCore.Tensor;
  expect(Array.from(viaTop.dataSync()).map((v, i) => Math.abs(v - whole.dataSync()[i])).every((d) => d < 1e-6)).toBe(true);
  tf.dispose([x, whole, cached, viaTop] as TfCore.Tensor[]);
}

describe('findFrontier', () => {
  it('a fully frozen base below a head: the pooled vector (the smallest tensor that serves)', async () => {
    const model = residualLike();
    freezeLayers(model, { until: 'pool' });
    await expectTopEqualsModel(model, ['pool']);
    disposeModels(model);
  });

  it('a residual block unfrozen from inside: the shortcut crosses the cut, two tensors cross', async () => {
    const model = residualLike();
    freezeLayers(model);
    unfreezeLayers(model, { from: 'res_b' });
    // res_b reads res_bn; res_add reads the stem's output through the shortcut
    await expectTopEqualsModel(model, ['stem', 'res_bn']);
    disposeModels(model);
  });

  it('an Inception-style mixed block unfrozen from a branch: every crossing tensor is on the frontier', async () => {
    const model = inceptionLike();
    freezeLayers(model);
    unfreezeLayers(model, { from: 'mixed2_3x3' });
    // mixed2's other branches stay frozen; their outputs, and the 3x3 branch's input, cross the cut
    const frontier = findFrontier(model)!;
    expect(new Set(frontier.tensors.map((t) => t.layer))).toEqual(new Set(['mixed2_1x1', 'mixed2_3x3_reduce', 'mixed2_pool']));
    await expectTopEqualsModel(model, frontier.tensors.map((t) => t.layer));
    disposeModels(model);
  });

  it('trains the multi-input top of a mixed block, and only its trainable weights move', async () => {
    const model = inceptionLike();
    freezeLayers(model);
    unfreezeLayers(model, { from: 'mixed2_3x3' });
    const frontier = findFrontier(model)!;
    const bottom = await buildBottom(model, frontier);
    const top = await buildTop(model, frontier);
    const x = images(12, 5);
    const outs = bottom.predict(x) as TfCore.Tensor[];
    const split = { xs: outs.map((o) => o.dataSync() as Float32Array), shapes: frontier.tensors.map((t) => t.shape), y: Int32Array.from({ length: 12 }, (_, i) => i % 3), count: 12, views: 1 };
    const frozenBefore = model.getLayer('mixed2_1x1').getWeights()[0].dataSync().slice();
    const trainedBefore = model.getLayer('mixed2_3x3').getWeights()[0].dataSync().slice();
    const history = await fitModel(tf, top, cachedSource(split, 4, 1), undefined, { epochs: 3, optimizer: { name: 'adam', lr: 0.05 }, numClasses: 3 });
    expect(history).toHaveLength(3);
    expect(history[2].loss).toBeLessThan(history[0].loss);
    expect(Array.from(model.getLayer('mixed2_1x1').getWeights()[0].dataSync())).toEqual(Array.from(frozenBefore));
    expect(Array.from(model.getLayer('mixed2_3x3').getWeights()[0].dataSync())).not.toEqual(Array.from(trainedBefore));
    tf.dispose([x, ...outs]);
    disposeModels(model);
  });

  it('nothing frozen: trivial; building a top does not confuse a later analysis of the model', async () => {
    const model = residualLike();
    expect(isTrivial(findFrontier(model)!)).toBe(true);
    freezeLayers(model, { until: 'pool' });
    const frontier = findFrontier(model)!;
    await buildTop(model, frontier);
    await buildTop(model, frontier);
    expect(findFrontier(model)!.tensors.map((t) => t.layer)).toEqual(['pool']);
    disposeModels(model);
  });

  it('a downstream unfreeze lowers the cut; the frozen layers between two cuts run as their own part', async () => {
    const model = inceptionLike();
    freezeLayers(model, { until: 'pool' });
    const later = laterTrainable(model, [{ id: 'u', kind: 'unfreeze', hints: { unfreeze: { from: 'mixed2_3x3_reduce' } } }])!;
    const own = findFrontier(model)!;
    const low = findFrontier(model, (layer) => later(layer) || (layer.trainable && layer.trainableWeights.length > 0))!;
    expect(own.tensors.map((t) => t.layer)).toEqual(['pool']);
    // the weightless max-pool branch above the lower cut stays frozen: its output is cached too
    expect(low.tensors.map((t) => t.layer)).toEqual(['mixed1', 'mixed2_pool']);
    const between = await buildBetween(model, low, own);
    const x = images(2);
    const atLow = (await buildBottom(model, low)).predict(x) as TfCore.Tensor;
    const direct = (await buildBottom(model, own)).predict(x) as TfCore.Tensor;
    const derived = between.predict(atLow) as TfCore.Tensor;
    expect(Math.max(...Array.from(tf.abs(tf.sub(direct, derived)).dataSync()))).toBeLessThan(1e-6);
    expect(laterTrainable(model, [{ id: 'u', kind: 'unfreeze', hints: { unfreeze: { from: 'no_such_layer' } } }])).toBeUndefined();
    tf.dispose([x, atLow, direct, derived]);
    disposeModels(model);
  });
});

describe('views', () => {
  it('flip-only augmentation has exactly two views; random augmentation caches augment_views', () => {
    expect(planViews({ flip: true, crop: 0, rotate: 0, brightness: 0, contrast: 0 }, 4)).toMatchObject({ views: 2, kind: 'fixed' });
    expect(planViews({ flip: true, crop: 0.2, rotate: 0, brightness: 0, contrast: 0 }, 4)).toMatchObject({ views: 4, kind: 'random' });
    expect(planViews({ flip: false, crop: 0, rotate: 0, brightness: 0, contrast: 0 }, 4)).toMatchObject({ views: 1, kind: 'none' });
  });

  it('each record takes a seeded random view per epoch when shuffling, view 0 otherwise', async () => {
    // record r of view v holds the value 100 * v + r
    const count = 40;
    const x = Float32Array.from({ length: 2 * count }, (_, i) => 100 * Math.floor(i / count) + (i % count));
    const source = cachedSource({ xs: [x], shapes: [[1]], y: new Int32Array(count), count, views: 2 }, 16, 7);
    const seen = async (epoch: number, shuffle: boolean) => {
      const values: number[] = [];
      for await (const batch of source.batches(epoch, { shuffle })) values.push(...batch.x);
      return values;
    };
    const epoch0 = await seen(0, true);
    expect(epoch0.map((v) => v % 100).sort((a, b) => a - b)).toEqual(Array.from({ length: count }, (_, i) => i));
    const mirrored = epoch0.filter((v) => v >= 100).length;
    expect(mirrored).toBeGreaterThan(8);
    expect(mirrored).toBeLessThan(32);
    expect(await seen(0, true)).toEqual(epoch0);
    expect(await seen(1, true)).not.toEqual(epoch0);
    expect(await seen(0, false)).toEqual(Array.from({ length: count }, (_, i) => i));
  });
});
