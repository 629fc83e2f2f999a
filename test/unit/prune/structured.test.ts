import { beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { configureBackend, useLayers, useTf, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import { countMacs } from '../../../src/ml/prune/measure.js';
import { analyzeChannels, chooseChannels, prunableGroups, rebuildPruned, scoreChannels } from '../../../src/ml/prune/structured.js';
import { freezeLayers, isBatchNormInference } from '../../../src/ml/surgery.js';

let tf: Tf;
let tfl: TfLayersApi;

beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  tfl = await useLayers();
});

/**
 * stem conv(4) -> bn0 -> relu = x0; conv1(6) -> bn1 -> relu -> conv2(4) -> bn2; add(x0, .) -> relu;
 * concatenate(out, h) -> GAP -> dense(3). Groups: {conv0, conv2} (the residual), {conv1}.
 */
function residualNet(): LayersModel {
  const init = (seed: number) => tfl.initializers.glorotUniform({ seed });
  const input = tfl.input({ shape: [6, 6, 3], name: 'image' });
  let x0 = tfl.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', name: 'conv0', kernelInitializer: init(1) }).apply(input) as SymbolicTensor;
  x0 = tfl.layers.batchNormalization({ name: 'bn0' }).apply(x0) as SymbolicTensor;
  x0 = tfl.layers.reLU({ name: 'relu0' }).apply(x0) as SymbolicTensor;
  let h = tfl.layers.conv2d({ filters: 6, kernelSize: 3, padding: 'same', name: 'conv1', kernelInitializer: init(2) }).apply(x0) as SymbolicTensor;
  h = tfl.layers.batchNormalization({ name: 'bn1' }).apply(h) as SymbolicTensor;
  h = tfl.layers.reLU({ name: 'relu1' }).apply(h) as SymbolicTensor;
  let h2 = tfl.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', name: 'conv2', kernelInitializer: init(3) }).apply(h) as SymbolicTensor;
  h2 = tfl.layers.batchNormalization({ name: 'bn2' }).apply(h2) as SymbolicTensor;
  let y = tfl.layers.add({ name: 'add' }).apply([x0, h2]) as SymbolicTensor;
  y = tfl.layers.reLU({ name: 'relu_out' }).apply(y) as SymbolicTensor;
  const z = tfl.layers.concatenate({ name: 'concat' }).apply([y, h]) as SymbolicTensor;
  const pooled = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(z) as SymbolicTensor;
  const out = tfl.layers.dense({ units: 3, activation: 'softmax', name: 'head', kernelInitializer: init(4) }).apply(pooled) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: out, name: 'residual' });
}

/** Randomizes BN statistics (so slicing mistakes show), then silences some channels exactly. */
function silence(model: LayersModel, channels: Record<string, number[]>): void {
  for (const layer of model.layers.filter((l) => l.getClassName() === 'BatchNormalization')) {
    const n = layer.getWeights()[0].shape[0];
    const dead = new Set(channels[layer.name] ?? []);
    const g = Float32Array.from({ length: n }, (_, i) => (dead.has(i) ? 0 : 0.5 + 0.1 * i));
    const b = Float32Array.from({ length: n }, (_, i) => (dead.has(i) ? 0 : 0.05 * (i - 2)));
    layer.setWeights([tf.tensor1d(g), tf.tensor1d(b), tf.tensor1d(Float32Array.from({ length: n }, (_, i) => 0.1 * i)), tf.tensor1d(Float32Array.from({ length: n }, (_, i) => 1 + 0.2 * i))]);
  }
}

function predict(model: LayersModel): Float32Array {
  return tf.tidy(() => (model.predict(tf.randomNormal([3, 6, 6, 3], 0, 1, 'float32', 11)) as TfCore.Tensor).dataSync() as Float32Array);
}

function filters(model: LayersModel, name: string): number {
  return (model.getLayer(name).getWeights()[0] as TfCore.Tensor).shape.at(-1)!;
}

