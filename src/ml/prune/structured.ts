/**
 * Structured pruning: remove whole conv filters / dense units (and the matching input channels
 * of every layer that reads them), giving an ordinary, smaller layers model.
 *
 * Channel groups. Every tensor's last axis is described as a list of channel references
 * `(group, index)`. A Conv2D or Dense starts a new group of `filters`/`units` channels;
 * channel-wise layers (BatchNormalization, DepthwiseConv2D with multiplier 1, activations,
 * pooling, padding, dropout) pass their input's references through; `Concatenate` on the last
 * axis joins its inputs' lists; `Add`/`Multiply`/`Average`/... unite their inputs' groups, since
 * a residual connection needs the same channels kept on both sides. So one kept-channel set per
 * group keeps every layer in step.
 *
 * Left alone (their groups are marked fixed and reported): channels a layer the analysis does not
 * know reads (Flatten, Reshape, SeparableConv2D, Conv2DTranspose, a softmax over channels, nested
 * models, shared layers, non-last-axis BN or Concatenate, element-wise merges of differently laid
 * out tensors), the model's inputs and outputs, excluded layers, and (with `layers: trainable`)
 * groups produced by a frozen layer.
 *
 * The smaller model is rebuilt from the model's own JSON topology with reduced `filters`/`units`,
 * and each layer gets the kept slices of its old weights.
 */
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { StageError } from '../../runtime/errors.js';
import { useLayers, type Tf } from '../backend.js';
import { applyFreezeState, captureFreezeState } from '../surgery.js';

type Layer = LayersModel['layers'][number];

/** One channel group: the channels that must be kept or removed together. */
export interface ChannelGroup {
  /** Group id (the root of its union). */
  id: number;
  /** Channels in the group. */
  size: number;
  /** Conv2D / Dense layers whose outputs are this group. */
  producers: string[];
  /** Why the group cannot be pruned; empty when it can. */
  fixedBy: string[];
}

/** Where a tensor's channel comes from. */
interface ChannelRef {
  group: number;
  index: number;
}

/** The analysis of a model: its groups and, per layer, how its input channels map to them. */
export interface ChannelPlan {
  groups: ChannelGroup[];
  /** Layer name -> references of the channels of its (first) input. */
  inputRefs: Map<string, ChannelRef[]>;
  /** Layer name -> group of its outputs (producers only). */
  outputGroup: Map<string, number>;
  /** Layers that made groups fixed because the analysis does not follow their channels. */
  leftAlone: string[];
}

/** Options of `analyzeChannels`. */
export interface ChannelOptions {
  /** `trainable`: only groups whose producers all train may be pruned. */
  layers: 'trainable' | 'all';
  /** Producer layers never pruned. */
  exclude: string[];
}

const PASS_THROUGH = new Set([
  'ReLU', 'LeakyReLU', 'ELU', 'ThresholdedReLU', 'Dropout', 'SpatialDropout1D', 'SpatialDropout2D', 'GaussianNoise', 'GaussianDropout', 'AlphaDropout',
  'MaxPooling1D', 'MaxPooling2D', 'MaxPooling3D', 'AveragePooling1D', 'AveragePooling2D', 'AveragePooling3D',
  'GlobalAveragePooling1D', 'GlobalAveragePooling2D', 'GlobalMaxPooling1D', 'GlobalMaxPooling2D',
  'ZeroPadding2D', 'Cropping2D', 'UpSampling2D', 'ActivityRegularization', 'Masking',
]);
const MERGES = new Set(['Add', 'Subtract', 'Multiply', 'Average', 'Maximum', 'Minimum']);
const PRODUCERS = new Set(['Conv2D', 'Dense']);

/** Union-find over group ids. */
class Groups {
  private parent: number[] = [];
  readonly size: number[] = [];
  readonly producers: string[][] = [];
  readonly fixedBy: string[][] = [];
  create(size: number, producer?: string): number {
    const id = this.parent.length;
    this.parent.push(id);
    this.size.push(size);
    this.producers.push(producer ? [producer] : []);
    this.fixedBy.push([]);
    return id;
  }
  find(id: number): number {
    while (this.parent[id] !== id) id = this.parent[id] = this.parent[this.parent[id]];
    return id;
  }
  union(a: number, b: number): void {
    const ra = this.find(a);
    const rb = this.find(b);
    if (ra === rb) return;
    this.parent[rb] = ra;
    this.producers[ra].push(...this.producers[rb]);
    this.fixedBy[ra].push(...this.fixedBy[rb]);
  }
  fix(id: number, why: string): void {
    const root = this.find(id);
    if (!this.fixedBy[root].includes(why)) this.fixedBy[root].push(why);
  }
}

