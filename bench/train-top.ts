/**
 * Training speed of a real fine-tuning top on the wasm backend: MobileNetV2 (decoded from
 * nsfwjs) cut at out_relu with a GAP + Dense(2) head, unfrozen from block_16_expand, split at
 * the first trainable layer (`findFrontier` + `buildTop`): block_16 + Conv_1 + head train on 7×7×160
 * inputs (random here; the cached frozen activations in a real run), batch 32, Adam, through
 * `fitModel`. Reports samples/s with the wasm backend's kernels, then with our replacements
 * (`WASM_SPEED_KERNELS`) added step by step, and (--profile) the kernels that take the time.
 *
 *   npx tsx bench/train-top.ts [--batches N] [--profile]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { decodeNsfwjsModel } from '../scripts/decode-nsfwjs.js';
import { configureBackend, useLayers, useTf, type Tf } from '../src/ml/backend.js';
import { buildTop, findFrontier } from '../src/ml/frontier.js';
import { loadModel } from '../src/ml/io.js';
import { arraySource } from '../src/ml/sources.js';
import { cutModel, freezeLayers, unfreezeLayers } from '../src/ml/surgery.js';
import { fitModel } from '../src/ml/train.js';
import { registerWasmTrainingKernels, unregisterWasmTrainingKernels, WASM_SPEED_KERNELS } from '../src/ml/wasm-kernels.js';

const BATCH = 32;

export interface TrainTopBenchResult {
  /** Kernel overrides in effect. */
  kernels: string;
  samplesPerSecond: number;
  /** Milliseconds per kernel over the profiled steps, largest first (with --profile). */
  profile?: { kernel: string; ms: number; calls: number }[];
}

export async function benchTrainTop(options: { batches?: number; profile?: boolean } = {}): Promise<TrainTopBenchResult[]> {
  const batches = options.batches ?? 12;
  configureBackend('wasm');
  const tf = await useTf();
  const tfl = await useLayers();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-top-'));
  try {
    decodeNsfwjsModel({ outDir: dir });
    const base = await loadModel(path.join(dir, 'model.json'));
    const cut = await cutModel(base, 'out_relu');
    const pooled = tfl.layers.globalAveragePooling2d({}).apply(cut.outputs[0]) as SymbolicTensor;
    const head = tfl.layers.dense({ units: 2, activation: 'softmax', kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }) }).apply(pooled) as SymbolicTensor;
    const model = tfl.model({ inputs: cut.inputs, outputs: head });
    freezeLayers(model);
    unfreezeLayers(model, { from: 'block_16_expand' });
    const frontier = findFrontier(model);
    if (!frontier) throw new Error('expected a frozen bottom');
    const top = await buildTop(model, frontier);
    const shape = top.inputs[0].shape.slice(1) as number[];
    const size = shape.reduce((a, b) => a * b, 1);
    const count = BATCH * batches;
    const x = new Float32Array(count * size);
    let state = 1;
    for (let i = 0; i < x.length; i++) x[i] = ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 6; // ReLU6-like range
    const data = { x, y: Int32Array.from({ length: count }, (_, i) => i % 2), recordShape: shape };
    const results: TrainTopBenchResult[] = [];
    // Cumulative: the originals, then the two replacements of the first profile, then all.
    const steps: (readonly string[])[] = [[], ['Conv2DBackpropInput', 'Tile'], WASM_SPEED_KERNELS];
    for (const replaced of steps) {
      registerWasmTrainingKernels(tf);
      unregisterWasmTrainingKernels(tf, WASM_SPEED_KERNELS.filter((name) => !replaced.includes(name)));
      const kernels = replaced.length ? `replaced: ${replaced.join(', ')}` : 'tfjs-backend-wasm kernels';
      const weights = top.getWeights().map((w) => w.clone());
      await fitModel(tf, top, arraySource({ ...data, x: x.subarray(0, BATCH * 2 * size), y: data.y.subarray(0, BATCH * 2) }, BATCH, 1), undefined, { epochs: 1, optimizer: { name: 'adam', lr: 1e-4 }, numClasses: 2 }); // warm-up
      const t0 = performance.now();
      await fitModel(tf, top, arraySource(data, BATCH, 1), undefined, { epochs: 1, optimizer: { name: 'adam', lr: 1e-4 }, numClasses: 2 });
      const samplesPerSecond = count / ((performance.now() - t0) / 1000);
      let profile: TrainTopBenchResult['profile'];
      if (options.profile) profile = await profileKernels(tf, () => fitModel(tf, top, arraySource({ ...data, x: x.subarray(0, BATCH * 4 * size), y: data.y.subarray(0, BATCH * 4) }, BATCH, 1), undefined, { epochs: 1, optimizer: { name: 'adam', lr: 1e-4 }, numClasses: 2 }), 4);
      top.setWeights(weights);
      tf.dispose(weights);
      results.push({ kernels, samplesPerSecond: Math.round(samplesPerSecond * 10) / 10, ...(profile ? { profile } : {}) });
      console.log(`train-top (MobileNetV2 block_16 + Conv_1 + head, batch ${BATCH}, Adam): ${results.at(-1)!.samplesPerSecond} samples/s, ${kernels}`);
      if (profile) for (const p of profile) console.log(`  ${p.kernel.padEnd(28)} ${String(p.ms).padStart(6)} ms/step  ${p.calls} calls`);
    }
    registerWasmTrainingKernels(tf);
    disposeAll(model, base);
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Wall time per training step in each wasm kernel, exclusive of the kernels it calls (ours call
 * BatchMatMul). Not `tf.profile`: it reads every kernel's output and so inflates the cheap ones
 * (it ranked Sum and Mean third and fifth; timed like this they are no faster in JS than as
 * the wasm backend's transpose + sum).
 */
async function profileKernels(tf: Tf, run: () => Promise<unknown>, steps: number): Promise<{ kernel: string; ms: number; calls: number }[]> {
  const registered = tf.getKernelsForBackend('wasm') as { kernelName: string; kernelFunc: (args: unknown) => unknown }[];
  const originals = registered.map((k) => k.kernelFunc);
  const totals = new Map<string, { ms: number; calls: number }>();
  const nested: number[] = [];
  registered.forEach((kernel, i) => {
    kernel.kernelFunc = (args) => {
      const start = performance.now();
      nested.push(0);
      try {
        return originals[i](args);
      } finally {
        const inner = nested.pop()!;
        const elapsed = performance.now() - start;
        if (nested.length) nested[nested.length - 1] += elapsed;
        const entry = totals.get(kernel.kernelName) ?? { ms: 0, calls: 0 };
        entry.ms += elapsed - inner;
        entry.calls++;
        totals.set(kernel.kernelName, entry);
      }
    };
  });
  try {
    await run();
  } finally {
    registered.forEach((kernel, i) => (kernel.kernelFunc = originals[i]));
  }
  return [...totals]
    .map(([kernel, v]) => ({ kernel, ms: Math.round((v.ms / steps) * 10) / 10, calls: Math.round(v.calls / steps) }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, 12);
}

function disposeAll(...models: LayersModel[]): void {
  for (const model of models) {
    try {
      model.dispose();
    } catch {
      // Layers shared between the models are disposed once.
    }
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const index = process.argv.indexOf('--batches');
  await benchTrainTop({ batches: index > 0 ? Number(process.argv[index + 1]) : undefined, profile: process.argv.includes('--profile') });
}
