import { readFileSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { configureBackend, useLayers, useTf, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import { loadModel, saveModel } from '../../../src/ml/io.js';
import { decodeSparseWeights, encodeSparseWeights, isMarkedSparse, markSparse, SPARSE_ENCODING } from '../../../src/ml/prune/sparse-format.js';
import { StageError } from '../../../src/runtime/errors.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

let tf: Tf;
let tfl: TfLayersApi;
let dir: TestDir;

beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  tfl = await useLayers();
  dir = testdir();
});
afterAll(() => dir.cleanup());

function bytesOf(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
}

/** A conv + dense model whose kernels are ~90% zeros. */
function prunedNet(): LayersModel {
  const input = tfl.input({ shape: [6, 6, 3], name: 'image' });
  let x = tfl.layers.conv2d({ filters: 16, kernelSize: 3, padding: 'same', name: 'conv', kernelInitializer: tfl.initializers.glorotUniform({ seed: 3 }) }).apply(input) as SymbolicTensor;
  x = tfl.layers.batchNormalization({ name: 'bn' }).apply(x) as SymbolicTensor;
  x = tfl.layers.flatten({ name: 'flat' }).apply(x) as SymbolicTensor;
  const model = tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 3, activation: 'softmax', name: 'head', kernelInitializer: tfl.initializers.glorotUniform({ seed: 4 }) }).apply(x) as SymbolicTensor });
  for (const name of ['conv', 'head']) {
    const kernel = (model.getLayer(name) as unknown as { kernel: { read(): TfCore.Tensor; write(t: TfCore.Tensor): void } }).kernel;
    const values = kernel.read().dataSync() as Float32Array;
    const masked = values.map((v, i) => (i % 10 === 0 ? v : 0));
    kernel.write(tf.tensor(masked, kernel.read().shape));
  }
  return model;
}

function predict(model: LayersModel): Float32Array {
  return tf.tidy(() => (model.predict(tf.reshape(tf.linspace(-1, 1, 2 * 6 * 6 * 3), [2, 6, 6, 3])) as TfCore.Tensor).dataSync() as Float32Array);
}

describe('sparse weights encoding', () => {
  it('round-trips bit for bit (but -0 as +0): zeros, NaN, dense weights and int32 weights', () => {
    const a = new Float32Array(1000);
    a[3] = 1.5;
    a[999] = -0;
    a[500] = NaN;
    a[7] = -2e-30;
    const b = Float32Array.from({ length: 40 }, (_, i) => i + 0.5); // dense: stays raw
    const c = Int32Array.from([0, 0, 5, 0]);
    const specs = [
      { name: 'a', shape: [10, 100], dtype: 'float32' },
      { name: 'b', shape: [40], dtype: 'float32' },
      { name: 'c', shape: [4], dtype: 'int32' },
    ];
    const dense = new Uint8Array([...bytesOf(a), ...bytesOf(b), ...new Uint8Array(c.buffer)]);
    const encoded = encodeSparseWeights(dense, specs);
    expect(encoded.byteLength).toBe(12 + (1 + 4 + 125 + 3 * 4) + (1 + 160) + (1 + 16));
    const decoded = decodeSparseWeights(encoded, specs);
    a[999] = 0; // -0 comes back as +0
    expect(Buffer.from(decoded).equals(Buffer.from(new Uint8Array([...bytesOf(a), ...bytesOf(b), ...new Uint8Array(c.buffer)])))).toBe(true);
  });

  it('rejects a truncated, foreign or mismatched file with a StageError', () => {
    const specs = [{ name: 'w', shape: [64], dtype: 'float32' }];
    const encoded = encodeSparseWeights(bytesOf(new Float32Array(64).fill(0).map((_, i) => (i === 5 ? 1 : 0))), specs);
    for (const bad of [encoded.subarray(0, encoded.byteLength - 2), new Uint8Array(encoded.byteLength), new Uint8Array([...encoded, 0])]) {
      expect(() => decodeSparseWeights(bad, specs)).toThrow(StageError);
    }
    expect(() => decodeSparseWeights(encoded, [...specs, { name: 'x', shape: [1], dtype: 'float32' }])).toThrow(/holds 1 weights but the manifest lists 2/);
  });

  it('saveModel writes a marked model sparsely; loadModel reads it back identically and keeps the mark', async () => {
    const model = prunedNet();
    const expected = predict(model);
    const dense = await saveModel(model, dir.path('dense'));
    markSparse(model);
    const sparse = await saveModel(model, dir.path('sparse'));
    expect(sparse.weightBytes).toBe(statSync(sparse.weightsPath).size);
    expect(sparse.weightBytes).toBeLessThan(dense.weightBytes * 0.3);
    const json = JSON.parse(readFileSync(dir.path('sparse', 'model.json'), 'utf8'));
    expect(json.weightsManifest[0].encoding).toBe(SPARSE_ENCODING);
    expect(JSON.parse(readFileSync(dir.path('dense', 'model.json'), 'utf8')).weightsManifest[0].encoding).toBeUndefined();

    const loaded = await loadModel(dir.path('sparse'));
    expect(isMarkedSparse(loaded)).toBe(true);
    const got = predict(loaded);
    got.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThan(1e-5));
    loaded.getWeights().forEach((w, i) => expect(Buffer.from(w.dataSync() as Float32Array).equals(Buffer.from(model.getWeights()[i].dataSync() as Float32Array))).toBe(true));
    // Re-saving what was loaded (evaluate, export) stays compact.
    const again = await saveModel(loaded, dir.path('again'));
    expect(again.weightBytes).toBe(sparse.weightBytes);
    model.dispose();
    loaded.dispose();
  });

  it('refuses an unknown encoding', async () => {
    const model = prunedNet();
    await saveModel(model, dir.path('unknown'));
    const json = JSON.parse(readFileSync(dir.path('unknown', 'model.json'), 'utf8'));
    json.weightsManifest[0].encoding = 'zip-v9';
    dir.write('unknown/model.json', JSON.stringify(json));
    await expect(loadModel(dir.path('unknown'))).rejects.toThrow(/encoding "zip-v9"/);
    model.dispose();
  });
});
