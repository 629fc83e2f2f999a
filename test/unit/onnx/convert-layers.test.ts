/**
 * Each supported layer, alone in a tiny model with seeded random weights, against TF.js
 * `model.predict` on wasm: max |onnx - tfjs| ≤ 1e-5 · max |tfjs|. Sizes are odd and even so
 * TF's asymmetric 'same' padding is exercised on both.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers, type TfLayersApi } from '../../../src/ml/backend.js';
import { randomizeWeights } from '../../fixtures/architectures.js';
import { checkModel } from './parity.js';

let tfl: TfLayersApi;
beforeAll(async () => {
  configureBackend('wasm');
  tfl = await useLayers();
});

type Apply = (l: TfLayersApi['layers'], xs: SymbolicTensor[]) => SymbolicTensor;
interface Case {
  name: string;
  inputs: number[][];
  build: Apply;
}

const one = (layer: { apply(x: SymbolicTensor | SymbolicTensor[]): unknown }): Apply => (_l, xs) => layer.apply(xs.length === 1 ? xs[0] : xs) as SymbolicTensor;
const chain = (...make: ((l: TfLayersApi['layers']) => { apply(x: SymbolicTensor): unknown })[]): Apply => (l, [x]) => make.reduce((y, m) => m(l).apply(y) as SymbolicTensor, x);

const cases = (): Case[] => {
  const l = tfl.layers;
  const img = (h: number, w = h, c = 3) => [[h, w, c]];
  const activations = ['linear', 'relu', 'relu6', 'elu', 'selu', 'sigmoid', 'hardSigmoid', 'softplus', 'softsign', 'tanh', 'softmax', 'logSoftmax', 'swish', 'mish', 'gelu', 'gelu_new'];
  return [
    { name: 'Conv2D 3x3 same stride 1 relu, 7x7', inputs: img(7), build: one(l.conv2d({ filters: 4, kernelSize: 3, padding: 'same', activation: 'relu' })) },
    { name: 'Conv2D 3x3 same stride 2, odd 7x7', inputs: img(7), build: one(l.conv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same' })) },
    { name: 'Conv2D 3x3 same stride 2, even 8x8', inputs: img(8), build: one(l.conv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same' })) },
    { name: 'Conv2D 4x4 same stride 2, 9x10', inputs: img(9, 10), build: one(l.conv2d({ filters: 3, kernelSize: 4, strides: 2, padding: 'same' })) },
    { name: 'Conv2D 5x3 valid strides [2, 1], no bias', inputs: img(11, 9), build: one(l.conv2d({ filters: 5, kernelSize: [5, 3], strides: [2, 1], padding: 'valid', useBias: false })) },
    { name: 'Conv2D 3x3 dilation 2 same, 9x9', inputs: img(9), build: one(l.conv2d({ filters: 4, kernelSize: 3, dilationRate: 2, padding: 'same', activation: 'tanh' })) },
    { name: 'Conv2D 3x3 dilation 2 valid, 10x10', inputs: img(10), build: one(l.conv2d({ filters: 4, kernelSize: 3, dilationRate: 2, padding: 'valid' })) },
    { name: 'DepthwiseConv2D 3x3 same stride 2, multiplier 2, 7x7', inputs: img(7), build: one(l.depthwiseConv2d({ kernelSize: 3, strides: 2, depthMultiplier: 2, padding: 'same' })) },
    { name: 'DepthwiseConv2D 3x3 same stride 2, 8x8, relu6', inputs: img(8, 8, 4), build: one(l.depthwiseConv2d({ kernelSize: 3, strides: 2, padding: 'same', activation: 'relu6' })) },
    { name: 'DepthwiseConv2D 3x3 no bias', inputs: img(9), build: one(l.depthwiseConv2d({ kernelSize: 3, padding: 'same', useBias: false })) },
    { name: 'SeparableConv2D 3x3 dilation 2 valid', inputs: img(9), build: one(l.separableConv2d({ filters: 3, kernelSize: 3, dilationRate: 2, padding: 'valid' })) },
    { name: 'SeparableConv2D 3x3 same stride 2, multiplier 2, relu', inputs: img(9), build: one(l.separableConv2d({ filters: 5, kernelSize: 3, strides: 2, depthMultiplier: 2, padding: 'same', activation: 'relu' })) },
    { name: 'BatchNormalization (rank 4)', inputs: img(5, 6, 4), build: one(l.batchNormalization({ epsilon: 1e-3 })) },
    { name: 'BatchNormalization center/scale false', inputs: img(5, 5, 4), build: one(l.batchNormalization({ center: false, scale: false, epsilon: 0.01 })) },
    { name: 'BatchNormalization (rank 2)', inputs: [[6]], build: one(l.batchNormalization({})) },
    { name: 'BatchNormalization (rank 3)', inputs: [[4, 6]], build: one(l.batchNormalization({ axis: 2 })) },
    ...activations.map((activation): Case => ({ name: `Activation ${activation}`, inputs: img(3, 4, 5), build: one(l.activation({ activation: activation as 'relu' })) })),
    { name: 'Activation softmax (rank 2)', inputs: [[7]], build: one(l.activation({ activation: 'softmax' })) },
    { name: 'ReLU', inputs: img(4), build: one(l.reLU({})) },
    { name: 'ReLU maxValue 0.5', inputs: img(4), build: one(l.reLU({ maxValue: 0.5 })) },
    { name: 'LeakyReLU alpha 0.2', inputs: img(4), build: one(l.leakyReLU({ alpha: 0.2 })) },
    { name: 'LeakyReLU default', inputs: [[5]], build: one(l.leakyReLU({})) },
    { name: 'ELU', inputs: img(4), build: one(l.elu({})) },
    { name: 'ThresholdedReLU theta 0.3', inputs: img(4), build: one(l.thresholdedReLU({ theta: 0.3 })) },
    { name: 'Softmax layer', inputs: img(3, 3, 6), build: one(l.softmax({ axis: -1 })) },
    { name: 'PReLU shared over H, W', inputs: img(4, 5, 3), build: one(l.prelu({ sharedAxes: [1, 2] })) },
    { name: 'PReLU per element (rank 2)', inputs: [[6]], build: one(l.prelu({})) },
    { name: 'ZeroPadding2D [[1, 2], [0, 3]]', inputs: img(5), build: one(l.zeroPadding2d({ padding: [[1, 2], [0, 3]] })) },
    { name: 'Cropping2D [[1, 0], [2, 1]]', inputs: img(6, 7), build: one(l.cropping2D({ cropping: [[1, 0], [2, 1]] })) },
    { name: 'UpSampling2D nearest [2, 3]', inputs: img(3, 4), build: one(l.upSampling2d({ size: [2, 3] })) },
    { name: 'UpSampling2D bilinear', inputs: img(3, 4), build: one(l.upSampling2d({ size: [2, 2], interpolation: 'bilinear' })) },
    { name: 'MaxPooling2D 3x3 stride 2 same, 7x7', inputs: img(7), build: one(l.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same' })) },
    { name: 'MaxPooling2D 3x3 stride 2 same, 8x8', inputs: img(8), build: one(l.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same' })) },
    { name: 'MaxPooling2D 2x2 valid (default strides), 7x7', inputs: img(7), build: one(l.maxPooling2d({ poolSize: 2 })) },
    { name: 'AveragePooling2D 3x3 stride 2 same excludes padding, 7x7', inputs: img(7), build: one(l.averagePooling2d({ poolSize: 3, strides: 2, padding: 'same' })) },
    { name: 'AveragePooling2D 3x3 stride 1 same, 6x6', inputs: img(6), build: one(l.averagePooling2d({ poolSize: 3, strides: 1, padding: 'same' })) },
    { name: 'AveragePooling2D 2x3 valid stride [2, 1]', inputs: img(7, 8), build: one(l.averagePooling2d({ poolSize: [2, 3], strides: [2, 1], padding: 'valid' })) },
    { name: 'GlobalAveragePooling2D', inputs: img(5, 6, 4), build: one(l.globalAveragePooling2d({})) },
    { name: 'GlobalMaxPooling2D', inputs: img(5, 6, 4), build: one(l.globalMaxPooling2d({})) },
    { name: 'GlobalAveragePooling1D', inputs: [[5, 4]], build: one(l.globalAveragePooling1d({})) },
    { name: 'GlobalMaxPooling1D', inputs: [[5, 4]], build: one(l.globalMaxPooling1d({})) },
    { name: 'Dense (rank 2) softmax', inputs: [[6]], build: one(l.dense({ units: 4, activation: 'softmax' })) },
    { name: 'Dense (rank 2) no bias', inputs: [[6]], build: one(l.dense({ units: 3, useBias: false })) },
    { name: 'Dense on an image (last axis) relu', inputs: img(3, 4, 5), build: one(l.dense({ units: 2, activation: 'relu' })) },
    { name: 'Dense on rank 3', inputs: [[4, 5]], build: one(l.dense({ units: 3 })) },
    { name: 'Flatten of an image, then Dense', inputs: img(3, 4, 5), build: chain((m) => m.flatten({}), (m) => m.dense({ units: 3 })) },
    { name: 'Flatten of rank 3', inputs: [[3, 4]], build: one(l.flatten({})) },
    { name: 'Reshape image → [-1]', inputs: img(3, 4, 2), build: one(l.reshape({ targetShape: [-1] })) },
    { name: 'Reshape image → image [6, 2, 2]', inputs: img(3, 4, 2), build: one(l.reshape({ targetShape: [6, 2, 2] })) },
    { name: 'Reshape [12] → [1, 1, 12]', inputs: [[12]], build: one(l.reshape({ targetShape: [1, 1, 12] })) },
    { name: 'Permute [2, 1, 3]', inputs: img(3, 4, 2), build: one(l.permute({ dims: [2, 1, 3] })) },
    { name: 'Rescaling 1/127.5 - 1', inputs: img(4), build: one(l.rescaling({ scale: 1 / 127.5, offset: -1 })) },
    { name: 'LayerNormalization (image, last axis)', inputs: img(3, 4, 5), build: one(l.layerNormalization({ epsilon: 1e-3 })) },
    { name: 'LayerNormalization (rank 2)', inputs: [[6]], build: one(l.layerNormalization({})) },
    { name: 'Dropout, GaussianNoise, GaussianDropout, AlphaDropout (identity)', inputs: img(3), build: chain((m) => m.dropout({ rate: 0.5 }), (m) => m.gaussianNoise({ stddev: 1 }), (m) => m.gaussianDropout({ rate: 0.3 }), (m) => m.alphaDropout({ rate: 0.3 })) },
    { name: 'SpatialDropout1D (identity)', inputs: [[4, 3]], build: one(l.spatialDropout1d({ rate: 0.5 })) },
    { name: 'Add of three images', inputs: [[4, 5, 3], [4, 5, 3], [4, 5, 3]], build: one(l.add({})) },
    { name: 'Multiply with broadcast [1, 1, C] (squeeze-excite)', inputs: [[4, 5, 3], [1, 1, 3]], build: one(l.multiply({})) },
    { name: 'Average', inputs: [[4, 4, 2], [4, 4, 2], [4, 4, 2]], build: one(l.average({})) },
    { name: 'Maximum', inputs: [[3, 3, 2], [3, 3, 2]], build: one(l.maximum({})) },
    { name: 'Minimum (rank 2)', inputs: [[5], [5]], build: one(l.minimum({})) },
    { name: 'Concatenate channels', inputs: [[4, 5, 3], [4, 5, 2]], build: one(l.concatenate({ axis: -1 })) },
    { name: 'Concatenate height (axis 1)', inputs: [[2, 5, 3], [4, 5, 3]], build: one(l.concatenate({ axis: 1 })) },
    { name: 'Concatenate width (axis 2)', inputs: [[4, 1, 3], [4, 5, 3]], build: one(l.concatenate({ axis: 2 })) },
    { name: 'Concatenate rank 2', inputs: [[3], [4]], build: one(l.concatenate({})) },
  ];
};

describe('convertLayersModel: one layer at a time', () => {
  it('covers each case within 1e-5 relative to TF.js', async () => {
    const failures: string[] = [];
    for (const [index, c] of cases().entries()) {
      const inputs = c.inputs.map((shape, i) => tfl.input({ shape, name: `in${i}` }));
      const output = c.build(tfl.layers, inputs);
      const model = tfl.model({ inputs, outputs: output, name: `case${index}` });
      await randomizeWeights(model, 100 + index);
      try {
        const [parity] = await checkModel(model, {}, { batch: 2, seed: index });
        if (!(parity.relative <= 1e-5)) failures.push(`${c.name}: max diff ${parity.maxDiff} vs max |ref| ${parity.maxRef}`);
      } catch (error) {
        failures.push(`${c.name}: ${(error as Error).message.split('\n')[0]}`);
      }
      model.dispose();
    }
    expect(failures).toEqual([]);
  });
});
