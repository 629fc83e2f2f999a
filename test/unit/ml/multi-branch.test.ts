/**
 * Fine-tuning multi-branch bases on wasm: an Inception-style model (1×1 / 3×3 / pool branches
 * joined by Concatenate, BatchNormalization without `scale` as in Keras' InceptionV3) and a
 * residual (Add) model, each unfrozen from a layer inside a block so that some branches stay
 * frozen. Before the fix, a BN layer without `scale` anywhere in the model crashed the first
 * step with "Cannot read properties of undefined (reading 'dtype')" (see
 * `supplyNormalizationConstants`).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestBackend } from '../stages/helpers.js';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type { Tf, TfLayersApi } from '../../../src/ml/backend.js';
import { disposeModels } from '../../../src/ml/artifact.js';
import { buildBottom, buildTop, findFrontier } from '../../../src/ml/frontier.js';
import { cachedSource } from '../../../src/ml/frozen-pass.js';
import { arraySource } from '../../../src/ml/sources.js';
import { freezeLayers, unfreezeLayers } from '../../../src/ml/surgery.js';
import { fitModel } from '../../../src/ml/train.js';

let tf: Tf;
let tfl: TfLayersApi;
beforeAll(async () => {
  ({ tf, tfl } = await useTestBackend());
});

type Options = { scale: boolean; center?: boolean };

/** conv → BN → ReLU, like Keras' `conv2d_bn`. */
function convBn(x: SymbolicTensor, filters: number, kernelSize: number, name: string, seed: number, options: Options): SymbolicTensor {
  const kernelInitializer = tfl.initializers.glorotUniform({ seed });
  let y = tfl.layers.conv2d({ filters, kernelSize, padding: 'same', useBias: false, kernelInitializer, name: `${name}_conv` }).apply(x) as SymbolicTensor;
  y = tfl.layers.batchNormalization({ scale: options.scale, center: options.center ?? true, name: `${name}_bn` }).apply(y) as SymbolicTensor;
  return tfl.layers.activation({ activation: 'relu', name: `${name}_relu` }).apply(y) as SymbolicTensor;
}

/** Two mixed blocks (1×1, 1×1→3×3, avg-pool→1×1, concatenated), GAP, a softmax head. */
function inceptionNet(options: Options): LayersModel {
  let seed = 1;
  const mixed = (x: SymbolicTensor, name: string) => {
    const a = convBn(x, 4, 1, `${name}_b1`, seed++, options);
    const b = convBn(convBn(x, 3, 1, `${name}_b3a`, seed++, options), 4, 3, `${name}_b3b`, seed++, options);
    const pooled = tfl.layers.averagePooling2d({ poolSize: 3, strides: 1, padding: 'same', name: `${name}_pool` }).apply(x) as SymbolicTensor;
    const c = convBn(pooled, 2, 1, `${name}_bp`, seed++, options);
    return tfl.layers.concatenate({ name }).apply([a, b, c]) as SymbolicTensor;
  };
  const input = tfl.input({ shape: [8, 8, 3], name: 'image' });
  let x = convBn(input, 4, 3, 'stem', seed++, options);
  x = mixed(mixed(x, 'mixed0'), 'mixed1');
  x = tfl.layers.globalAveragePooling2d({ name: 'gap' }).apply(x) as SymbolicTensor;
  const output = tfl.layers.dense({ units: 2, activation: 'softmax', kernelInitializer: tfl.initializers.glorotUniform({ seed: 99 }), name: 'head' }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: output, name: 'inception' });
}

