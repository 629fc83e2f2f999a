import { beforeAll, describe, expect, it } from 'vitest';
import { configureBackend, useLayers } from '../../../src/ml/backend.js';
import { convertLayersModel } from '../../../src/ml/onnx/convert.js';
import { createOnnxRunner } from '../../../src/ml/onnx/runner.js';
import { buildResNetStyle } from '../../fixtures/architectures.js';
import { compare, inputsFor, predictTf } from './parity.js';

beforeAll(() => configureBackend('wasm'));

describe('createOnnxRunner', () => {
  it('runs a converted graph on NHWC batches of any size, like TF.js', async () => {
    const model = await buildResNetStyle({ seed: 2 });
    const converted = convertLayersModel(model, { to: ['conv3_block1_out'] });
    const runner = await createOnnxRunner(converted, { threads: 1 });
    expect(runner.threads).toBe(1);
    expect(runner.inputShape).toEqual([null, 21, 21, 3]);
    expect(runner.outputShapes).toEqual([[null, 3, 3, 12]]);
    const tfl = await useLayers();
    const bottom = tfl.model({ inputs: model.inputs, outputs: model.getLayer('conv3_block1_out').output as never });
    for (const batch of [1, 3]) {
      const [input] = inputsFor(model, batch, batch);
      const [expected] = await predictTf(bottom, [input]);
      const [out] = await runner.run(input.data, input.dims);
      expect(out.length).toBe(batch * 3 * 3 * 12);
      expect(compare(out, expected.data).relative).toBeLessThanOrEqual(1e-5);
    }
    await runner.dispose();
    await runner.dispose();
    await expect(runner.run(new Float32Array(21 * 21 * 3), [1, 21, 21, 3])).rejects.toThrow(/disposed/);
  });

  it('takes ONNX bytes and reads the shapes from the model', async () => {
    const model = await buildResNetStyle({ seed: 2 });
    const runner = await createOnnxRunner(convertLayersModel(model).graph.toBytes(), { threads: 2 });
    expect(runner.inputShape).toEqual([null, 21, 21, 3]);
    expect(runner.outputShapes).toEqual([[null, 3]]);
    const [input] = inputsFor(model, 2, 1);
    const [out] = await runner.run(input.data, input.dims);
    const [expected] = await predictTf(model, [input]);
    expect(compare(out, expected.data).relative).toBeLessThanOrEqual(1e-5);
    await runner.dispose();
  });

  it('refuses a graph with weights as inputs (the runner feeds one input)', async () => {
    const model = await buildResNetStyle({ seed: 2 });
    await expect(createOnnxRunner(convertLayersModel(model, { weights: 'inputs' }), { threads: 1 })).rejects.toThrow(/inputs/);
  });
});
