/**
 * The wasm training kernels against the cpu backend's (the reference TF.js implementation),
 * through tf.grad where tfjs-core allows it and through runKernel for dilations (tfjs-core's
 * gradient of a dilated depthwise conv refuses to run, but the kernel's contract includes them).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { configureBackend, useLayers, useTf, type Tf } from '../../../src/ml/backend.js';
import { registerWasmTrainingKernels, unregisterWasmTrainingKernels, WASM_SPEED_KERNELS, WASM_TRAINING_KERNELS } from '../../../src/ml/wasm-kernels.js';

let tf: Tf;

beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  await import('@tensorflow/tfjs-backend-cpu'); // the reference
});

/** Deterministic pseudo-random values in [-1, 1). */
function values(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1;
  }
  return out;
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Runs `compute` on a backend with fresh tensors built from the same numbers; returns plain arrays. */
async function on(backend: string, shapes: number[][], compute: (...t: TfTensor[]) => TfTensor[]): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const inputs = shapes.map((shape, i) => tf.tensor(values(size(shape), 7 + i), shape));
    return compute(...inputs).map((t) => t.dataSync() as Float32Array);
  });
}
type TfTensor = ReturnType<Tf['tensor']>;

function expectClose(actual: Float32Array, expected: Float32Array): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (1 + Math.abs(expected[i])));
  expect(worst).toBeLessThan(1e-4);
}

async function compare(shapes: number[][], compute: (...t: TfTensor[]) => TfTensor[]): Promise<void> {
  const expected = await on('cpu', shapes, compute);
  const actual = await on('wasm', shapes, compute);
  expected.forEach((e, i) => expectClose(actual[i], e));
}

