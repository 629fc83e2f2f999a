import { beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers, useTf, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import { computeMasks, findPrunableKernels, maskSmallest, maskSparsity, measureKernelSparsity, scheduledSparsity, scheduleEndStep, startMaskedPruning } from '../../../src/ml/prune/magnitude.js';
import { arraySource } from '../../../src/ml/sources.js';
import { freezeLayers } from '../../../src/ml/surgery.js';
import { fitModel } from '../../../src/ml/train.js';

let tf: Tf;
let tfl: TfLayersApi;

beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  tfl = await useLayers();
});

/** conv(6) -> depthwise -> GAP -> dense(5) -> dense(3): four kernels of different sizes. */
function net(seed = 1): LayersModel {
  const input = tfl.input({ shape: [5, 5, 2], name: 'image' });
  let x = tfl.layers.conv2d({ filters: 6, kernelSize: 3, padding: 'same', activation: 'relu', name: 'conv', kernelInitializer: tfl.initializers.glorotUniform({ seed }) }).apply(input) as SymbolicTensor;
  x = tfl.layers.depthwiseConv2d({ kernelSize: 3, padding: 'same', name: 'dw', depthwiseInitializer: tfl.initializers.glorotUniform({ seed: seed + 1 }) }).apply(x) as SymbolicTensor;
  x = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as SymbolicTensor;
  x = tfl.layers.dense({ units: 5, activation: 'relu', name: 'hidden', kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + 2 }) }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 3, activation: 'softmax', name: 'head', kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + 3 }) }).apply(x) as SymbolicTensor });
}

function data(n = 24) {
  const x = Float32Array.from({ length: n * 50 }, (_, i) => Math.sin(i * 0.37));
  const y = Int32Array.from({ length: n }, (_, i) => i % 3);
  return arraySource({ x, y, recordShape: [5, 5, 2] }, 8, 7);
}

async function kernelValues(model: LayersModel, names: string[]): Promise<Float32Array[]> {
  return Promise.all(findPrunableKernels(model, { layers: 'all', exclude: [] }).filter((k) => names.includes(k.layer)).map(async (k) => Float32Array.from((await k.variable.read().data()) as Float32Array)));
}

