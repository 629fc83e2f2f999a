/**
 * Per-layer gradient parity: one small model per backward emitter, TF.js autodiff as the
 * reference. On the cpu backend: tfjs-backend-wasm 4.22's MaxPoolGrad gives wrong gradients
 * for a conv → max-pool net at batch > 1 (the cpu backend and a JS reference agree with ours).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers, useTf, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import { allLayers, setBatchNormInference } from '../../../src/ml/surgery.js';
import { ARCHITECTURES } from '../../fixtures/architectures.js';
import { buildTrainingGraph } from '../../../src/ml/onnx/train-graph.js';
import { compareGradients, randomBatch } from './grad-parity.js';

let tf: Tf;
let tfl: TfLayersApi;
beforeAll(async () => {
  configureBackend('cpu');
  tf = await useTf();
  tfl = await useLayers();
});

const TOLERANCE = 1e-5;
let seed = 0;
const init = () => tfl.initializers.randomNormal({ mean: 0, stddev: 0.5, seed: ++seed });

/** input → body → (flatten →) dense softmax; `body` builds the layers under test. */
function modelOf(inputShape: number[], body: (x: SymbolicTensor) => SymbolicTensor, numClasses = 3): LayersModel {
  const input = tfl.input({ shape: inputShape });
  let y = body(input);
  if (y.shape.length > 2) y = tfl.layers.flatten().apply(y) as SymbolicTensor;
  const out = tfl.layers.dense({ units: numClasses, activation: 'softmax', kernelInitializer: init(), biasInitializer: init() }).apply(y) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: out });
}

async function expectParity(model: LayersModel, inputShape: number[], options: { classWeights?: number[]; batch?: number } = {}) {
  const batch = randomBatch([options.batch ?? 4, ...inputShape], 3, ++seed);
  const result = await compareGradients(tf, model, batch, 3, options.classWeights);
  expect(result.names.length).toBeGreaterThan(0);
  expect(Math.abs(result.loss - result.tfLoss) / result.tfLoss, 'loss').toBeLessThan(1e-6);
  expect(result.errors, JSON.stringify(result.errors)).toSatisfy(() => result.worst < TOLERANCE);
  return result;
}

const apply = (layer: { apply(x: SymbolicTensor): unknown }, x: SymbolicTensor) => layer.apply(x) as SymbolicTensor;

