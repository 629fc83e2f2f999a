/**
 * Whole models in the shape of real architectures (test/fixtures/architectures.ts), a cut inside
 * one, weights fed as graph inputs, and the refusal of an unsupported layer.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { StageError } from '../../../src/runtime/errors.js';
import { configureBackend, useLayers, type TfLayersApi } from '../../../src/ml/backend.js';
import { convertLayersModel, findUnsupportedLayer, UnsupportedLayerError } from '../../../src/ml/onnx/convert.js';
import { buildBottom, buildTop, findFrontier } from '../../../src/ml/frontier.js';
import { ARCHITECTURES, buildMobileNetV2Style, buildVggStyle, randomizeWeights } from '../../fixtures/architectures.js';
import { checkModel, compare, inputsFor, predictTf, runOnnx, type Value } from './parity.js';

let tfl: TfLayersApi;
beforeAll(async () => {
  configureBackend('wasm');
  tfl = await useLayers();
});

describe('convertLayersModel: whole models', () => {
  for (const [name, build] of Object.entries(ARCHITECTURES)) {
    it(`${name}-style model equals TF.js within 1e-5`, async () => {
      const model = await build({ seed: 3 });
      const [parity] = await checkModel(model, {}, { batch: 3 });
      expect(parity.relative, JSON.stringify(parity)).toBeLessThanOrEqual(1e-5);
      model.dispose();
    });
  }

  it("weights: 'inputs' on every architecture gives TF.js's outputs when fed the variables", async () => {
    const extra = async () => {
      const input = tfl.input({ shape: [7, 7, 3], name: 'x' });
      let y = tfl.layers.separableConv2d({ filters: 4, kernelSize: 3, depthMultiplier: 2, padding: 'same', activation: 'relu', name: 'sep' }).apply(input) as never;
      y = tfl.layers.prelu({ sharedAxes: [1, 2], name: 'prelu' }).apply(y) as never;
      y = tfl.layers.layerNormalization({ name: 'ln' }).apply(y) as never;
      y = tfl.layers.dense({ units: 3, name: 'pixelwise' }).apply(y) as never;
      y = tfl.layers.flatten({ name: 'flat' }).apply(y) as never;
      y = tfl.layers.batchNormalization({ name: 'bn_flat' }).apply(y) as never;
      const model = tfl.model({ inputs: input, outputs: y });
      await randomizeWeights(model, 8);
      return model;
    };
    for (const build of [...Object.values(ARCHITECTURES).map((b) => () => b({ seed: 4 })), extra]) {
      const model = await build();
      const converted = convertLayersModel(model, { weights: 'inputs' });
      expect(converted.weightInputs.map((w) => w.variable)).toEqual(model.weights);
      const inputs = inputsFor(model, 2, 3);
      const feeds: Record<string, Value> = { [converted.inputs[0].name]: inputs[0] };
      for (const w of converted.weightInputs) feeds[w.name] = { data: Float32Array.from(w.variable.read().dataSync()), dims: w.shape };
      const [expected] = await predictTf(model, inputs);
      const [out] = await runOnnx(converted.graph.toBytes(), feeds);
      expect(compare(out.data, expected.data).relative, model.name).toBeLessThanOrEqual(1e-5);
    }
  });

  it('converts both halves of a frozen/trainable split (the top reuses the layers at a second node)', async () => {
    const model = await buildVggStyle({ seed: 6 });
    for (const layer of model.layers) layer.trainable = ['fc1', 'predictions'].includes(layer.name);
    const frontier = findFrontier(model)!;
    const bottomModel = await buildBottom(model, frontier);
    const topModel = await buildTop(model, frontier);
    const [bottom] = await checkModel(bottomModel);
    expect(bottom.relative).toBeLessThanOrEqual(1e-5);
    expect(model.getLayer('fc1').inboundNodes).toHaveLength(2);
    const converted = convertLayersModel(topModel);
    expect(converted.inputs[0]).toMatchObject({ layer: `${frontier.tensors[0].layer}_cached`, shape: topModel.inputs[0].shape });
    expect(converted.tensors.has('fc1')).toBe(true);
    const [top] = await checkModel(topModel);
    expect(top.relative).toBeLessThanOrEqual(1e-5);
  });

  it('an input of unknown height and width ("same" padding left to onnxruntime as SAME_UPPER)', async () => {
    const input = tfl.input({ shape: [null, null, 3], name: 'any_size' });
    let y = tfl.layers.conv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu' }).apply(input) as never;
    y = tfl.layers.averagePooling2d({ poolSize: 3, strides: 2, padding: 'same' }).apply(y) as never;
    y = tfl.layers.maxPooling2d({ poolSize: 2, strides: 2, padding: 'same' }).apply(y) as never;
    y = tfl.layers.globalAveragePooling2d({}).apply(y) as never;
    const model = tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 2 }).apply(y) as never });
    await randomizeWeights(model, 2);
    const converted = convertLayersModel(model);
    expect(converted.inputs[0].shape).toEqual([null, null, null, 3]);
    for (const [h, w] of [[9, 11], [8, 8]]) {
      const input0: Value = { data: Float32Array.from({ length: 2 * h * w * 3 }, (_, i) => Math.cos(i * 0.37)), dims: [2, h, w, 3] };
      const [expected] = await predictTf(model, [input0]);
      const [out] = await runOnnx(converted.graph.toBytes(), { any_size: input0 });
      expect(compare(out.data, expected.data).relative).toBeLessThanOrEqual(1e-5);
    }
  });

  it('a Sequential model converts too', async () => {
    const model = tfl.sequential({
      layers: [tfl.layers.conv2d({ inputShape: [6, 6, 2], filters: 3, kernelSize: 3, padding: 'same', activation: 'relu' }), tfl.layers.flatten(), tfl.layers.dense({ units: 2 })],
    });
    await randomizeWeights(model, 5);
    const [parity] = await checkModel(model);
    expect(parity.relative).toBeLessThanOrEqual(1e-5);
  });
});

/** TF.js values of layers `names` of `model` on `inputs` (a model with those extra outputs). */
async function layerValues(model: LayersModel, names: string[], inputs: Value[]): Promise<Value[]> {
  const probe = tfl.model({ inputs: model.inputs, outputs: names.map((n) => model.getLayer(n).output as never) });
  return predictTf(probe, inputs);
}

