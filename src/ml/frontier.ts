/**
 * Where a model's frozen part ends. A layer is *frozen-computable* when its output is the same
 * in every training step: it has no trainable weights, no training-time behaviour (Dropout,
 * noise, a BatchNormalization that uses batch statistics) and every layer it reads is
 * frozen-computable too. Those outputs can be computed once and cached. The *frontier* is the
 * set of frozen-computable layers whose outputs the rest of the model reads: one tensor for a
 * plain stack, several when branches (Inception's mixed blocks, a residual shortcut) cross the
 * cut. The frontier climbs through weightless layers (a global pooling right after the base),
 * so the smallest tensor that serves is what gets cached.
 *
 * Everything here is pure graph analysis on tfjs-layers models; nothing is computed.
 */
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { canonicalJson, sha256 } from '../runtime/hash.js';
import { useLayers } from './backend.js';
import type { DownstreamHint } from '../runtime/types.js';
import { allLayers, isBatchNormInference, unfreezeStart } from './surgery.js';

type Layer = LayersModel['layers'][number];

/** Layers whose training-time output is random, so it must never be cached. */
const STOCHASTIC = new Set(['Dropout', 'SpatialDropout1D', 'SpatialDropout2D', 'GaussianNoise', 'GaussianDropout', 'AlphaDropout']);

/** Decides which layers train; default: the layers' own `trainable` flags. */
export type TrainablePredicate = (layer: Layer) => boolean;

/** One frontier tensor: a layer's (only) output. */
export interface FrontierTensor {
  /** The layer whose output this is. */
  layer: string;
  /** Its shape without the batch dimension. */
  shape: number[];
}

/** The frozen bottom of a model under some trainability. */
export interface Frontier {
  /** Frontier tensors in model.layers order; empty when nothing is frozen. */
  tensors: FrontierTensor[];
  /** Names of all frozen-computable layers (the model's InputLayers included). */
  frozen: Set<string>;
  /** Names of the frozen-computable layers the frontier depends on (what a pass computes). */
  closure: Set<string>;
}

/**
 * The layer's nodes that belong to `model`. Building a top or a part re-applies layers, which
 * adds nodes to them that belong to that other model; tfjs-layers records a model's own nodes
 * in `containerNodes` as `<layer name>_ib-<node index>`.
 */
function ownNodes(model: LayersModel, layer: Layer): Layer['inboundNodes'] {
  const keys = (model as unknown as { containerNodes?: Set<string> }).containerNodes;
  return keys ? layer.inboundNodes.filter((_, i) => keys.has(`${layer.name}_ib-${i}`)) : layer.inboundNodes;
}

/** The layers `layer` reads in `model` (its one node there). */
function inboundLayers(model: LayersModel, layer: Layer): Layer[] {
  const node = ownNodes(model, layer)[0];
  return node ? (node.inboundLayers as Layer[]) : [];
}

function isInput(layer: Layer): boolean {
  return layer.getClassName() === 'InputLayer';
}

/** Whether a layer (or any layer nested in it) behaves differently in training. */
function trainsDifferently(layer: Layer): boolean {
  return allLayers({ layers: [layer] } as unknown as LayersModel).some(
    (l) => STOCHASTIC.has(l.getClassName()) || (l.getClassName() === 'BatchNormalization' && !isBatchNormInference(l)),
  );
}

function hasTrainableWeights(layer: Layer): boolean {
  return layer.trainable && layer.trainableWeights.length > 0;
}

/**
 * The frontier of `model` when `trainable` says which layers train. Returns null when the
 * graph cannot be split (a layer used at several places, a multi-output layer on the cut).
 */
