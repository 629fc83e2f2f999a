/**
 * Unstructured magnitude pruning: the smallest-magnitude scalars of conv / depthwise / dense
 * kernels are set to zero and held there by a mask.
 *
 * The mask is re-applied after every optimizer step (a `TrainHook`): the optimizer keeps
 * updating masked weights otherwise (Adam's moments alone move them), which is what the TF Model
 * Optimization Toolkit's `UpdatePruningStep` callback does too. The target is reached gradually
 * with its `PolynomialDecay` schedule: sparsity(t) = final + (initial - final) * (1 - t/end)^power,
 * masks recomputed every `frequency` steps up to `end`, fixed afterwards.
 *
 * Counts are exact: a kernel set of N scalars at sparsity s has exactly round(s * N) masked
 * scalars (ties at the threshold are broken by position), per layer or across all kernels.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { Tf } from '../backend.js';
import type { TrainHook } from '../train.js';
import { allLayers } from '../surgery.js';

type Layer = LayersModel['layers'][number];

/** A tfjs-layers LayerVariable, as far as pruning needs it. */
export interface KernelVariable {
  name: string;
  shape: number[];
  read(): TfCore.Variable;
  write(value: TfCore.Tensor): unknown;
}

/** One prunable kernel. */
export interface PrunableKernel {
  /** Name of the layer that owns it. */
  layer: string;
  /** The weight's name (`conv/kernel`). */
  name: string;
  /** The variable; writes reach the model (and every model sharing the layer). */
  variable: KernelVariable;
  shape: number[];
  /** Scalars in it. */
  size: number;
  /** Whether the owning layer trains. */
  trainable: boolean;
}

/** Which kernels `findPrunableKernels` returns. */
export interface KernelSelection {
  /** `trainable`: kernels of trainable layers only; `all`: every conv/dense kernel. */
  layers: 'trainable' | 'all';
  /** Layer names never pruned. */
  exclude: string[];
}

/** Layer classes whose kernels are pruned, and the property names of those kernels. */
const KERNEL_PROPERTIES: Record<string, string[]> = {
  Conv1D: ['kernel'],
  Conv2D: ['kernel'],
  Conv3D: ['kernel'],
  Conv2DTranspose: ['kernel'],
  Dense: ['kernel'],
  DepthwiseConv2D: ['depthwiseKernel'],
  SeparableConv2D: ['depthwiseKernel', 'pointwiseKernel'],
};

/** Whether magnitude pruning knows the layer's class. */
export function hasPrunableKernel(layer: Layer): boolean {
  return KERNEL_PROPERTIES[layer.getClassName()] !== undefined;
}

/** The kernels of `model` (nested models included) that magnitude pruning may mask. */
export function findPrunableKernels(model: LayersModel, selection: KernelSelection): PrunableKernel[] {
  const excluded = new Set(selection.exclude);
  const kernels: PrunableKernel[] = [];
  for (const layer of allLayers(model)) {
    const properties = KERNEL_PROPERTIES[layer.getClassName()];
    if (!properties || excluded.has(layer.name)) continue;
    if (selection.layers === 'trainable' && !layer.trainable) continue;
    for (const property of properties) {
      const variable = (layer as unknown as Record<string, KernelVariable | undefined>)[property];
      if (!variable) continue;
      const shape = [...variable.shape];
      kernels.push({ layer: layer.name, name: variable.name, variable, shape, size: shape.reduce((a, b) => a * b, 1), trainable: layer.trainable });
    }
  }
  return kernels;
}

/** Per kernel, 1 where the scalar is kept and 0 where it is pruned. */
export type Masks = Uint8Array[];

/**
 * Masks that prune exactly round(sparsity * n) scalars of smallest magnitude: per kernel
 * (`per-layer`) or with one threshold across all kernels (`global`).
 */
export async function computeMasks(kernels: PrunableKernel[], sparsity: number, scope: 'global' | 'per-layer'): Promise<Masks> {
  const magnitudes = await Promise.all(kernels.map(async (k) => Float32Array.from((await k.variable.read().data()) as Float32Array, Math.abs)));
  if (scope === 'per-layer') return magnitudes.map((m) => maskSmallest([m], Math.round(sparsity * m.length))[0]);
  const total = magnitudes.reduce((sum, m) => sum + m.length, 0);
  return maskSmallest(magnitudes, Math.round(sparsity * total));
}

/**
 * Masks out exactly `count` scalars of smallest value across `values`: everything below the
 * count-th smallest value, then ties at it in order of position.
 */
export function maskSmallest(values: Float32Array[], count: number): Masks {
  const masks = values.map((v) => new Uint8Array(v.length).fill(1));
  if (count <= 0) return masks;
  const all = new Float32Array(values.reduce((sum, v) => sum + v.length, 0));
  let offset = 0;
  for (const v of values) {
    all.set(v, offset);
    offset += v.length;
  }
  all.sort();
  const threshold = all[Math.min(count, all.length) - 1];
  let left = count;
  // Strictly below the threshold first, so that ties never take a smaller scalar's place.
  values.forEach((v, k) => {
    for (let i = 0; i < v.length; i++) if (v[i] < threshold) (masks[k][i] = 0), left--;
  });
  values.forEach((v, k) => {
    for (let i = 0; i < v.length && left > 0; i++) if (v[i] === threshold && masks[k][i] === 1) (masks[k][i] = 0), left--;
  });
  return masks;
}

/** Multiplies every kernel by its mask (in place, through the layer variables). */
export function applyMasks(tf: Tf, kernels: PrunableKernel[], masks: TfCore.Tensor[]): void {
  tf.tidy(() => {
    kernels.forEach((k, i) => k.variable.write(tf.mul(k.variable.read(), masks[i])));
  });
}

