import { beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers, useTf, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import {
  adaptInput,
  blockKey,
  cutModel,
  freezeLayers,
  isBatchNormInference,
  summarizeModel,
  unfreezeLayers,
} from '../../../src/ml/surgery.js';
import { StageError } from '../../../src/runtime/errors.js';

let tf: Tf;
let tfl: TfLayersApi;

beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  tfl = await useLayers();
});

/** Deterministic values in [-1, 1) shifted by `offset`. */
function values(count: number, seed: number, offset = 0): Float32Array {
  const out = new Float32Array(count);
  let state = seed;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1 + offset;
  }
  return out;
}

/** input → conv → bn → gap → head: a base with BatchNormalization and a trainable head. */
function tinyNet(inputShape = [4, 4, 2]): LayersModel {
  const seed = 5;
  const input = tfl.input({ shape: inputShape, name: 'image' });
  let x = tfl.layers.conv2d({ filters: 3, kernelSize: 3, padding: 'same', name: 'conv', kernelInitializer: tfl.initializers.glorotUniform({ seed }) }).apply(input) as SymbolicTensor;
  x = tfl.layers.batchNormalization({ name: 'bn' }).apply(x) as SymbolicTensor;
  x = tfl.layers.globalAveragePooling2d({ name: 'gap' }).apply(x) as SymbolicTensor;
  const out = tfl.layers.dense({ units: 2, activation: 'softmax', name: 'head', kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + 1 }) }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: out, name: 'tiny' });
}

/** Far from the BN's initial moving statistics (mean 0, variance 1), so batch statistics differ. */
function batch(count = 8): { xs: ReturnType<Tf['tensor']>; ys: ReturnType<Tf['tensor']> } {
  return {
    xs: tf.tensor(values(count * 4 * 4 * 2, 9, 3), [count, 4, 4, 2]),
    ys: tf.oneHot(tf.tensor1d(Array.from({ length: count }, (_, i) => i % 2), 'int32'), 2),
  };
}

function snapshot(model: LayersModel, probe: LayersModel, xs: ReturnType<Tf['tensor']>) {
  const bn = model.getLayer('bn');
  const named = Object.fromEntries(bn.weights.map((w) => [w.originalName.split('/').pop()!, Array.from(w.read().dataSync())]));
  return {
    movingMean: named.moving_mean,
    movingVariance: named.moving_variance,
    bnOutput: Array.from((probe.predict(xs) as ReturnType<Tf['tensor']>).dataSync()),
    head: Array.from(model.getLayer('head').getWeights()[0].dataSync()),
  };
}

async function fit(model: LayersModel, epochs = 2): Promise<void> {
  model.compile({ optimizer: tf.train.sgd(0.5), loss: 'categoricalCrossentropy' });
  const { xs, ys } = batch();
  await model.fit(xs, ys, { epochs, batchSize: 4, shuffle: false, verbose: 0 });
  tf.dispose([xs, ys]);
}