describe('wasm training kernels', () => {
  it('are registered by the wasm backend and were missing from tfjs-backend-wasm', async () => {
    await tf.setBackend('wasm');
    for (const name of WASM_TRAINING_KERNELS) expect(tf.getKernel(name, 'wasm')).toBeDefined();
    // Registering again is a no-op rather than a "kernel already registered" warning.
    expect(registerWasmTrainingKernels(tf)).toEqual([]);
  });

  const convCases: { filter: number; stride: number; pad: 'same' | 'valid'; inShape: number[] }[] = [
    { filter: 3, stride: 1, pad: 'same', inShape: [2, 6, 6, 3] },
    { filter: 3, stride: 2, pad: 'same', inShape: [2, 7, 7, 3] },
    { filter: 3, stride: 2, pad: 'valid', inShape: [2, 7, 6, 2] },
    { filter: 2, stride: 1, pad: 'valid', inShape: [1, 5, 5, 4] },
    { filter: 1, stride: 1, pad: 'same', inShape: [2, 4, 4, 5] }, // pointwise fast path
    { filter: 1, stride: 2, pad: 'valid', inShape: [2, 5, 5, 3] },
  ];

  for (const { filter, stride, pad, inShape } of convCases) {
    it(`conv2d gradients match cpu (filter ${filter}, stride ${stride}, ${pad})`, async () => {
      const filterShape = [filter, filter, inShape[3], 4];
      await compare([inShape, filterShape], (x, w) => {
        const grads = tf.grads((a: TfTensor, b: TfTensor) => tf.sum(tf.square(tf.conv2d(a as never, b as never, stride, pad))))([x, w]);
        return grads;
      });
    });
  }

  it('conv2d filter gradient is the same when the im2col buffer is split into chunks', async () => {
    unregisterWasmTrainingKernels(tf, ['Conv2DBackpropFilter']);
    registerWasmTrainingKernels(tf, { maxPatchElements: 3 * 3 * 3 * 5 }); // 5 output rows per chunk
    try {
      await compare([[2, 6, 5, 3], [3, 3, 3, 4]], (x, w) => [tf.grad((b: TfTensor) => tf.sum(tf.conv2d(x as never, b as never, 1, 'same')))(w)]);
    } finally {
      unregisterWasmTrainingKernels(tf, ['Conv2DBackpropFilter']);
      registerWasmTrainingKernels(tf);
    }
  });

  const depthwiseCases: { multiplier: number; stride: number; pad: 'same' | 'valid' }[] = [
    { multiplier: 1, stride: 1, pad: 'same' },
    { multiplier: 1, stride: 2, pad: 'same' },
    { multiplier: 2, stride: 1, pad: 'valid' },
    { multiplier: 2, stride: 2, pad: 'valid' },
  ];
  for (const { multiplier, stride, pad } of depthwiseCases) {
    it(`depthwiseConv2d gradients match cpu (multiplier ${multiplier}, stride ${stride}, ${pad})`, async () => {
      await compare([[2, 7, 6, 3], [3, 3, 3, multiplier]], (x, w) =>
        tf.grads((a: TfTensor, b: TfTensor) => tf.sum(tf.square(tf.depthwiseConv2d(a as never, b as never, stride, pad))))([x, w]),
      );
    });
  }

  it('depthwise backprop kernels handle dilations (checked against an undilated, zero-filled filter)', async () => {
    // The cpu kernels ignore dilations, and tfjs-core's gradient refuses dilated depthwise convs,
    // so the reference is the same conv written with a 5×5 filter whose odd taps are zero.
    const [dilatedFilterGrad, dilatedInputGrad] = await on('wasm', [[1, 6, 6, 2], [1, 6, 6, 4], [3, 3, 2, 2]], (x, dy, w) => [
      tf.engine().runKernel('DepthwiseConv2dNativeBackpropFilter', { x, dy }, { strides: [1, 1], pad: 'same', dilations: [2, 2], filterShape: [3, 3, 2, 2] }) as TfTensor,
      tf.engine().runKernel('DepthwiseConv2dNativeBackpropInput', { dy, filter: w }, { strides: [1, 1], pad: 'same', dilations: [2, 2], inputShape: [1, 6, 6, 2] }) as TfTensor,
    ]);
    const [fullInputGrad, fullFilterGrad] = await on('cpu', [[1, 6, 6, 2], [1, 6, 6, 4], [3, 3, 2, 2]], (x, dy, w) => {
      const spread = tf.tidy(() => {
        const buffer = tf.buffer([5, 5, 2, 2]);
        const taps = w.arraySync() as number[][][][];
        taps.forEach((row, i) => row.forEach((col, j) => col.forEach((ch, c) => ch.forEach((v, m) => buffer.set(v, 2 * i, 2 * j, c, m)))));
        return buffer.toTensor();
      });
      const loss = (a: TfTensor, b: TfTensor) => tf.sum(tf.mul(tf.depthwiseConv2d(a as never, b as never, 1, 'same'), dy));
      return tf.grads(loss)([x, spread]);
    });
    const sampled = new Float32Array(3 * 3 * 2 * 2);
    for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 4; k++) sampled[(i * 3 + j) * 4 + k] = fullFilterGrad[(2 * i * 5 + 2 * j) * 4 + k];
    expectClose(dilatedInputGrad, fullInputGrad);
    expectClose(dilatedFilterGrad, sampled);
  });

  /** A small conv net with every layer kind the stages use; same initial weights for a given seed. */
  async function smallNet(seed: number, dropout: boolean) {
    const tfl = await useLayers();
    const init = () => tfl.initializers.glorotUniform({ seed: seed++ });
    const input = tfl.input({ shape: [8, 8, 3] });
    let x = tfl.layers.conv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same', kernelInitializer: init() }).apply(input) as never;
    x = tfl.layers.batchNormalization().apply(x) as never;
    x = tfl.layers.reLU({ maxValue: 6 }).apply(x) as never;
    let y = tfl.layers.depthwiseConv2d({ kernelSize: 3, padding: 'same', depthMultiplier: 1, depthwiseInitializer: init() }).apply(x) as never;
    y = tfl.layers.conv2d({ filters: 4, kernelSize: 1, activation: 'relu', kernelInitializer: init() }).apply(y) as never;
    const merged = tfl.layers.concatenate().apply([tfl.layers.add().apply([x, y]) as never, x]) as never;
    let z = tfl.layers.maxPooling2d({ poolSize: 2 }).apply(merged) as never;
    z = tfl.layers.globalAveragePooling2d({}).apply(z) as never;
    if (dropout) z = tfl.layers.dropout({ rate: 0.2 }).apply(z) as never;
    const output = tfl.layers.dense({ units: 2, activation: 'softmax', kernelInitializer: init() }).apply(z) as never;
    const model = tfl.model({ inputs: input, outputs: output });
    model.compile({ optimizer: tf.train.sgd(0.1), loss: 'categoricalCrossentropy' });
    return model;
  }

  async function trainOn(backend: string, dropout: boolean): Promise<{ weights: Float32Array[]; tensorCounts: number[]; losses: number[] }> {
    await tf.setBackend(backend);
    const model = await smallNet(11, dropout);
    const xs = tf.tensor(values(4 * 8 * 8 * 3, 3), [4, 8, 8, 3]);
    const ys = tf.oneHot(tf.tensor1d([0, 1, 0, 1], 'int32'), 2);
    const tensorCounts: number[] = [];
    const history = await model.fit(xs, ys, {
      epochs: 3,
      batchSize: 2,
      shuffle: false,
      verbose: 0,
      callbacks: { onEpochEnd: async () => void tensorCounts.push(tf.memory().numTensors) },
    });
    const weights = model.getWeights().map((w) => w.dataSync() as Float32Array);
    tf.dispose([xs, ys]);
    model.dispose();
    return { weights, tensorCounts, losses: history.history.loss as number[] };
  }

  it('let model.fit of a small conv net on wasm reach the same weights as on cpu, without leaking tensors', async () => {
    const cpu = await trainOn('cpu', false);
    const wasm = await trainOn('wasm', false);
    expect(wasm.weights.length).toBe(cpu.weights.length);
    wasm.weights.forEach((w, i) => expectClose(w, cpu.weights[i]));
    expect(wasm.tensorCounts[2]).toBe(wasm.tensorCounts[1]);
  });

  it('let model.fit run with Dropout on wasm', async () => {
    const { losses } = await trainOn('wasm', true);
    expect(losses.every(Number.isFinite)).toBe(true);
  });

  /** Largest |a − b| / (1 + |b|). */
  function worstDifference(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
    expect(actual.length).toBe(expected.length);
    let worst = 0;
    for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (1 + Math.abs(expected[i])));
    return worst;
  }

  /** Runs one kernel on wasm with our replacement, on wasm with the original, and on cpu. */
  async function threeWays(kernel: string, inputs: Record<string, { shape: number[]; dtype?: 'float32' | 'int32' | 'bool' }>, attrs: Record<string, unknown>) {
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      return tf.tidy(() => {
        const tensors = Object.fromEntries(
          Object.entries(inputs).map(([name, { shape, dtype }], i) => {
            const v = values(size(shape), 31 + i);
            return [name, dtype === 'int32' ? tf.tensor(Int32Array.from(v, (x) => Math.round(x * 100)), shape, 'int32') : dtype === 'bool' ? tf.tensor(Uint8Array.from(v, (x) => (x > 0 ? 1 : 0)), shape, 'bool') : tf.tensor(v, shape)];
          }),
        );
        const out = tf.engine().runKernel(kernel, tensors, attrs as never) as TfTensor;
        return { shape: out.shape, dtype: out.dtype, data: Array.from(out.dataSync() as ArrayLike<number>) };
      });
    };
    const ours = await run('wasm');
    unregisterWasmTrainingKernels(tf, WASM_SPEED_KERNELS);
    try {
      const original = await run('wasm');
      const cpu = await run('cpu');
      return { ours, original, cpu };
    } finally {
      registerWasmTrainingKernels(tf);
    }
  }

  it('replaces the speed kernels, and restores the originals when unregistered', async () => {
    await tf.setBackend('wasm');
    const replacing = WASM_SPEED_KERNELS.map((name) => tf.getKernel(name, 'wasm')!.kernelFunc);
    unregisterWasmTrainingKernels(tf, WASM_SPEED_KERNELS);
    const originals = WASM_SPEED_KERNELS.map((name) => tf.getKernel(name, 'wasm')!.kernelFunc);
    originals.forEach((kernel, i) => expect(kernel).not.toBe(replacing[i]));
    expect(registerWasmTrainingKernels(tf)).toEqual([...WASM_SPEED_KERNELS]);
  });

  const pointwiseCases: { dy: number[]; filter: number[]; pad: 'same' | 'valid'; stride: number; inShape: number[] }[] = [
    { dy: [2, 5, 5, 7], filter: [1, 1, 6, 7], pad: 'same', stride: 1, inShape: [2, 5, 5, 6] }, // the fast path
    { dy: [3, 7, 7, 32], filter: [1, 1, 48, 32], pad: 'valid', stride: 1, inShape: [3, 7, 7, 48] }, // the fast path, MobileNetV2-like
    { dy: [2, 3, 3, 4], filter: [1, 1, 5, 4], pad: 'valid', stride: 2, inShape: [2, 5, 5, 5] }, // strided: the original kernel
    { dy: [2, 4, 4, 3], filter: [3, 3, 2, 3], pad: 'same', stride: 1, inShape: [2, 4, 4, 2] }, // 3×3: the original kernel
  ];
  for (const { dy, filter, pad, stride, inShape } of pointwiseCases) {
    it(`Conv2DBackpropInput is bit-identical to the wasm original and within 1e-6 of cpu (filter ${filter.join('×')}, stride ${stride}, ${pad})`, async () => {
      const { ours, original, cpu } = await threeWays('Conv2DBackpropInput', { dy: { shape: dy }, filter: { shape: filter } }, { strides: [stride, stride], pad, dataFormat: 'NHWC', dimRoundingMode: undefined, inputShape: inShape });
      expect(ours.shape).toEqual(inShape);
      // XNNPACK sums in the order of the wasm backend's own loop: bit-identical to it. Both
      // differ from cpu's float32 sums in the last bits.
      expect(ours.data).toEqual(original.data);
      expect(worstDifference(ours.data, cpu.data)).toBeLessThanOrEqual(1e-6);
    });
  }

  const tileCases: { shape: number[]; reps: number[]; dtype?: 'float32' | 'int32' | 'bool' }[] = [
    { shape: [1, 1, 1, 5], reps: [2, 3, 4, 1] }, // FusedBatchNorm's gradient: a [C] vector over the activation
    { shape: [3], reps: [4] },
    { shape: [2, 3], reps: [1, 1] },
    { shape: [2, 3], reps: [3, 1] },
    { shape: [2, 1, 3], reps: [2, 4, 1] },
    { shape: [2, 3, 2], reps: [2, 1, 3] },
    { shape: [2, 3], reps: [2, 2], dtype: 'int32' },
    { shape: [2, 2, 1], reps: [1, 3, 2], dtype: 'bool' },
    { shape: [2, 0], reps: [3, 2] },
  ];
  for (const { shape, reps, dtype } of tileCases) {
    it(`Tile is bit-identical to cpu ([${shape.join(', ')}] × [${reps.join(', ')}]${dtype ? `, ${dtype}` : ''})`, async () => {
      const { ours, original, cpu } = await threeWays('Tile', { x: { shape, dtype } }, { reps });
      expect(ours).toEqual(cpu);
      expect(original).toEqual(cpu);
    });
  }

  it('Identity shares the data: a clone outlives its source and frees it last', async () => {
    await tf.setBackend('wasm');
    const before = tf.memory().numTensors;
    const bytesBefore = tf.memory().numBytes;
    const dataIdsBefore = tf.engine().backend.numDataIds();
    const source = tf.tensor([1, 2, 3, 4], [2, 2]);
    const copy = tf.clone(source);
    expect(tf.engine().backend.numDataIds()).toBe(dataIdsBefore + 1); // shared, not copied
    source.dispose();
    expect(Array.from(copy.dataSync())).toEqual([1, 2, 3, 4]);
    const variable = tf.variable(copy);
    copy.dispose();
    const doubled = tf.mul(variable, 2);
    variable.assign(doubled);
    doubled.dispose();
    expect(Array.from(variable.dataSync())).toEqual([2, 4, 6, 8]);
    variable.dispose();
    // A reshaped tensor's data is stored under its source's shape: its clone is a real copy,
    // so that kernels reading the stored shape (FusedConv2D's bias) see the clone's own.
    const result: TfTensor = tf.tidy(() => {
      const bias = tf.clone(tf.reshape(tf.tensor4d([1, 2], [1, 1, 1, 2]), [2])) as ReturnType<Tf['tensor1d']>;
      return tf.fused.conv2d({ x: tf.ones([1, 2, 2, 1]) as ReturnType<Tf['tensor4d']>, filter: tf.ones([1, 1, 1, 2]) as ReturnType<Tf['tensor4d']>, strides: 1, pad: 'valid', bias });
    });
    expect(Array.from(result.dataSync())).toEqual([2, 3, 2, 3, 2, 3, 2, 3]);
    result.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(tf.memory().numBytes).toBe(bytesBefore);
  });
});