/** Uploads masks as float32 tensors shaped like their kernels (dispose them when done). */
export function maskTensors(tf: Tf, kernels: PrunableKernel[], masks: Masks): TfCore.Tensor[] {
  return kernels.map((k, i) => tf.tensor(Float32Array.from(masks[i]), k.shape, 'float32'));
}

/** Scalars pruned by `masks` over scalars in them (0 when there are none). */
export function maskSparsity(masks: Masks): number {
  let zeros = 0;
  let total = 0;
  for (const mask of masks) {
    total += mask.length;
    for (let i = 0; i < mask.length; i++) if (mask[i] === 0) zeros++;
  }
  return total ? zeros / total : 0;
}

/** Exact zeros in the kernels' current values: per kernel and in all. */
export async function measureKernelSparsity(kernels: PrunableKernel[]): Promise<{ zeros: number; total: number; sparsity: number; perLayer: Record<string, number> }> {
  let zeros = 0;
  let total = 0;
  const perLayer: Record<string, number> = {};
  for (const k of kernels) {
    const values = (await k.variable.read().data()) as Float32Array;
    let z = 0;
    for (let i = 0; i < values.length; i++) if (values[i] === 0) z++;
    perLayer[k.name] = values.length ? z / values.length : 0;
    zeros += z;
    total += values.length;
  }
  return { zeros, total, sparsity: total ? zeros / total : 0, perLayer };
}

/** The gradual schedule (`schedule:` of the prune stage, with defaults applied). */
export interface PolynomialSchedule {
  /** Sparsity at step 0. */
  initialSparsity: number;
  /** Exponent of the decay; 3 as in TF-MOT. */
  power: number;
  /** Fraction of the recovery steps after which the target is reached and masks are fixed. */
  endFraction: number;
  /** Masks are recomputed every this many steps (and at the end step). */
  frequency: number;
}

/** Step at which the schedule reaches the target (0: prune at once). */
export function scheduleEndStep(schedule: PolynomialSchedule | null, totalSteps: number): number {
  if (!schedule || totalSteps <= 0) return 0;
  return Math.max(1, Math.min(totalSteps, Math.round(schedule.endFraction * totalSteps)));
}

/** TF-MOT PolynomialDecay with begin_step 0: the sparsity to hold after `step` steps. */
export function scheduledSparsity(schedule: PolynomialSchedule | null, target: number, step: number, endStep: number): number {
  if (!schedule || endStep <= 0 || step >= endStep) return target;
  const initial = Math.min(schedule.initialSparsity, target);
  return target + (initial - target) * Math.pow(1 - step / endStep, schedule.power);
}

/** Whether the masks are recomputed after `step` steps. */
export function isMaskUpdateStep(schedule: PolynomialSchedule | null, step: number, endStep: number): boolean {
  if (!schedule || step > endStep) return false;
  return step === endStep || step % Math.max(1, schedule.frequency) === 0;
}

/** State of a `MaskedPruning` run that tests and the stage read. */
export interface MaskedPruning {
  /** The hook to pass to `fitModel`. */
  hook: TrainHook;
  /** Steps (optimizer updates) seen so far. */
  steps(): number;
  /** Sparsity the current masks hold. */
  currentSparsity(): number;
  /** A copy of the current masks. */
  masks(): Masks;
  /** Moves to the target (if not there yet) and applies the final masks. */
  finish(): Promise<void>;
  /** Frees the mask tensors. */
  dispose(): void;
}

/** Options of `startMaskedPruning`. */
export interface MaskedPruningOptions {
  tf: Tf;
  kernels: PrunableKernel[];
  target: number;
  scope: 'global' | 'per-layer';
  /** Null: prune to the target at once and keep the masks fixed. */
  schedule: PolynomialSchedule | null;
  /** Optimizer steps the recovery will run (epochs * batches per epoch). */
  totalSteps: number;
  /** Called after each mask update. */
  onUpdate?(step: number, sparsity: number): void;
}

/**
 * Computes and applies the step-0 masks, and returns a hook that re-applies them after every
 * optimizer step and recomputes them on the schedule's update steps.
 */
export async function startMaskedPruning(options: MaskedPruningOptions): Promise<MaskedPruning> {
  const { tf, kernels, target, scope, schedule } = options;
  const endStep = scheduleEndStep(schedule, options.totalSteps);
  let step = 0;
  let sparsity = scheduledSparsity(schedule, target, 0, endStep);
  let masks = await computeMasks(kernels, sparsity, scope);
  let tensors = maskTensors(tf, kernels, masks);
  applyMasks(tf, kernels, tensors);
  options.onUpdate?.(0, sparsity);
  const update = async (next: number) => {
    sparsity = next;
    masks = await computeMasks(kernels, sparsity, scope);
    tf.dispose(tensors);
    tensors = maskTensors(tf, kernels, masks);
    applyMasks(tf, kernels, tensors);
    options.onUpdate?.(step, sparsity);
  };
  return {
    hook: {
      changesWeights: true,
      async onBatchEnd() {
        step++;
        if (isMaskUpdateStep(schedule, step, endStep)) await update(scheduledSparsity(schedule, target, step, endStep));
        else applyMasks(tf, kernels, tensors);
      },
    },
    steps: () => step,
    currentSparsity: () => sparsity,
    masks: () => masks.map((m) => m.slice()),
    async finish() {
      if (sparsity !== target) await update(target);
      else applyMasks(tf, kernels, tensors);
    },
    dispose() {
      tf.dispose(tensors);
      tensors = [];
    },
  };
}