describe('gradient parity with tf.variableGrads', () => {
  it('Dense with relu, sigmoid, tanh, swish and class weights', async () => {
    for (const activation of ['relu', 'sigmoid', 'tanh', 'swish', 'linear'] as const) {
      const model = modelOf([5], (x) => apply(tfl.layers.dense({ units: 4, activation, kernelInitializer: init(), biasInitializer: init() }), x));
      await expectParity(model, [5], { classWeights: [0.5, 2, 1] });
    }
  });

  for (const [kernel, strides, padding, size] of [
    [3, 1, 'same', 5],
    [3, 2, 'same', 6],
    [3, 2, 'same', 7],
    [3, 2, 'valid', 7],
    [2, 2, 'valid', 6],
    [1, 1, 'valid', 4],
    [1, 2, 'same', 5],
    [5, 1, 'valid', 6],
  ] as const) {
    it(`Conv2D ${kernel}x${kernel} stride ${strides} ${padding} on ${size}x${size}`, async () => {
      const model = modelOf([size, size, 3], (x) => apply(tfl.layers.conv2d({ filters: 4, kernelSize: kernel, strides, padding, activation: 'relu', kernelInitializer: init(), biasInitializer: init() }), x));
      await expectParity(model, [size, size, 3]);
    });
  }

  for (const [strides, padding, multiplier, size] of [
    [1, 'same', 1, 5],
    [2, 'same', 1, 6],
    [2, 'valid', 2, 7],
    [1, 'valid', 2, 5],
  ] as const) {
    it(`DepthwiseConv2D 3x3 stride ${strides} ${padding} multiplier ${multiplier} on ${size}x${size}`, async () => {
      const model = modelOf([size, size, 3], (x) => apply(tfl.layers.depthwiseConv2d({ kernelSize: 3, strides, padding, depthMultiplier: multiplier, depthwiseInitializer: init(), biasInitializer: init(), useBias: true }), x));
      await expectParity(model, [size, size, 3]);
    });
  }

  it('DepthwiseConv2D 7x7 (the grouped-conv dW); a dilated Conv2D is refused (TF.js has no gradient for it)', async () => {
    const depthwise = modelOf([8, 8, 2], (x) => apply(tfl.layers.depthwiseConv2d({ kernelSize: 7, padding: 'same', depthMultiplier: 2, depthwiseInitializer: init() }), x));
    await expectParity(depthwise, [8, 8, 2]);
    const dilated = modelOf([8, 8, 2], (x) => apply(tfl.layers.conv2d({ filters: 3, kernelSize: 3, dilationRate: 2, padding: 'same', kernelInitializer: init() }), x));
    expect(() => buildTrainingGraph(dilated, { numClasses: 3 })).toThrow(/dilated convolution/);
  });

  it('SeparableConv2D', async () => {
    const model = modelOf([6, 6, 3], (x) => apply(tfl.layers.separableConv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same', depthwiseInitializer: init(), pointwiseInitializer: init(), biasInitializer: init() }), x));
    await expectParity(model, [6, 6, 3]);
  });

  it('BatchNormalization in inference mode, gamma and beta trainable', async () => {
    const model = modelOf([4, 4, 3], (x) => {
      const bn = tfl.layers.batchNormalization({ gammaInitializer: init(), betaInitializer: init(), movingMeanInitializer: init(), movingVarianceInitializer: 'ones' });
      const y = apply(bn, apply(tfl.layers.conv2d({ filters: 3, kernelSize: 1, kernelInitializer: init() }), x));
      setBatchNormInference(bn, true);
      return y;
    });
    await expectParity(model, [4, 4, 3]);
  });

  it('ReLU(6), LeakyReLU, Activation layers, ZeroPadding2D, Cropping2D', async () => {
    const model = modelOf([5, 5, 2], (x) => {
      let y = apply(tfl.layers.conv2d({ filters: 3, kernelSize: 1, kernelInitializer: init(), biasInitializer: init() }), x);
      y = apply(tfl.layers.reLU({ maxValue: 0.5 }), y);
      y = apply(tfl.layers.zeroPadding2d({ padding: [[1, 0], [2, 1]] }), y);
      y = apply(tfl.layers.conv2d({ filters: 3, kernelSize: 3, kernelInitializer: init() }), y);
      y = apply(tfl.layers.leakyReLU({ alpha: 0.2 }), y);
      y = apply(tfl.layers.cropping2D({ cropping: [[1, 0], [0, 1]] }), y);
      return apply(tfl.layers.activation({ activation: 'tanh' }), y);
    });
    await expectParity(model, [5, 5, 2]);
  });

  it('Add, Multiply, Average, Concatenate on a branched graph', async () => {
    const model = modelOf([4, 4, 2], (x) => {
      const a = apply(tfl.layers.conv2d({ filters: 3, kernelSize: 1, kernelInitializer: init() }), x);
      const b = apply(tfl.layers.conv2d({ filters: 3, kernelSize: 3, padding: 'same', kernelInitializer: init() }), x);
      const sum = tfl.layers.add().apply([a, b]) as SymbolicTensor;
      const product = tfl.layers.multiply().apply([sum, b]) as SymbolicTensor;
      const mean = tfl.layers.average().apply([product, sum]) as SymbolicTensor;
      return tfl.layers.concatenate().apply([mean, a, x]) as SymbolicTensor;
    });
    await expectParity(model, [4, 4, 2]);
  });

  const pooled = (pool: (x: SymbolicTensor) => SymbolicTensor) => modelOf([6, 6, 2], (x) => pool(apply(tfl.layers.conv2d({ filters: 3, kernelSize: 1, kernelInitializer: init(), biasInitializer: init() }), x)));
  const pools: [string, () => { apply(x: SymbolicTensor): unknown }][] = [
    ['GlobalAveragePooling2D', () => tfl.layers.globalAveragePooling2d({})],
    ['GlobalMaxPooling2D', () => tfl.layers.globalMaxPooling2d({})],
    ['MaxPooling2D 2x2', () => tfl.layers.maxPooling2d({ poolSize: 2 })],
    ['MaxPooling2D 3x3 stride 2 same', () => tfl.layers.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same' })],
    ['AveragePooling2D 2x2', () => tfl.layers.averagePooling2d({ poolSize: 2 })],
    ['AveragePooling2D 3x3 stride 2 same', () => tfl.layers.averagePooling2d({ poolSize: 3, strides: 2, padding: 'same' })],
  ];
  for (const [name, make] of pools) {
    it(name, async () => {
      await expectParity(pooled((x) => apply(make(), x)), [6, 6, 2]);
    });
  }

  it('Dropout with masks drawn from the same seed as TF.js', async () => {
    const model = modelOf([6], (x) => apply(tfl.layers.dropout({ rate: 0.4 }), apply(tfl.layers.dense({ units: 8, activation: 'relu', kernelInitializer: init() }), x)));
    await expectParity(model, [6], { batch: 8 });
  });

  it('Reshape to rank 4 and back', async () => {
    const model = modelOf([12], (x) => apply(tfl.layers.conv2d({ filters: 2, kernelSize: 2, kernelInitializer: init() }), apply(tfl.layers.reshape({ targetShape: [2, 3, 2] }), x)));
    await expectParity(model, [12]);
  });

  it('Multiply broadcasting [H, W, C] by [1, 1, C] (squeeze-excite)', async () => {
    const model = modelOf([4, 4, 3], (x) => {
      const y = apply(tfl.layers.conv2d({ filters: 3, kernelSize: 3, padding: 'same', kernelInitializer: init() }), x);
      const se = apply(tfl.layers.conv2d({ filters: 3, kernelSize: 1, activation: 'sigmoid', kernelInitializer: init() }), apply(tfl.layers.reshape({ targetShape: [1, 1, 3] }), apply(tfl.layers.globalAveragePooling2d({}), y)));
      return tfl.layers.multiply().apply([y, se]) as SymbolicTensor;
    });
    await expectParity(model, [4, 4, 3]);
  });
});

describe('whole architectures (test/fixtures/architectures.ts), every layer trainable, BN in inference mode', () => {
  for (const [name, build] of Object.entries(ARCHITECTURES)) {
    it(name, async () => {
      const model = await build({ seed: 5 });
      for (const layer of allLayers(model)) if (layer.getClassName() === 'BatchNormalization') setBatchNormInference(layer, true);
      const shape = model.inputs[0].shape.slice(1) as number[];
      const result = await compareGradients(tf, model, randomBatch([3, ...shape], 3, 9), 3);
      expect(result.names.length).toBe(model.trainableWeights.length);
      expect(Math.abs(result.loss - result.tfLoss) / result.tfLoss).toBeLessThan(1e-6);
      expect(result.worst, JSON.stringify(result.errors)).toBeLessThan(1e-5);
    });
  }
});