describe('freezing BatchNormalization', () => {
  it('TF.js alone (trainable = false) still updates a frozen BN during fit: the trap we fix', async () => {
    const model = tinyNet();
    const probe = await cutModel(model, 'bn');
    model.getLayer('conv').trainable = false;
    model.getLayer('bn').trainable = false;
    const { xs } = batch();
    const before = snapshot(model, probe, xs);
    await fit(model);
    const after = snapshot(model, probe, xs);
    expect(after.movingMean).not.toEqual(before.movingMean);
    expect(after.bnOutput).not.toEqual(before.bnOutput);
  });

  it('freezeLayers keeps BN moving statistics and outputs unchanged through fit; the head still trains', async () => {
    const model = tinyNet();
    const probe = await cutModel(model, 'bn');
    const result = freezeLayers(model, { until: 'bn' });
    expect(result.frozen).toEqual(['image', 'conv', 'bn']);
    expect(isBatchNormInference(model.getLayer('bn'))).toBe(true);
    const { xs } = batch();
    const before = snapshot(model, probe, xs);
    await fit(model);
    const after = snapshot(model, probe, xs);
    expect(after.movingMean).toEqual(before.movingMean);
    expect(after.movingVariance).toEqual(before.movingVariance);
    expect(after.bnOutput).toEqual(before.bnOutput);
    expect(after.head).not.toEqual(before.head);
  });

  it('unfreezeLayers returns BN to training mode: its statistics move again', async () => {
    const model = tinyNet();
    freezeLayers(model);
    unfreezeLayers(model);
    expect(isBatchNormInference(model.getLayer('bn'))).toBe(false);
    expect(Object.prototype.hasOwnProperty.call(model.getLayer('bn'), 'call')).toBe(false); // the patch is gone
    const probe = await cutModel(model, 'bn');
    const { xs } = batch();
    const before = snapshot(model, probe, xs);
    await fit(model);
    expect(snapshot(model, probe, xs).movingMean).not.toEqual(before.movingMean);
  });

  it('unfreezeLayers can keep BN in inference mode while its gamma and beta train', async () => {
    const model = tinyNet();
    freezeLayers(model);
    unfreezeLayers(model, { keepBatchNormInference: true });
    expect(model.getLayer('bn').trainable).toBe(true);
    const probe = await cutModel(model, 'bn');
    const { xs } = batch();
    const before = snapshot(model, probe, xs);
    await fit(model);
    const after = snapshot(model, probe, xs);
    expect(after.movingMean).toEqual(before.movingMean);
    expect(after.bnOutput).not.toEqual(before.bnOutput); // gamma/beta moved
  });
});

describe('freezeLayers / unfreezeLayers selection', () => {
  it('takes a count like Keras layers[:n], the "layers[:n]" string, or a negative count', () => {
    const model = tinyNet();
    expect(freezeLayers(model, { until: 2 }).frozen).toEqual(['image', 'conv']);
    expect(freezeLayers(model, { until: 'layers[:3]' }).frozen).toEqual(['image', 'conv', 'bn']);
    expect(freezeLayers(model, { until: -1 }).trainable).toEqual(['head']);
    expect(freezeLayers(model).trainable).toEqual([]);
    expect(() => freezeLayers(model, { until: 9 })).toThrow(/has 5 layers/);
  });

  it('suggests close names for an unknown layer', () => {
    const model = tinyNet();
    const error = (() => {
      try {
        freezeLayers(model, { until: 'bn1' });
      } catch (e) {
        return e;
      }
    })() as StageError;
    expect(error).toBeInstanceOf(StageError);
    expect(error.code).toBe('layer_not_found');
    expect(error.message).toBe('model "tiny" has no layer "bn1"; did you mean "bn"?');
  });

  it('derives block keys from layer names', () => {
    expect(blockKey('block_16_expand_BN')).toBe('block_16');
    expect(blockKey('conv5_block3_out')).toBe('conv5');
    expect(blockKey('block6a_se_reduce')).toBe('block6a');
    expect(blockKey('out_relu')).toBeNull();
  });

  it('unfreezes the top N frozen blocks and whatever sits above them', () => {
    const input = tfl.input({ shape: [4, 4, 2], name: 'input_1' });
    let x: SymbolicTensor = input;
    for (const block of [1, 2, 3]) {
      x = tfl.layers.conv2d({ filters: 2, kernelSize: 1, name: `block_${block}_conv` }).apply(x) as SymbolicTensor;
      x = tfl.layers.batchNormalization({ name: `block_${block}_bn` }).apply(x) as SymbolicTensor;
    }
    x = tfl.layers.reLU({ name: 'out_relu' }).apply(x) as SymbolicTensor;
    x = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as SymbolicTensor;
    const model = tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 1, name: 'head' }).apply(x) as SymbolicTensor });
    freezeLayers(model, { until: 'pool' });
    expect(unfreezeLayers(model, { blocks: 1 }).trainable).toEqual(['block_3_conv', 'block_3_bn', 'out_relu', 'pool', 'head']);
    expect(isBatchNormInference(model.getLayer('block_2_bn'))).toBe(true);
    expect(isBatchNormInference(model.getLayer('block_3_bn'))).toBe(false);
    expect(unfreezeLayers(model, { blocks: 1 }).frozen).toEqual(['input_1', 'block_1_conv', 'block_1_bn']); // block 2 is now the top frozen one
    expect(unfreezeLayers(model, { from: 'block_1_bn' }).frozen).toEqual(['input_1', 'block_1_conv']);
    expect(() => unfreezeLayers(model, { from: 'x', blocks: 1 })).toThrow(StageError);
  });
});

