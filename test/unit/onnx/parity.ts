/**
 * Test helpers: run an ONNX model in onnxruntime (one thread) and compare a converted model with
 * TF.js on the same seeded inputs. The tolerance is relative to the reference's largest value.
 */
import * as ort from 'onnxruntime-node';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { useTf } from '../../../src/ml/backend.js';
import { convertLayersModel, type ConvertedGraph, type ConvertOptions } from '../../../src/ml/onnx/convert.js';
import { randomImages } from '../../fixtures/architectures.js';

/** One input or output: data and dims. */
export interface Value {
  data: Float32Array;
  dims: number[];
}

/** Runs `bytes` on `feeds`; returns the outputs in the model's output order. */
export async function runOnnx(bytes: Uint8Array, feeds: Record<string, Value>): Promise<Value[]> {
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  try {
    const result = await session.run(Object.fromEntries(Object.entries(feeds).map(([name, v]) => [name, new ort.Tensor('float32', v.data, v.dims)])));
    return session.outputNames.map((name) => ({ data: result[name].data as Float32Array, dims: result[name].dims.map(Number) }));
  } finally {
    await session.release();
  }
}

/** How far an output is from its reference. */
export interface Parity {
  maxDiff: number;
  maxRef: number;
  /** maxDiff / maxRef. */
  relative: number;
}

export function compare(actual: ArrayLike<number>, expected: ArrayLike<number>): Parity {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != ${expected.length}`);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    const diff = Math.abs(actual[i] - expected[i]);
    if (!(diff <= maxDiff)) maxDiff = Number.isNaN(diff) ? Infinity : diff;
    maxRef = Math.max(maxRef, Math.abs(expected[i]));
  }
  return { maxDiff, maxRef, relative: maxRef === 0 ? maxDiff : maxDiff / maxRef };
}

/** Seeded inputs for each model input (values in [-1, 1)). */
export function inputsFor(model: LayersModel, batch: number, seed: number): Value[] {
  return model.inputs.map((input, i) => {
    const shape = input.shape.slice(1) as number[];
    const data = randomImages(batch, shape, seed + i).map((v) => v * 2 - 1);
    return { data, dims: [batch, ...shape] };
  });
}

/** TF.js outputs of `model` on `inputs`. */
export async function predictTf(model: LayersModel, inputs: Value[]): Promise<Value[]> {
  const tf = await useTf();
  const xs = inputs.map((v) => tf.tensor(v.data, v.dims));
  const out = model.predict(xs.length === 1 ? xs[0] : xs) as TfCore.Tensor | TfCore.Tensor[];
  const outs = Array.isArray(out) ? out : [out];
  const values = await Promise.all(outs.map(async (t) => ({ data: Float32Array.from(await t.data()), dims: t.shape })));
  xs.forEach((t) => t.dispose());
  outs.forEach((t) => t.dispose());
  return values;
}

/** Feeds of a converted graph from values in its input order. */
export function feedsOf(converted: ConvertedGraph, inputs: Value[]): Record<string, Value> {
  return Object.fromEntries(converted.inputs.map((port, i) => [port.name, inputs[i]]));
}

/** Converts `model`, runs both on seeded inputs; returns the parity of each output (and checks dims). */
export async function checkModel(model: LayersModel, options: ConvertOptions = {}, { batch = 2, seed = 11 } = {}): Promise<Parity[]> {
  const converted = convertLayersModel(model, options);
  const inputs = inputsFor(model, batch, seed);
  const expected = await predictTf(model, inputs);
  const actual = await runOnnx(converted.graph.toBytes(), feedsOf(converted, inputs));
  return expected.map((ref, i) => {
    if (actual[i].dims.join(',') !== ref.dims.join(',')) throw new Error(`output ${i}: dims [${actual[i].dims}] != TF.js [${ref.dims}]`);
    return compare(actual[i].data, ref.data);
  });
}