function lastDim(tensor: SymbolicTensor): number {
  return tensor.shape[tensor.shape.length - 1] ?? 0;
}

function isIdentityOf(refs: ChannelRef[], groups: Groups): number | null {
  if (!refs.length) return null;
  const group = groups.find(refs[0].group);
  if (groups.size[group] !== refs.length) return null;
  return refs.every((r, i) => groups.find(r.group) === group && r.index === i) ? group : null;
}

/** Follows every tensor's channels through the model and returns its channel groups. */
export function analyzeChannels(model: LayersModel, options: ChannelOptions): ChannelPlan {
  const groups = new Groups();
  const refsOf = new Map<number, ChannelRef[]>();
  const inputRefs = new Map<string, ChannelRef[]>();
  const outputGroup = new Map<string, number>();
  const leftAlone = new Set<string>();
  const excluded = new Set(options.exclude);
  const fresh = (size: number, producer?: string) => {
    const group = groups.create(size, producer);
    return Array.from({ length: size }, (_, index) => ({ group, index }));
  };
  const fixAll = (refs: ChannelRef[] | undefined, why: string) => refs?.forEach((r) => groups.fix(r.group, why));
  for (const input of model.inputs) {
    const refs = fresh(lastDim(input));
    fixAll(refs, 'model input');
    refsOf.set(input.id, refs);
  }
  for (const layer of model.layers) {
    const className = layer.getClassName();
    if (className === 'InputLayer') continue;
    const nodes = layer.inboundNodes;
    const node = nodes[0];
    const ins = node ? node.inputTensors.map((t) => refsOf.get(t.id) ?? fresh(lastDim(t))) : [];
    const outs = node ? node.outputTensors : [];
    const label = `${layer.name} (${className})`;
    const block = (why: string) => {
      leftAlone.add(label);
      ins.forEach((refs) => fixAll(refs, why));
      for (const out of outs) {
        const refs = fresh(lastDim(out));
        fixAll(refs, why);
        refsOf.set(out.id, refs);
      }
    };
    if (nodes.length !== 1) {
      block(`${layer.name} is shared`);
      continue;
    }
    if (ins.length === 1) inputRefs.set(layer.name, ins[0]);
    const config = layer.getConfig() as Record<string, unknown>;
    const activation = config.activation;
    if (PRODUCERS.has(className)) {
      const size = lastDim(outs[0]);
      const group = groups.create(size, layer.name);
      if (excluded.has(layer.name)) groups.fix(group, `${layer.name} is excluded`);
      if (options.layers === 'trainable' && !layer.trainable) groups.fix(group, `${layer.name} is frozen`);
      if (activation === 'softmax') groups.fix(group, `${layer.name} ends in a softmax`);
      outputGroup.set(layer.name, group);
      refsOf.set(outs[0].id, Array.from({ length: size }, (_, index) => ({ group, index })));
    } else if ((className === 'DepthwiseConv2D' && (config.depthMultiplier ?? 1) === 1 && activation !== 'softmax') || (className === 'BatchNormalization' && [-1, outs[0].shape.length - 1].includes(config.axis as number))) {
      refsOf.set(outs[0].id, ins[0]);
    } else if ((PASS_THROUGH.has(className) || (className === 'Activation' && activation !== 'softmax')) && ins.length === 1 && lastDim(outs[0]) === ins[0].length) {
      refsOf.set(outs[0].id, ins[0]);
    } else if (MERGES.has(className) && ins.length > 1) {
      const identities = ins.map((refs) => isIdentityOf(refs, groups));
      if (identities.some((g) => g === null) || ins.some((refs) => refs.length !== ins[0].length)) {
        block(`${layer.name} merges differently laid out channels`);
        continue;
      }
      identities.slice(1).forEach((g) => groups.union(identities[0]!, g!));
      refsOf.set(outs[0].id, ins[0]);
    } else if (className === 'Concatenate' && [-1, outs[0].shape.length - 1].includes(config.axis as number)) {
      refsOf.set(outs[0].id, ins.flat());
    } else {
      block(`${layer.name} (${className}) is not followed channel by channel`);
    }
  }
  for (const output of model.outputs) fixAll(refsOf.get(output.id), 'model output');
  const roots = [...new Set(Array.from({ length: groups.size.length }, (_, i) => groups.find(i)))];
  const resolve = (refs: ChannelRef[]) => refs.map((r) => ({ group: groups.find(r.group), index: r.index }));
  return {
    groups: roots.map((id) => ({ id, size: groups.size[id], producers: groups.producers[id], fixedBy: groups.fixedBy[id] })),
    inputRefs: new Map([...inputRefs].map(([name, refs]) => [name, resolve(refs)])),
    outputGroup: new Map([...outputGroup].map(([name, g]) => [name, groups.find(g)])),
    leftAlone: [...leftAlone],
  };
}

