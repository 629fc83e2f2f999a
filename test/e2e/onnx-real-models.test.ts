/**
 * The converter on real pretrained Keras models: MobileNetV2 and InceptionV3 as the npm package
 * nsfwjs ships them (decoded at test time, never committed), cut where a fine-tune recipe cuts
 * them (`out_relu`, `mixed10`), against TF.js wasm on random images. Prints the parity figures.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { decodeNsfwjsModel } from '../../scripts/decode-nsfwjs.js';
import { configureBackend, useLayers } from '../../src/ml/backend.js';
import { loadModel } from '../../src/ml/io.js';
import { convertLayersModel, findUnsupportedLayer } from '../../src/ml/onnx/convert.js';
import { createOnnxRunner } from '../../src/ml/onnx/runner.js';
import { compare, inputsFor, predictTf } from '../unit/onnx/parity.js';

let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'onnx-real-'));
  configureBackend('wasm');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Decodes an nsfwjs model and loads it (weights dequantized to float32). */
async function loadNsfwjs(name: 'MobileNetV2' | 'InceptionV3'): Promise<LayersModel> {
  const out = path.join(dir, name);
  decodeNsfwjsModel({ outDir: out, model: name });
  return loadModel(path.join(out, 'model.json'));
}

async function checkCut(model: LayersModel, cut: string, images: number) {
  expect(findUnsupportedLayer(model)).toBeNull();
  const tfl = await useLayers();
  const bottom = tfl.model({ inputs: model.inputs, outputs: model.getLayer(cut).output as never });
  const converted = convertLayersModel(model, { to: [cut] });
  const runner = await createOnnxRunner(converted, { threads: 2 });
  const [input] = inputsFor(model, images, 21).map((v) => ({ ...v, data: v.data.map((x) => (x + 1) / 2) })); // [0, 1) like nsfwjs' preprocessing
  const [expected] = await predictTf(bottom, [input]);
  const [actual] = await runner.run(input.data, input.dims);
  await runner.dispose();
  const parity = compare(actual, expected.data);
  // The whole classifier too (Flatten + Dense + softmax on top).
  const full = await createOnnxRunner(convertLayersModel(model), { threads: 2 });
  const [probabilities] = await full.run(input.data, input.dims);
  await full.dispose();
  const [reference] = await predictTf(model, [input]);
  const head = compare(probabilities, reference.data);
  console.log(JSON.stringify({ model: model.name, cut, shape: expected.dims, ...parity, classifier: head }));
  return { parity, head };
}

describe('real Keras models from nsfwjs', () => {
  it('MobileNetV2 224 cut at out_relu equals TF.js', { timeout: 60_000 }, async () => {
    const model = await loadNsfwjs('MobileNetV2');
    const { parity, head } = await checkCut(model, 'out_relu', 2);
    expect(parity.relative).toBeLessThanOrEqual(1e-5);
    expect(head.maxDiff).toBeLessThanOrEqual(1e-5);
    model.dispose();
  });

  it('InceptionV3 299 cut at mixed10 equals TF.js', { timeout: 90_000 }, async () => {
    const model = await loadNsfwjs('InceptionV3');
    const { parity, head } = await checkCut(model, 'mixed10', 2);
    expect(parity.relative).toBeLessThanOrEqual(1e-5);
    expect(head.maxDiff).toBeLessThanOrEqual(1e-5);
    model.dispose();
  });
});