describe('structured pruning', () => {
  it('finds the residual group and the inner group; the head stays fixed', () => {
    const model = residualNet();
    const plan = analyzeChannels(model, { layers: 'all', exclude: [] });
    const groups = prunableGroups(plan);
    expect(groups.map((g) => [...g.producers].sort())).toEqual([['conv0', 'conv2'], ['conv1']]);
    expect(plan.groups.find((g) => g.producers.includes('head'))!.fixedBy).toContain('model output');
    expect(plan.leftAlone).toEqual([]);
    expect(prunableGroups(analyzeChannels(model, { layers: 'all', exclude: ['conv2'] })).map((g) => g.producers)).toEqual([['conv1']]);
    model.dispose();
  });

  for (const scope of ['per-layer', 'global'] as const) {
    it(`removes silenced channels without changing the outputs, shapes consistent across add and concatenate (bn, ${scope})`, async () => {
      const model = residualNet();
      // Channel 3 of the residual group (both sides of the add) and channels 0, 1 of conv1.
      silence(model, { bn0: [3], bn2: [3], bn1: [0, 1] });
      const expected = predict(model);
      const plan = analyzeChannels(model, { layers: 'all', exclude: [] });
      const kept = chooseChannels(plan, await scoreChannels(model, plan, 'bn'), scope === 'global' ? 0.3 : 0.34, scope);
      const pruned = await rebuildPruned(tf, model, plan, kept);
      expect([filters(pruned, 'conv0'), filters(pruned, 'conv1'), filters(pruned, 'conv2')]).toEqual([3, 4, 3]);
      expect((pruned.getLayer('head').getWeights()[0] as TfCore.Tensor).shape).toEqual([7, 3]);
      expect((pruned.getLayer('conv1').getWeights()[0] as TfCore.Tensor).shape).toEqual([3, 3, 3, 4]);
      expect(pruned.outputs[0].shape).toEqual([null, 3]);
      const got = predict(pruned);
      got.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThan(1e-5));
      expect((await countMacs(pruned)).dense).toBeLessThan((await countMacs(model)).dense);
      model.dispose();
      pruned.dispose();
    });
  }

  it('l1 importance removes all-zero filters; frozen state and trainable flags survive the rebuild', async () => {
    const model = residualNet();
    const conv1 = model.getLayer('conv1');
    const [kernel, bias] = conv1.getWeights();
    const zeroed = tf.tidy(() => tf.mul(kernel, tf.tensor1d([0, 1, 1, 0, 1, 1])));
    conv1.setWeights([zeroed, tf.zerosLike(bias)]);
    const expected = predict(model);
    freezeLayers(model, { until: 'relu0' });
    const plan = analyzeChannels(model, { layers: 'trainable', exclude: [] });
    expect(prunableGroups(plan).map((g) => g.producers)).toEqual([['conv1']]); // the residual group has a frozen producer
    const kept = chooseChannels(plan, await scoreChannels(model, plan, 'l1'), 2 / 6, 'per-layer');
    expect(kept.get(prunableGroups(plan)[0].id)).toEqual([1, 2, 4, 5]);
    const pruned = await rebuildPruned(tf, model, plan, kept);
    const got = predict(pruned);
    got.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThan(1e-5));
    expect(pruned.getLayer('conv0').trainable).toBe(false);
    expect(isBatchNormInference(pruned.getLayer('bn0'))).toBe(true);
    expect(pruned.getLayer('conv1').trainable).toBe(true);
    model.dispose();
    pruned.dispose();
  });

  it('leaves channels that a Flatten reads alone and says so', () => {
    const input = tfl.input({ shape: [4, 4, 2] });
    let x = tfl.layers.conv2d({ filters: 5, kernelSize: 3, name: 'c1' }).apply(input) as SymbolicTensor;
    const y = tfl.layers.conv2d({ filters: 4, kernelSize: 1, name: 'c2' }).apply(x) as SymbolicTensor;
    x = tfl.layers.flatten({ name: 'flat' }).apply(y) as SymbolicTensor;
    const model = tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 2, name: 'out' }).apply(x) as SymbolicTensor });
    const plan = analyzeChannels(model, { layers: 'all', exclude: [] });
    expect(plan.leftAlone).toEqual(['flat (Flatten)']);
    expect(prunableGroups(plan).map((g) => g.producers)).toEqual([['c1']]);
    model.dispose();
  });
});