describe('convertLayersModel: a cut', () => {
  let model: LayersModel;
  beforeAll(async () => {
    model = await buildMobileNetV2Style({ seed: 9 });
  });

  it('from an inner layer to another equals TF.js on that span, with NHWC ports', async () => {
    const converted = convertLayersModel(model, { from: ['block_1_add'], to: ['out_relu'] });
    expect(converted.inputs).toEqual([{ name: 'block_1_add', layer: 'block_1_add', shape: [null, 9, 9, 8] }]);
    expect(converted.outputs).toEqual([{ name: 'out_relu', layer: 'out_relu', shape: [null, 4, 4, 24] }]);
    expect([...converted.tensors.keys()]).toContain('block_2_depthwise');
    expect(converted.tensors.has('Conv1')).toBe(false);
    const [from, to] = await layerValues(model, ['block_1_add', 'out_relu'], inputsFor(model, 2, 4));
    const [out] = await runOnnx(converted.graph.toBytes(), { block_1_add: from });
    expect(out.dims).toEqual([2, 4, 4, 24]);
    expect(compare(out.data, to.data).relative).toBeLessThanOrEqual(1e-5);
  });

  it('records each layer\'s tensors; fused activations keep their pre-activation', async () => {
    const converted = convertLayersModel(model, { to: ['out_relu'] });
    expect(converted.tensors.get('block_2_depthwise')).toMatchObject({ output: { shape: [null, 4, 4, 24], layout: 'nchw' }, inputs: [{ shape: [null, 10, 10, 24], layout: 'nchw' }] });
    expect(converted.tensors.get('block_2_depthwise')?.preActivation).toBeUndefined();
    expect(converted.tensors.get('input')).toMatchObject({ output: { layout: 'nchw' }, inputs: [] });
    const withActivation = convertLayersModel(model);
    const head = withActivation.tensors.get('predictions')!;
    expect(head.preActivation).toMatchObject({ shape: [null, 3], layout: 'flat' });
    expect(head.preActivation!.name).not.toBe(head.output.name);
  });

  it("weights: 'inputs' gives the same outputs when fed the variables in TF.js layout", async () => {
    const converted = convertLayersModel(model, { from: ['block_1_add'], to: ['out_relu'], weights: 'inputs' });
    const spanLayers = new Set([...converted.tensors.keys()].filter((n) => n !== 'block_1_add'));
    const expected = model.weights.filter((w) => converted.weightInputs.some((i) => i.variable === w));
    expect(converted.weightInputs.map((w) => w.variable)).toEqual(expected);
    expect(converted.weightInputs.every((w) => spanLayers.has(w.layer))).toBe(true);
    const kernel = converted.weightInputs.find((w) => w.name.startsWith('block_2_expand') || w.layer === 'block_2_expand')!;
    expect(kernel.shape).toEqual([1, 1, 8, 24]);
    expect(converted.weightInputs.find((w) => w.layer === 'block_2_depthwise_bn' && /moving_mean/.test(w.name))?.trainable).toBe(false);
    const [from, to] = await layerValues(model, ['block_1_add', 'out_relu'], inputsFor(model, 2, 6));
    const feeds: Record<string, Value> = { block_1_add: from };
    for (const w of converted.weightInputs) feeds[w.name] = { data: Float32Array.from(w.variable.read().dataSync()), dims: w.shape };
    const [out] = await runOnnx(converted.graph.toBytes(), feeds);
    expect(compare(out.data, to.data).relative).toBeLessThanOrEqual(1e-5);
  });

  it('refuses a cut that needs an input it was not given, and an unknown layer', () => {
    // block_1_add reads Conv1's output too (the residual), so starting at the expand conv misses it.
    expect(() => convertLayersModel(model, { from: ['block_1_expand_relu'], to: ['block_1_add'] })).toThrow(StageError);
    expect(() => convertLayersModel(model, { to: ['no_such_layer'] })).toThrow(/no_such_layer/);
  });
});