/** Two residual blocks (conv-BN-ReLU-conv-BN, added to the block input), GAP, a softmax head. */
function residualNet(options: Options): LayersModel {
  let seed = 1;
  const input = tfl.input({ shape: [8, 8, 3], name: 'image' });
  let x = convBn(input, 4, 3, 'stem', seed++, options);
  for (const name of ['block1', 'block2']) {
    const y = convBn(convBn(x, 4, 3, `${name}_a`, seed++, options), 4, 3, `${name}_b`, seed++, options);
    x = tfl.layers.add({ name: `${name}_add` }).apply([x, y]) as SymbolicTensor;
  }
  x = tfl.layers.globalAveragePooling2d({ name: 'gap' }).apply(x) as SymbolicTensor;
  const output = tfl.layers.dense({ units: 2, activation: 'softmax', kernelInitializer: tfl.initializers.glorotUniform({ seed: 99 }), name: 'head' }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: output, name: 'residual' });
}

const images = (() => {
  const n = 8;
  const x = new Float32Array(n * 8 * 8 * 3);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) + (Math.floor(i / 192) % 2) * 0.5;
  return { x, y: Int32Array.from({ length: n }, (_, i) => i % 2), recordShape: [8, 8, 3] };
})();

const weightsOf = (model: LayersModel, layer: string) => model.getLayer(layer).getWeights().map((w) => Array.from(w.dataSync()));

async function fineTune(model: LayersModel, from: string, epochs = 2) {
  freezeLayers(model);
  unfreezeLayers(model, { from });
  const before = tf.memory().numTensors;
  const history = await fitModel(tf, model, arraySource(images, 4, 3), arraySource(images, 4, 3), { epochs, optimizer: { name: 'adam', lr: 0.01 }, numClasses: 2 });
  return { history, leaked: tf.memory().numTensors - before };
}