export function findFrontier(model: LayersModel, trainable: TrainablePredicate = hasTrainableWeights): Frontier | null {
  const frozen = new Set<string>();
  for (const layer of model.layers) {
    if (!isInput(layer) && ownNodes(model, layer).length !== 1) return null; // shared layer: no single graph position
    const ok = isInput(layer) || (!trainable(layer) && !trainsDifferently(layer) && inboundLayers(model, layer).every((l) => frozen.has(l.name)));
    if (ok) frozen.add(layer.name);
  }
  const outputs = new Set(model.outputs.map((t) => t.sourceLayer.name));
  const consumedBelow = new Set<string>();
  for (const layer of model.layers) {
    if (frozen.has(layer.name)) continue;
    for (const source of inboundLayers(model, layer)) if (frozen.has(source.name)) consumedBelow.add(source.name);
  }
  const tensors: FrontierTensor[] = [];
  for (const layer of model.layers) {
    if (!frozen.has(layer.name) || !(consumedBelow.has(layer.name) || outputs.has(layer.name))) continue;
    const node = ownNodes(model, layer)[0];
    if (node && node.outputTensors.length !== 1) return null; // a multi-output layer on the cut
    const shape = (isInput(layer) ? (layer as unknown as { batchInputShape: (number | null)[] }).batchInputShape : node.outputTensors[0].shape).slice(1);
    if (shape.some((d) => d === null)) return null; // a size that depends on the input: nothing fixed to cache
    tensors.push({ layer: layer.name, shape: shape as number[] });
  }
  const closure = new Set<string>();
  const byName = new Map(model.layers.map((l) => [l.name, l]));
  const visit = (name: string) => {
    if (closure.has(name)) return;
    closure.add(name);
    for (const source of inboundLayers(model, byName.get(name)!)) visit(source.name);
  };
  tensors.forEach((t) => visit(t.layer));
  return { tensors, frozen, closure };
}

/** True when the frontier is only the model's inputs: nothing is worth caching. */
export function isTrivial(frontier: Frontier): boolean {
  return frontier.tensors.length === 0 || [...frontier.closure].every((name) => frontier.tensors.some((t) => t.layer === name));
}

/**
 * Re-applies the layers of `model` that `include` selects, in layer order, starting from fresh
 * inputs at the `start` frontier's tensors; returns the inputs and every layer's new output.
 * The layers are shared, so the result computes with (and trains) the model's own weights.
 */
async function replay(model: LayersModel, start: Frontier, include: (layer: Layer) => boolean): Promise<{ inputs: SymbolicTensor[]; mapped: Map<string, SymbolicTensor> }> {
  const tfl = await useLayers();
  const mapped = new Map<string, SymbolicTensor>();
  const inputs = start.tensors.map((t) => {
    const input = tfl.input({ shape: t.shape, name: `${t.layer}_cached`.replace(/[^A-Za-z0-9_.-]/g, '_') });
    mapped.set(t.layer, input);
    return input;
  });
  for (const layer of model.layers) {
    if (!include(layer)) continue;
    const sources = inboundLayers(model, layer).map((l) => mapped.get(l.name));
    if (sources.some((t) => !t)) throw new Error(`layer ${layer.name} reads a tensor that is not computed above the frontier`);
    mapped.set(layer.name, layer.apply(sources.length === 1 ? sources[0]! : (sources as SymbolicTensor[])) as SymbolicTensor);
  }
  return { inputs, mapped };
}

/**
 * The model above `frontier`: one input per frontier tensor (in frontier order), layers shared
 * with `model` (so weights are shared and training the top trains the model).
 */
export async function buildTop(model: LayersModel, frontier: Frontier): Promise<LayersModel> {
  const { inputs, mapped } = await replay(model, frontier, (layer) => !frontier.frozen.has(layer.name));
  const outputs = model.outputs.map((t) => mapped.get(t.sourceLayer.name)!);
  return (await useLayers()).model({ inputs, outputs, name: `${model.name}_top` });
}

/**
 * The frozen layers between two frontiers as a model: inputs at `from` (a lower frontier),
 * outputs at `to`. Every layer of `to`'s closure that is not in `from`'s closure is run.
 */
export async function buildBetween(model: LayersModel, from: Frontier, to: Frontier): Promise<LayersModel> {
  const { inputs, mapped } = await replay(model, from, (layer) => to.closure.has(layer.name) && !from.closure.has(layer.name));
  return (await useLayers()).model({ inputs, outputs: to.tensors.map((t) => mapped.get(t.layer)!), name: `${model.name}_between` });
}