describe('unsupported layers', () => {
  it('UnsupportedLayerError names the first layer that cannot be converted; findUnsupportedLayer returns it', async () => {
    const input = tfl.input({ shape: [6, 4], name: 'seq' });
    const conv = tfl.layers.conv1d({ filters: 3, kernelSize: 2, name: 'temporal' }).apply(input);
    const flat = tfl.layers.flatten({ name: 'flat' }).apply(conv);
    const repeated = tfl.layers.repeatVector({ n: 2, name: 'repeat' }).apply(flat);
    const model = tfl.model({ inputs: input, outputs: repeated as never });
    expect(findUnsupportedLayer(model)).toEqual({ layer: 'temporal', className: 'Conv1D', reason: 'no ONNX converter for Conv1D' });
    const error = (() => {
      try {
        convertLayersModel(model);
      } catch (e) {
        return e;
      }
    })() as UnsupportedLayerError;
    expect(error).toBeInstanceOf(UnsupportedLayerError);
    expect(error).toMatchObject({ layer: 'temporal', className: 'Conv1D', code: 'onnx_unsupported_layer' });
    expect(error.message).toMatch(/temporal/);
    // Cut above the first one: the second is named.
    expect(findUnsupportedLayer(model, { from: ['temporal'] })).toMatchObject({ layer: 'repeat', className: 'RepeatVector' });
  });

  it('a supported class used in an unsupported way, and a layer shared by two nodes', async () => {
    const input = tfl.input({ shape: [5, 5, 2], name: 'x' });
    const dilated = tfl.layers.depthwiseConv2d({ kernelSize: 3, dilationRate: 2, padding: 'same', name: 'dilated_dw' }).apply(input);
    expect(findUnsupportedLayer(tfl.model({ inputs: input, outputs: dilated as never }))).toMatchObject({ layer: 'dilated_dw', reason: expect.stringMatching(/dilationRate/) });
    const shared = tfl.layers.conv2d({ filters: 2, kernelSize: 1, name: 'shared' });
    const twice = shared.apply(shared.apply(input));
    expect(findUnsupportedLayer(tfl.model({ inputs: input, outputs: twice as never }))).toMatchObject({ layer: 'shared', reason: expect.stringMatching(/2 nodes/) });
  });

  it('all models of the fixtures are supported', async () => {
    for (const build of Object.values(ARCHITECTURES)) expect(findUnsupportedLayer(await build())).toBeNull();
  });
});