describe('cutModel', () => {
  it('ends the model at a layer and shares its weights', async () => {
    const model = tinyNet();
    const cut = await cutModel(model, 'gap');
    expect(cut.outputs[0].shape).toEqual([null, 3]);
    expect(cut.getLayer('conv')).toBe(model.getLayer('conv'));
    await expect(cutModel(model, 'gapp')).rejects.toThrow(/did you mean "gap"\?/);
  });
});

describe('adaptInput', () => {
  it('puts a grayscale input in front of an RGB model by repeating the channel', async () => {
    const model = tinyNet([4, 4, 3]);
    freezeLayers(model, { until: 'bn' });
    const gray = await adaptInput(model, { inputShape: [4, 4, 1] });
    expect(gray.inputs[0].shape).toEqual([null, 4, 4, 1]);
    const one = tf.tensor(values(2 * 4 * 4, 4), [2, 4, 4, 1]);
    const rgb = tf.concat([one, one, one], 3);
    const expected = (model.predict(rgb) as ReturnType<Tf['tensor']>).dataSync();
    const actual = (gray.predict(one) as ReturnType<Tf['tensor']>).dataSync();
    expect(Array.from(actual)).toEqual(Array.from(expected));
    expect(gray.getLayer('conv').trainable).toBe(false);
    expect(isBatchNormInference(gray.getLayer('bn'))).toBe(true);
    expect(summarizeModel(gray).params).toBe(summarizeModel(model).params); // the adapter has no weights
  });

  it('changes the spatial size of a fully convolutional model', async () => {
    const model = tinyNet([4, 4, 2]);
    const bigger = await adaptInput(model, { inputShape: [8, 6, 2] });
    expect(bigger.inputs[0].shape).toEqual([null, 8, 6, 2]);
    expect(Array.from(bigger.getLayer('conv').getWeights()[0].dataSync())).toEqual(Array.from(model.getLayer('conv').getWeights()[0].dataSync()));
    expect((bigger.predict(tf.zeros([1, 8, 6, 2])) as ReturnType<Tf['tensor']>).shape).toEqual([1, 2]);
  });

  it('refuses what the architecture cannot take, saying why', async () => {
    const input = tfl.input({ shape: [4, 4, 2] });
    const flat = tfl.layers.flatten({ name: 'flat' }).apply(input) as SymbolicTensor;
    const model = tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 2, name: 'fc' }).apply(flat) as SymbolicTensor });
    await expect(adaptInput(model, { inputShape: [6, 6, 2] })).rejects.toThrow(/layer "fc" depends on the input size .*\[72, 2\] instead of \[32, 2\]/);
    await expect(adaptInput(model, { inputShape: [4, 4, 3] })).rejects.toThrow(/only 1 channel can be mapped onto 2/);
  });
});

describe('summarizeModel', () => {
  it('counts parameters by trainability', () => {
    const model = tinyNet();
    freezeLayers(model, { until: 'conv' });
    // conv 3·3·2·3+3 = 57 frozen; bn gamma+beta 6 trainable, moving stats 6 non-trainable; head 3·2+2 = 8.
    expect(summarizeModel(model)).toEqual({
      name: 'tiny',
      layers: 5,
      params: 77,
      trainableParams: 14,
      nonTrainableParams: 63,
      frozenLayers: 2,
      inputShape: [null, 4, 4, 2],
      outputShape: [null, 2],
    });
  });
});