describe('magnitude masks', () => {
  it('masks exactly round(s * n) scalars, smallest first, ties by position', () => {
    const [mask] = maskSmallest([Float32Array.from([3, 1, 1, 1, 0.5, 2])], 3);
    expect(Array.from(mask)).toEqual([1, 0, 0, 1, 0, 1]);
    const both = maskSmallest([Float32Array.from([5, 0.1]), Float32Array.from([0.2, 0.3, 9])], 2);
    expect(both.map((m) => Array.from(m))).toEqual([[1, 0], [0, 1, 1]]);
  });

  it('reaches the target exactly per layer and globally', async () => {
    const model = net();
    const kernels = findPrunableKernels(model, { layers: 'all', exclude: ['head'] });
    expect(kernels.map((k) => k.layer)).toEqual(['conv', 'dw', 'hidden']);
    for (const target of [0.3, 0.5, 0.8]) {
      const perLayer = await computeMasks(kernels, target, 'per-layer');
      perLayer.forEach((mask, i) => expect(mask.length - mask.reduce((a, b) => a + b, 0)).toBe(Math.round(target * kernels[i].size)));
      const global = await computeMasks(kernels, target, 'global');
      const total = kernels.reduce((s, k) => s + k.size, 0);
      expect(maskSparsity(global)).toBe(Math.round(target * total) / total);
      // Global: one threshold, so per-layer fractions differ.
      expect(new Set(global.map((m) => m.reduce((a, b) => a + b, 0) / m.length)).size).toBeGreaterThan(1);
    }
    model.dispose();
  });

  it('follows TF-MOT PolynomialDecay (power 3) and ends at the target', () => {
    const schedule = { initialSparsity: 0.1, power: 3, endFraction: 0.5, frequency: 1 };
    const end = scheduleEndStep(schedule, 100);
    expect(end).toBe(50);
    expect(scheduledSparsity(schedule, 0.8, 0, end)).toBeCloseTo(0.1, 12);
    expect(scheduledSparsity(schedule, 0.8, 25, end)).toBeCloseTo(0.8 + (0.1 - 0.8) * 0.125, 12);
    expect(scheduledSparsity(schedule, 0.8, 50, end)).toBe(0.8);
    expect(scheduledSparsity(schedule, 0.8, 90, end)).toBe(0.8);
    expect(scheduledSparsity(null, 0.8, 0, 0)).toBe(0.8);
  });

  it('keeps the masks fixed through recovery while the other weights train (and only because of the hook)', async () => {
    const model = net();
    const names = ['conv', 'dw', 'hidden', 'head'];
    const kernels = findPrunableKernels(model, { layers: 'trainable', exclude: [] });
    const pruning = await startMaskedPruning({ tf, kernels, target: 0.6, scope: 'per-layer', schedule: null, totalSteps: 9 });
    const masks = pruning.masks();
    const start = await kernelValues(model, names);
    await fitModel(tf, model, data(), undefined, { epochs: 3, optimizer: { name: 'adam', lr: 0.05 }, numClasses: 3, hooks: [pruning.hook] });
    // Read before finish(), which re-applies the masks itself.
    const end = await kernelValues(model, names);
    await pruning.finish();
    expect(pruning.steps()).toBe(9);
    masks.forEach((mask, k) => {
      let moved = 0;
      mask.forEach((keep, i) => {
        if (!keep) expect(end[k][i] === 0).toBe(true);
        else if (end[k][i] !== start[k][i]) moved++;
      });
      expect(moved).toBeGreaterThan(0);
    });
    expect(pruning.masks()).toEqual(masks);
    expect((await measureKernelSparsity(kernels)).sparsity).toBeCloseTo(0.6, 2);
    pruning.dispose();

    // Control: without the hook Adam moves the masked weights off zero.
    const control = net();
    const controlKernels = findPrunableKernels(control, { layers: 'trainable', exclude: [] });
    const once = await startMaskedPruning({ tf, kernels: controlKernels, target: 0.6, scope: 'per-layer', schedule: null, totalSteps: 9 });
    await fitModel(tf, control, data(), undefined, { epochs: 3, optimizer: { name: 'adam', lr: 0.05 }, numClasses: 3 });
    expect((await measureKernelSparsity(controlKernels)).sparsity).toBeLessThan(0.1);
    once.dispose();
    model.dispose();
    control.dispose();
  });

  it('a gradual schedule grows the masks and lands exactly on the target; frozen layers are skipped with layers: trainable', async () => {
    const model = net(5);
    freezeLayers(model, { until: 'dw' });
    const kernels = findPrunableKernels(model, { layers: 'trainable', exclude: [] });
    expect(kernels.map((k) => k.layer)).toEqual(['hidden', 'head']);
    const seen: number[] = [];
    const pruning = await startMaskedPruning({ tf, kernels, target: 0.75, scope: 'global', schedule: { initialSparsity: 0, power: 3, endFraction: 0.5, frequency: 2 }, totalSteps: 12, onUpdate: (_, s) => seen.push(s) });
    await fitModel(tf, model, data(), undefined, { epochs: 4, optimizer: { name: 'adam', lr: 0.01 }, numClasses: 3, hooks: [pruning.hook] });
    await pruning.finish();
    expect(seen[0]).toBe(0);
    expect(seen.at(-1)).toBe(0.75);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
    const total = kernels.reduce((s, k) => s + k.size, 0);
    const reached = await measureKernelSparsity(kernels);
    expect(reached.zeros).toBe(Math.round(0.75 * total));
    pruning.dispose();
    model.dispose();
  });
});