/** Groups that can be pruned: not fixed, with at least one producer and two channels. */
export function prunableGroups(plan: ChannelPlan): ChannelGroup[] {
  return plan.groups.filter((g) => g.fixedBy.length === 0 && g.producers.length > 0 && g.size > 1);
}

/** Importance of each channel of each prunable group (higher = keep). */
export interface ChannelScores {
  /** Group id -> one score per channel. */
  scores: Map<number, Float64Array>;
  /** Groups scored by L1 because `bn` was asked and no BN scale acts on them. */
  l1Fallbacks: number;
}

/**
 * `l1`: per channel, the L1 norm of each producer's output filter, divided by that producer's
 * mean filter norm, summed over producers. `bn`: the |gamma| of the BatchNormalization layers
 * acting on the channel (Network Slimming), falling back to `l1` for groups without one.
 */
export async function scoreChannels(model: LayersModel, plan: ChannelPlan, importance: 'l1' | 'bn'): Promise<ChannelScores> {
  const prunable = new Map(prunableGroups(plan).map((g) => [g.id, g]));
  const scores = new Map<number, Float64Array>();
  const bnSeen = new Set<number>();
  if (importance === 'bn') {
    for (const layer of model.layers) {
      if (layer.getClassName() !== 'BatchNormalization') continue;
      const gamma = (layer as unknown as { gamma?: { read(): TfCore.Tensor } }).gamma;
      const refs = plan.inputRefs.get(layer.name);
      if (!gamma || !refs) continue;
      const values = (await gamma.read().data()) as Float32Array;
      refs.forEach((ref, i) => {
        if (!prunable.has(ref.group)) return;
        const s = scores.get(ref.group) ?? new Float64Array(prunable.get(ref.group)!.size);
        s[ref.index] += Math.abs(values[i]);
        scores.set(ref.group, s);
        bnSeen.add(ref.group);
      });
    }
  }
  let l1Fallbacks = 0;
  for (const group of prunable.values()) {
    if (bnSeen.has(group.id)) continue;
    if (importance === 'bn') l1Fallbacks++;
    const s = new Float64Array(group.size);
    for (const name of group.producers) {
      const kernel = (model.getLayer(name) as unknown as { kernel: { read(): TfCore.Tensor; shape: number[] } }).kernel;
      const values = (await kernel.read().data()) as Float32Array;
      const out = kernel.shape[kernel.shape.length - 1];
      const norms = new Float64Array(out);
      for (let i = 0; i < values.length; i++) norms[i % out] += Math.abs(values[i]);
      const mean = norms.reduce((a, b) => a + b, 0) / out || 1;
      norms.forEach((n, c) => (s[c] += n / mean));
    }
    scores.set(group.id, s);
  }
  return { scores, l1Fallbacks };
}

/**
 * Chooses the channels to keep. `per-layer`: each group loses round(sparsity * size) channels;
 * `global`: round(sparsity * all channels) are removed where scores (divided by their group's
 * mean) are lowest. Every group keeps at least one channel. Returns group id -> kept indices,
 * ascending; groups not listed keep everything.
 */