describe('fine-tuning multi-branch bases', () => {
  it('trains an Inception-style base (BN without scale) unfrozen inside a mixed block: frozen branches stay, trainable ones move', async () => {
    const model = inceptionNet({ scale: false });
    // mixed1_b3b_conv comes after mixed1_b3a_*, mixed1_pool and mixed1_b1_conv in layer order:
    // the 1×1 branch's conv and the 3×3 branch's first conv stay frozen, the rest trains.
    const frozen = ['mixed1_b1_conv', 'mixed1_b3a_conv', 'mixed1_b3a_bn', 'mixed0_bp_bn'].map((l) => weightsOf(model, l));
    const trainable = ['mixed1_b3b_conv', 'mixed1_bp_conv', 'mixed1_b1_bn', 'head'].map((l) => weightsOf(model, l));
    // the cut crosses the block: several frozen tensors feed the trainable part (cached by the pipeline)
    expect(findFrontier((freezeLayers(model), unfreezeLayers(model, { from: 'mixed1_b3b_conv' }), model))!.tensors.length).toBeGreaterThan(1);
    const { history, leaked } = await fineTune(model, 'mixed1_b3b_conv');
    expect(history).toHaveLength(2);
    expect(history.every((h) => Number.isFinite(h.loss) && Number.isFinite(h.valLoss))).toBe(true);
    expect(leaked).toBe(0);
    ['mixed1_b1_conv', 'mixed1_b3a_conv', 'mixed1_b3a_bn', 'mixed0_bp_bn'].forEach((l, i) => expect(weightsOf(model, l), l).toEqual(frozen[i]));
    ['mixed1_b3b_conv', 'mixed1_bp_conv', 'mixed1_b1_bn', 'head'].forEach((l, i) => expect(weightsOf(model, l), l).not.toEqual(trainable[i]));
    // The stand-ins are gone again: the layer saves as it was loaded.
    const bn = model.getLayer('mixed1_b1_bn') as unknown as { scale: boolean; gamma: unknown; getConfig(): { scale: boolean } };
    expect(bn.scale).toBe(false);
    expect(bn.gamma == null).toBe(true);
    expect(bn.getConfig().scale).toBe(false);
    model.dispose();
  });

  it('trains the top of an Inception-style base split at a mixed block (trainable BN without scale or center, on cached features)', async () => {
    const model = inceptionNet({ scale: false, center: false });
    freezeLayers(model);
    unfreezeLayers(model, { from: 'mixed1_b3a_conv' });
    const frontier = findFrontier(model)!;
    // the block's input, and its (weightless, frozen) max-pool branch
    expect(frontier.tensors.map((t) => t.layer)).toEqual(['mixed0', 'mixed1_pool']);
    const bottom = await buildBottom(model, frontier);
    const top = await buildTop(model, frontier);
    const outs = bottom.predict(tf.tensor(images.x, [8, 8, 8, 3])) as ReturnType<Tf['tensor']>[];
    const features = { xs: outs.map((o) => o.dataSync() as Float32Array), shapes: frontier.tensors.map((t) => t.shape), y: images.y, count: images.y.length, views: 1 };
    tf.dispose(outs);
    const before = weightsOf(model, 'mixed1_b1_bn');
    const history = await fitModel(tf, top, cachedSource(features, 4, 3), undefined, { epochs: 2, optimizer: { name: 'adam', lr: 0.01 }, numClasses: 2 });
    expect(history.every((h) => Number.isFinite(h.loss))).toBe(true);
    expect(weightsOf(model, 'mixed1_b1_bn')).not.toEqual(before); // moving statistics of a trainable BN update
    disposeModels(model);
  });

  it('a BN layer without scale trains exactly like one with a frozen scale of 1', async () => {
    const steps = async (scale: boolean) => {
      const model = inceptionNet({ scale });
      freezeLayers(model);
      unfreezeLayers(model, { from: 'mixed1_b3b_conv' });
      // With scale, gamma is a weight of its own: freeze it so both models train the same weights.
      if (scale) for (const layer of model.layers.filter((l) => l.getClassName() === 'BatchNormalization')) (layer as unknown as { gamma: { trainable: boolean } }).gamma.trainable = false;
      await fitModel(tf, model, arraySource(images, 4, 3), undefined, { epochs: 1, optimizer: { name: 'sgd', lr: 0.1 }, numClasses: 2 });
      const result = ['mixed1_b3b_conv', 'mixed1_bp_conv', 'head'].map((l) => weightsOf(model, l));
      model.dispose();
      return result;
    };
    const [without, withScale] = [await steps(false), await steps(true)];
    without.forEach((layer, i) => layer.forEach((values, j) => values.forEach((v, k) => expect(v).toBeCloseTo(withScale[i][j][k], 5))));
  });

  it('trains a residual (Add) base unfrozen inside a residual block', async () => {
    const model = residualNet({ scale: false });
    const frozen = weightsOf(model, 'block2_a_conv');
    const trainable = weightsOf(model, 'block2_b_conv');
    const { history, leaked } = await fineTune(model, 'block2_b_conv');
    expect(history.every((h) => Number.isFinite(h.loss))).toBe(true);
    expect(leaked).toBe(0);
    expect(weightsOf(model, 'block2_a_conv')).toEqual(frozen);
    expect(weightsOf(model, 'block2_b_conv')).not.toEqual(trainable);
    model.dispose();
  });

  it('LayerNormalization without scale trains too', async () => {
    const model = tfl.sequential({
      layers: [
        tfl.layers.dense({ units: 6, inputShape: [4], kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }) }),
        tfl.layers.layerNormalization({ scale: false }),
        tfl.layers.dense({ units: 2, activation: 'softmax', kernelInitializer: tfl.initializers.glorotUniform({ seed: 2 }) }),
      ],
    });
    model.layers[0].trainable = false;
    const data = { x: Float32Array.from({ length: 32 }, (_, i) => Math.cos(i)), y: Int32Array.from({ length: 8 }, (_, i) => i % 2), recordShape: [4] };
    const history = await fitModel(tf, model, arraySource(data, 4, 1), undefined, { epochs: 1, optimizer: { name: 'adam', lr: 0.01 }, numClasses: 2 });
    expect(Number.isFinite(history[0].loss)).toBe(true);
    model.dispose();
  });
});
