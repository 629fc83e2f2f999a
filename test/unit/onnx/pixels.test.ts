/**
 * A graph converted with `pixels` takes the shards' uint8 records and normalizes (and mirrors)
 * them inside: its outputs equal the float graph fed what the shard reader makes of the same
 * records (`applyAugmentation`), within 1e-5 of the largest value — bit for bit when the
 * normalization has no offset — and the frozen runner's `runPixels` gives the same on both
 * engines.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { applyAugmentation, MIRROR_DRAW } from '../../../src/data/augment.js';
import { createRandom } from '../../../src/data/random.js';
import { normalizationCoefficients, resolveNormalization, type NormalizeName } from '../../../src/data/spec.js';
import type { SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers, useTf } from '../../../src/ml/backend.js';
import { createFrozenRunner } from '../../../src/ml/engine.js';
import { convertLayersModel } from '../../../src/ml/onnx/convert.js';
import { MIRROR_INPUT } from '../../../src/ml/onnx/convert-pixels.js';
import { createOnnxRunner } from '../../../src/ml/onnx/runner.js';
import { buildMobileNetV2Style } from '../../fixtures/architectures.js';
import { compare } from './parity.js';

beforeAll(() => configureBackend('wasm'));

const SIZE = 17;
const CUT = 'out_relu';

function records(count: number, channels: number, seed: number): Uint8Array {
  const random = createRandom(seed);
  return Uint8Array.from({ length: count * SIZE * SIZE * channels }, () => Math.floor(random.next() * 256));
}

/** What the shard reader hands the float path: each record normalized, mirrored or not. */
function readerFloats(pixels: Uint8Array, count: number, channels: number, normalize: NormalizeName, mirror: boolean): Float32Array {
  const size = SIZE * SIZE * channels;
  const out = new Float32Array(count * size);
  for (let row = 0; row < count; row++) applyAugmentation(pixels.subarray(row * size, (row + 1) * size), [SIZE, SIZE, channels], mirror ? MIRROR_DRAW : null, resolveNormalization(normalize, channels as 1 | 3), out, row * size);
  return out;
}

describe('uint8 pixel input', () => {
  for (const [normalize, channels, exact] of [['imagenet', 3, false], ['tf', 3, false], ['unit', 3, true], ['unit', 1, true]] as const) {
    it(`${normalize} normalization, ${channels} channel(s): equals the float graph on the reader's floats${exact ? ', bit for bit' : ' within 1e-5'}`, async () => {
      const model = await buildMobileNetV2Style({ channels, seed: 3 });
      const float = await createOnnxRunner(convertLayersModel(model, { to: [CUT] }), { threads: 1 });
      const converted = convertLayersModel(model, { to: [CUT], pixels: { ...normalizationCoefficients(resolveNormalization(normalize, channels)), mirror: true } });
      expect(converted.inputs[0].dtype).toBe('uint8');
      expect(converted.mirrorInput).toBe(MIRROR_INPUT);
      const pixel = await createOnnxRunner(converted, { threads: 1 });
      expect([pixel.inputType, pixel.mirrors, float.inputType, float.mirrors]).toEqual(['uint8', true, 'float32', false]);
      try {
        for (const [count, mirror] of [[3, false], [3, true], [1, true]] as const) {
          const pixels = records(count, channels, count + (mirror ? 10 : 0));
          const shape = [count, SIZE, SIZE, channels];
          const [expected] = await float.run(readerFloats(pixels, count, channels, normalize, mirror), shape);
          const [actual] = await pixel.run(pixels, shape, { mirror });
          if (exact) expect(Array.from(actual)).toEqual(Array.from(expected));
          else expect(compare(actual, expected).relative).toBeLessThanOrEqual(1e-5);
          // the mirror is really applied: a mirrored batch differs from the plain one
          if (mirror) expect(compare((await pixel.run(pixels, shape))[0], actual).maxDiff).toBeGreaterThan(1e-3);
        }
        await expect(pixel.run(new Float32Array(SIZE * SIZE * channels), [1, SIZE, SIZE, channels])).rejects.toThrow(/uint8/);
        await expect(float.run(new Uint8Array(SIZE * SIZE * channels), [1, SIZE, SIZE, channels], { mirror: true })).rejects.toThrow(/float32/);
      } finally {
        await Promise.all([float.dispose(), pixel.dispose()]);
        model.dispose();
      }
    });
  }

  it('refuses a span that does not start at the image input, and a wrong channel count', async () => {
    const model = await buildMobileNetV2Style({ seed: 3 });
    const pixels = { scale: [1, 1, 1], offset: [0, 0, 0] };
    expect(() => convertLayersModel(model, { from: ['Conv1_relu'], to: [CUT], pixels })).toThrow(/pixel input/);
    expect(() => convertLayersModel(model, { to: [CUT], pixels: { scale: [1], offset: [0] } })).toThrow(/1 coefficients for 3/);
    model.dispose();
  });

  it("the frozen runner's runPixels: onnxruntime in the graph, TF.js in JavaScript, the same values", async () => {
    const tf = await useTf();
    const tfl = await useLayers();
    const model = await buildMobileNetV2Style({ seed: 4 });
    const bottom = tfl.model({ inputs: model.inputs, outputs: model.getLayer(CUT).output as SymbolicTensor });
    const normalize = resolveNormalization('imagenet', 3);
    const span = { from: null, to: [CUT] };
    const onnx = await createFrozenRunner(tf, model, bottom, span, { preference: 'onnxruntime', pixels: normalize, threads: 1 });
    const tfjs = await createFrozenRunner(tf, model, bottom, span, { preference: 'tfjs', pixels: normalize });
    expect([onnx.engine, tfjs.engine]).toEqual(['onnxruntime', 'tfjs']);
    try {
      for (const mirror of [false, true]) {
        const pixels = records(2, 3, 21);
        const batch = { pixels, shape: [2, SIZE, SIZE, 3], mirror };
        const [fromTfjs] = await tfjs.runPixels!(batch);
        // TF.js's runPixels is the reader's normalization, then predict
        const [reference] = await tfjs.run([{ x: readerFloats(pixels, 2, 3, 'imagenet', mirror), shape: batch.shape }]);
        expect(Array.from(fromTfjs)).toEqual(Array.from(reference));
        expect(compare((await onnx.runPixels!(batch))[0], reference).relative).toBeLessThanOrEqual(1e-5);
      }
    } finally {
      await Promise.all([onnx.dispose(), tfjs.dispose()]);
      model.dispose();
    }
  });
});