/** The frozen part up to `frontier` as a model on the original inputs. */
export async function buildBottom(model: LayersModel, frontier: Frontier): Promise<LayersModel> {
  const tfl = await useLayers();
  const byName = new Map(model.layers.map((l) => [l.name, l]));
  return tfl.model({ inputs: model.inputs, outputs: frontier.tensors.map((t) => ownNodes(model, byName.get(t.layer)!)[0].outputTensors[0] as SymbolicTensor), name: `${model.name}_bottom` });
}

/**
 * A digest of what the frontier's closure computes: each layer's class, config (without
 * `trainable`, which does not change inference), inbound layers and weight bytes. Two models
 * with the same digest produce the same frontier activations, so a pass is shared by every
 * stage whose model has the same frozen bottom (train-head, fine-tune, prune, evaluate).
 */
export async function digestClosure(model: LayersModel, frontier: Frontier): Promise<string> {
  const parts: string[] = [canonicalJson(frontier.tensors.map((t) => t.layer))];
  for (const layer of model.layers) {
    if (!frontier.closure.has(layer.name)) continue;
    const { trainable: _trainable, ...config } = layer.getConfig() as Record<string, unknown>;
    parts.push(canonicalJson({ class: layer.getClassName(), name: layer.name, config: config as never, inbound: inboundLayers(model, layer).map((l) => l.name) }));
    for (const weight of layer.weights) {
      const values = (await weight.read().data()) as Float32Array;
      parts.push(sha256(Buffer.from(values.buffer, values.byteOffset, values.byteLength)));
    }
  }
  return sha256(parts.join('\n'));
}

/**
 * The first layer the pass over images must stop below: the lowest start of the downstream
 * `unfreeze` hints, or `recorded` (the start an upstream stage's pass stopped below, recorded in
 * the model's info) when that is lower. Undefined when neither applies. Hints naming a layer
 * this model does not have are ignored: the stage that gave them reports that itself.
 *
 * The recorded start is what shares one pass among the branches of a sweep: train-head, upstream
 * of every unfreeze branch, passes the images at the lowest cut any of them needs and records it;
 * a branch that unfreezes less reads that pass and runs the frozen layers between the two cuts.
 */
export function lowestPassStart(model: LayersModel, downstream: DownstreamHint[], recorded?: string): string | undefined {
  const starts: number[] = [];
  for (const { hints } of downstream) {
    const unfreeze = (hints as { unfreeze?: { from?: string; blocks?: number } } | null)?.unfreeze;
    if (!unfreeze || typeof unfreeze !== 'object') continue;
    try {
      starts.push(unfreezeStart(model, unfreeze));
    } catch {
      // an unknown layer name: the unfreeze stage fails with its own message
    }
  }
  const at = recorded === undefined ? -1 : model.layers.findIndex((l) => l.name === recorded);
  if (at >= 0) starts.push(at);
  if (!starts.length) return undefined;
  return model.layers[Math.min(...starts)]?.name;
}

/** The layers with weights at or above `start` (a layer name of `model`): what the pass stops below. */
export function trainableFrom(model: LayersModel, start: string): TrainablePredicate {
  const index = new Map(model.layers.map((l, i) => [l.name, i]));
  const from = index.get(start) ?? model.layers.length;
  const withWeights = (layer: Layer) => ((layer as unknown as { _trainableWeights?: unknown[] })._trainableWeights?.length ?? layer.weights.length) > 0;
  return (layer) => (index.get(layer.name) ?? -1) >= from && withWeights(layer);
}

/**
 * The layers that downstream `unfreeze` hints will make trainable in `model` (those with
 * weights at or above the lowest hint's start), or undefined when no hint applies.
 */
export function laterTrainable(model: LayersModel, downstream: DownstreamHint[]): TrainablePredicate | undefined {
  const start = lowestPassStart(model, downstream);
  return start === undefined ? undefined : trainableFrom(model, start);
}
