/**
 * What pruning is judged by: multiply-accumulates counted from layer shapes, parameters, and
 * inference latency measured on the backend in use.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { createRandom } from '../../data/random.js';
import type { Tf } from '../backend.js';
import { allLayers, summarizeModel } from '../surgery.js';

type Layer = LayersModel['layers'][number];

/** Multiply-accumulates of one forward pass of one example. */
export interface MacCount {
  /** Every kernel scalar counted (what a dense engine like TF.js computes). */
  dense: number;
  /** Only nonzero kernel scalars counted (what a sparse engine would need). */
  nonzero: number;
}

function product(values: readonly (number | null)[]): number {
  return values.reduce<number>((a, b) => a * (b ?? 1), 1);
}

function firstShape(shape: Layer['outputShape']): (number | null)[] {
  return (Array.isArray(shape[0]) ? shape[0] : shape) as (number | null)[];
}

async function kernelCounts(variable: { shape: number[]; read(): TfCore.Tensor } | undefined): Promise<{ size: number; nonzero: number }> {
  if (!variable) return { size: 0, nonzero: 0 };
  const values = (await variable.read().data()) as Float32Array;
  let nonzero = 0;
  for (let i = 0; i < values.length; i++) if (values[i] !== 0) nonzero++;
  return { size: values.length, nonzero };
}

/**
 * MACs per example of conv, depthwise, separable, transposed-conv and dense layers: kernel
 * scalars times the output positions each is applied at (input positions for a transposed conv).
 * Other layers (BN, pooling, activations) are cheap in comparison and not counted.
 */
export async function countMacs(model: LayersModel): Promise<MacCount> {
  let dense = 0;
  let nonzero = 0;
  for (const layer of allLayers(model)) {
    const className = layer.getClassName();
    const kernels: string[] =
      className === 'DepthwiseConv2D' ? ['depthwiseKernel'] : className === 'SeparableConv2D' ? ['depthwiseKernel', 'pointwiseKernel'] : ['Conv1D', 'Conv2D', 'Conv3D', 'Conv2DTranspose', 'Dense'].includes(className) ? ['kernel'] : [];
    if (!kernels.length) continue;
    const shape = className === 'Conv2DTranspose' ? (layer.inboundNodes[0]?.inputTensors[0]?.shape ?? []) : firstShape(layer.outputShape);
    // Positions: every axis but the batch and the channels.
    const positions = product(shape.slice(1, -1));
    for (const name of kernels) {
      const counts = await kernelCounts((layer as unknown as Record<string, { shape: number[]; read(): TfCore.Tensor } | undefined>)[name]);
      dense += counts.size * positions;
      nonzero += counts.nonzero * positions;
    }
  }
  return { dense, nonzero };
}

/** Parameters of a model: all, and those that are not exactly zero. */
export async function countParams(tf: Tf, model: LayersModel): Promise<{ params: number; nonzero: number }> {
  let nonzero = 0;
  for (const weight of model.weights) {
    const count = tf.tidy(() => tf.sum(tf.cast(tf.notEqual(weight.read(), 0), 'int32')));
    nonzero += (await count.data())[0];
    count.dispose();
  }
  return { params: summarizeModel(model).params, nonzero };
}

/** Options of `measureLatency`. */
export interface LatencyOptions {
  /** Examples per call. */
  batch: number;
  /** Timed calls; the median is reported. */
  runs: number;
  /** Untimed calls first (kernel compilation, allocation). Default 1. */
  warmup?: number;
  /** Seed of the random input. Default 1. */
  seed?: number;
}

/**
 * Median wall time in milliseconds of `model.predict` on a seeded random batch, including the
 * read back of the result (so asynchronous backends are timed to completion).
 */
export async function measureLatency(tf: Tf, model: LayersModel, options: LatencyOptions): Promise<number> {
  const shape = model.inputs[0].shape.slice(1).map((d) => d ?? 1) as number[];
  const size = options.batch * product(shape);
  const random = createRandom(options.seed ?? 1);
  const values = Float32Array.from({ length: size }, () => random.next() * 2 - 1);
  const input = tf.tensor(values, [options.batch, ...shape]);
  const once = async () => {
    const t0 = performance.now();
    const out = model.predict(input) as TfCore.Tensor;
    await out.data();
    out.dispose();
    return performance.now() - t0;
  };
  try {
    for (let i = 0; i < (options.warmup ?? 1); i++) await once();
    const times: number[] = [];
    for (let i = 0; i < Math.max(1, options.runs); i++) times.push(await once());
    times.sort((a, b) => a - b);
    const mid = times.length >> 1;
    return times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
  } finally {
    input.dispose();
  }
}