export function chooseChannels(plan: ChannelPlan, scores: ChannelScores, sparsity: number, scope: 'global' | 'per-layer'): Map<number, number[]> {
  const kept = new Map<number, number[]>();
  const groups = prunableGroups(plan);
  const byScore = (s: Float64Array) => Array.from(s.keys()).sort((a, b) => s[a] - s[b] || a - b);
  if (scope === 'per-layer') {
    for (const g of groups) {
      const remove = Math.min(g.size - 1, Math.round(sparsity * g.size));
      const dropped = new Set(byScore(scores.scores.get(g.id)!).slice(0, remove));
      kept.set(g.id, range(g.size).filter((i) => !dropped.has(i)));
    }
    return kept;
  }
  const candidates: { group: number; index: number; score: number }[] = [];
  for (const g of groups) {
    const s = scores.scores.get(g.id)!;
    const mean = s.reduce((a, b) => a + b, 0) / s.length || 1;
    s.forEach((v, index) => candidates.push({ group: g.id, index, score: v / mean }));
  }
  candidates.sort((a, b) => a.score - b.score || a.group - b.group || a.index - b.index);
  const left = new Map(groups.map((g) => [g.id, g.size]));
  const dropped = new Set<string>();
  let remove = Math.round(sparsity * candidates.length);
  for (const c of candidates) {
    if (remove <= 0) break;
    if (left.get(c.group)! <= 1) continue;
    left.set(c.group, left.get(c.group)! - 1);
    dropped.add(`${c.group}:${c.index}`);
    remove--;
  }
  for (const g of groups) kept.set(g.id, range(g.size).filter((i) => !dropped.has(`${g.id}:${i}`)));
  return kept;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Kept positions of a tensor whose channels are `refs`. */
function keptPositions(refs: ChannelRef[] | undefined, kept: Map<number, number[]>): number[] | null {
  if (!refs) return null;
  const sets = new Map<number, Set<number>>();
  const positions: number[] = [];
  refs.forEach((r, p) => {
    const list = kept.get(r.group);
    if (!list) return void positions.push(p);
    let set = sets.get(r.group);
    if (!set) sets.set(r.group, (set = new Set(list)));
    if (set.has(r.index)) positions.push(p);
  });
  return positions.length === refs.length ? null : positions;
}

type LayerJson = { class_name: string; config: Record<string, unknown> };

/**
 * Builds the smaller model: the same topology with reduced `filters`/`units`, the kept weight
 * slices copied, trainable flags and BatchNorm inference state carried over.
 */
export async function rebuildPruned(tf: Tf, model: LayersModel, plan: ChannelPlan, kept: Map<number, number[]>): Promise<LayersModel> {
  const tfl = await useLayers();
  const outKeep = new Map<string, number[]>();
  for (const [name, group] of plan.outputGroup) {
    const list = kept.get(group);
    if (list) outKeep.set(name, list);
  }
  const inKeep = new Map<string, number[]>();
  for (const [name, refs] of plan.inputRefs) {
    const positions = keptPositions(refs, kept);
    if (positions) inKeep.set(name, positions);
  }
  const topology = model.toJSON(null, false) as unknown as { config: { layers: LayerJson[] } };
  for (const layer of topology.config.layers) {
    const keep = outKeep.get(layer.config.name as string);
    if (!keep) continue;
    if (layer.class_name === 'Conv2D') layer.config.filters = keep.length;
    else if (layer.class_name === 'Dense') layer.config.units = keep.length;
  }
  let pruned: LayersModel;
  try {
    pruned = await tfl.models.modelFromJSON({ modelTopology: topology as never });
  } catch (error) {
    throw new StageError('prune_rebuild_failed', `cannot rebuild the pruned model: ${(error as Error).message.split('\n')[0]}`, {}, { cause: error });
  }
  for (const layer of model.layers) {
    const target = pruned.getLayer(layer.name);
    const weights = layer.getWeights();
    if (!weights.length) continue;
    const sliced = tf.tidy(() => weights.map((w) => sliceWeight(tf, layer, w, inKeep.get(layer.name), outKeep.get(layer.name))));
    target.setWeights(sliced);
    // getWeights() hands out the variables' own tensors: dispose only the slices.
    tf.dispose(sliced);
  }
  applyFreezeState(pruned, captureFreezeState(model));
  return pruned;
}

/** The kept slice of one weight of `layer`, by the layer's kind and the weight's rank. */
function sliceWeight(tf: Tf, layer: Layer, weight: TfCore.Tensor, inputs: number[] | undefined, outputs: number[] | undefined): TfCore.Tensor {
  const className = layer.getClassName();
  const gather = (t: TfCore.Tensor, keep: number[] | undefined, axis: number) => (keep ? tf.gather(t, tf.tensor1d(keep, 'int32'), axis) : t);
  const rank = weight.shape.length;
  if (className === 'Conv2D' || className === 'Dense') {
    if (rank === 1) return tf.clone(gather(weight, outputs, 0));
    return tf.clone(gather(gather(weight, inputs, rank - 2), outputs, rank - 1));
  }
  if (className === 'DepthwiseConv2D') return tf.clone(gather(weight, inputs, rank === 1 ? 0 : 2));
  if (className === 'BatchNormalization') return tf.clone(gather(weight, inputs, 0));
  return tf.clone(weight);
}
