/**
 * Surgery on tfjs-layers models: cut at a layer, freeze and unfreeze, adapt the input, summarize.
 *
 * Freezing in TF.js has a trap. `layer.trainable = false` only takes the layer's weights out of
 * the optimizer; tfjs-layers' BatchNormalization still normalizes with *batch* statistics
 * during `fit()` and keeps updating its moving mean and variance (it writes them inside `call`
 * whenever `kwargs.training` is true), so a "frozen" base drifts. Keras 2 runs a BN layer with
 * `trainable=False` in inference mode; we do the same by wrapping that layer instance's `call`
 * to force `training: false`, and unwrapping it when the layer is unfrozen. Which BN layers are
 * held in inference mode is part of the model's state: `captureFreezeState` records it (io.ts
 * writes it into model.json's userDefinedMetadata) and `applyFreezeState` restores it on load.
 *
 * Changing `trainable` only takes effect in TF.js after `model.compile()` (the optimizer's
 * variable list is collected there); the stages recompile after freeze/unfreeze.
 */
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { StageError } from '../runtime/errors.js';
import { useLayers, type Tf } from './backend.js';

type Layer = LayersModel['layers'][number];

/** Key of our entry in a model's userDefinedMetadata. */
export const FREEZE_METADATA_KEY = 'finetunePipeline';

/** The part of a model's frozen state that TF.js does not serialize itself. */
export interface FreezeState {
  /** Names of BatchNormalization layers held in inference mode (moving statistics, no updates). */
  batchNormInference: string[];
}

/** Which layers `freezeLayers` / `unfreezeLayers` changed. */
export interface FreezeResult {
  /** Names of the top-level layers that are frozen afterwards. */
  frozen: string[];
  /** Names of the top-level layers that are trainable afterwards. */
  trainable: string[];
}

/** Small JSON description of a model for an artifact's metadata. */
export interface ModelSummary {
  /** The model's name. */
  name: string;
  /** Number of top-level layers (`model.layers.length`; a functional model counts its InputLayer). */
  layers: number;
  /** All weights, in scalars. */
  params: number;
  /** Scalars the optimizer updates. */
  trainableParams: number;
  /** Scalars it does not (frozen layers, BN moving statistics). */
  nonTrainableParams: number;
  /** Number of top-level layers with `trainable = false`. */
  frozenLayers: number;
  /** Input shape with `null` for the batch; an array of shapes for a multi-input model. */
  inputShape: (number | null)[] | (number | null)[][];
  /** Output shape, likewise. */
  outputShape: (number | null)[] | (number | null)[][];
}

const ORIGINAL_CALL = Symbol('finetune-pipeline.batchNormCall');

interface PatchableLayer {
  call: (inputs: unknown, kwargs: Record<string, unknown>) => unknown;
  [ORIGINAL_CALL]?: { own: boolean; call: PatchableLayer['call'] };
}

function isBatchNorm(layer: Layer): boolean {
  return layer.getClassName() === 'BatchNormalization';
}

function sublayers(layer: Layer): Layer[] {
  const inner = (layer as unknown as { layers?: Layer[] }).layers;
  return Array.isArray(inner) ? inner : [];
}

/** Every layer of the model, nested models' layers included (depth first). */
export function allLayers(model: LayersModel): Layer[] {
  const out: Layer[] = [];
  const visit = (layer: Layer) => {
    out.push(layer);
    sublayers(layer).forEach(visit);
  };
  model.layers.forEach(visit);
  return out;
}

/**
 * Holds a BatchNormalization layer in inference mode (`on`) or returns it to normal behaviour.
 * Patches the instance, not the class, so other models are unaffected.
 */
export function setBatchNormInference(layer: Layer, on: boolean): void {
  const target = layer as unknown as PatchableLayer;
  const saved = target[ORIGINAL_CALL];
  if (on && !saved) {
    const own = Object.prototype.hasOwnProperty.call(target, 'call');
    const call = target.call;
    target[ORIGINAL_CALL] = { own, call };
    target.call = function (this: unknown, inputs, kwargs) {
      return call.call(this, inputs, { ...(kwargs ?? {}), training: false });
    };
  } else if (!on && saved) {
    if (saved.own) target.call = saved.call;
    else delete (target as Partial<PatchableLayer>).call;
    delete target[ORIGINAL_CALL];
  }
}

/** Whether `setBatchNormInference(layer, true)` is in effect. */
export function isBatchNormInference(layer: Layer): boolean {
  return (layer as unknown as PatchableLayer)[ORIGINAL_CALL] !== undefined;
}

/** The fields of tfjs-layers' BatchNormalization / LayerNormalization that `supplyNormalizationConstants` reads and sets. */
interface NormalizationParts {
  axis: number | number[];
  scale: boolean;
  center: boolean;
  gamma: { read(): unknown } | null;
  beta: { read(): unknown } | null;
  movingMean?: { shape: number[] } | null;
  built: boolean;
}

/**
 * Gives every BatchNormalization layer built without `scale` (Keras' InceptionV3 uses
 * `scale=False`) or `center`, and every LayerNormalization without `scale`, a constant gamma
 * of 1 / beta of 0 (the same function) until the returned function is called. TF.js cannot
 * differentiate these layers as they are: BatchNormalization in training mode calls `read()`
 * on the missing weight, and in inference mode (like LayerNormalization) passes no scale to
 * the FusedBatchNorm kernel, whose registered gradient saves its `scale` input all the same,
 * so under `tf.grad` the engine clones `undefined` ("Cannot read properties of undefined
 * (reading 'dtype')" in the backend's Identity kernel). Every op of a training step runs on
 * the tape, so one such layer anywhere in the model, frozen or not, breaks training. The
 * stand-ins make a new tensor per call inside the layer's `tidy`, so nothing outlives a step;
 * they are not weights (nothing trains or saves them). Throws `layer_not_differentiable`,
 * naming the layer, when a stand-in's shape cannot be known (a normalized axis of unknown size).
 */
export function supplyNormalizationConstants(tf: Tf, model: LayersModel): () => void {
  const restores: (() => void)[] = [];
  const restoreAll = () => restores.forEach((restore) => restore());
  try {
    for (const layer of allLayers(model)) {
      const className = layer.getClassName();
      if (className !== 'BatchNormalization' && className !== 'LayerNormalization') continue;
      const parts = layer as unknown as NormalizationParts;
      const needsScale = !parts.scale;
      const needsCenter = !parts.center && className === 'BatchNormalization'; // LayerNormalization's missing offset is harmless
      if (!parts.built || (!needsScale && !needsCenter)) continue; // not built: it has never run, and cannot run in a step either
      const shape = normalizedShape(layer, parts);
      const saved = { scale: parts.scale, center: parts.center, gamma: parts.gamma, beta: parts.beta };
      restores.push(() => Object.assign(parts, saved));
      // The flags are set too: the broadcasting (not channels-last) paths test them instead of the weights.
      if (needsScale) Object.assign(parts, { scale: true, gamma: { read: () => tf.ones(shape) } });
      if (needsCenter) Object.assign(parts, { center: true, beta: { read: () => tf.zeros(shape) } });
    }
  } catch (error) {
    restoreAll();
    throw error;
  }
  return restoreAll;
}

/** The shape of a normalization layer's gamma/beta, had it been built with them. */
function normalizedShape(layer: Layer, parts: NormalizationParts): number[] {
  if (parts.movingMean) return [...parts.movingMean.shape];
  const input = layer.inboundNodes[0]?.inputShapes;
  const inputShape = (Array.isArray(input?.[0]) ? input[0] : input) as (number | null)[] | undefined;
  const axes = (Array.isArray(parts.axis) ? parts.axis : [parts.axis]).map((a) => (a < 0 && inputShape ? a + inputShape.length : a));
  const shape = axes.map((a) => inputShape?.[a] ?? null);
  if (!inputShape || shape.some((d) => d === null)) {
    throw new StageError(
      'layer_not_differentiable',
      `cannot train through layer "${layer.name}" (${layer.getClassName()} without scale over an axis of unknown size): TF.js has no gradient for it; give the model a fixed input shape or cut below this layer`,
      { layer: layer.name, className: layer.getClassName() },
    );
  }
  return shape as number[];
}

/** The BN layers held in inference mode, for model.json's userDefinedMetadata. */
export function captureFreezeState(model: LayersModel): FreezeState {
  return { batchNormInference: allLayers(model).filter((l) => isBatchNorm(l) && isBatchNormInference(l)).map((l) => l.name) };
}

/**
 * Re-applies a recorded state after loading: BN layers listed in `state`, and any BN layer whose
 * config says `trainable: false` (Keras semantics), are held in inference mode. Returns the
 * names of the layers now in inference mode.
 */
export function applyFreezeState(model: LayersModel, state?: FreezeState | null): string[] {
  const listed = new Set(state?.batchNormInference ?? []);
  const held: string[] = [];
  for (const layer of allLayers(model)) {
    if (!isBatchNorm(layer)) continue;
    const on = listed.has(layer.name) || !layer.trainable;
    setBatchNormInference(layer, on);
    if (on) held.push(layer.name);
  }
  return held;
}

/** Reads our freeze state from a model's userDefinedMetadata; null when absent or malformed. */
export function readFreezeState(metadata: unknown): FreezeState | null {
  const entry = (metadata as Record<string, unknown> | null | undefined)?.[FREEZE_METADATA_KEY] as Partial<FreezeState> | undefined;
  const names = entry?.batchNormInference;
  return Array.isArray(names) && names.every((n) => typeof n === 'string') ? { batchNormInference: names } : null;
}

function setTrainable(layer: Layer, trainable: boolean, keepBatchNormInference: boolean): void {
  layer.trainable = trainable;
  // Container.trainable only flips its weights; set each inner layer too so that their own
  // flags (and configs, when saved) agree and inner BN layers are found.
  for (const inner of sublayers(layer)) setTrainable(inner, trainable, keepBatchNormInference);
  if (isBatchNorm(layer)) setBatchNormInference(layer, !trainable || keepBatchNormInference);
}

/** Options of `freezeLayers`. */
export interface FreezeOptions {
  /**
   * Last layer to freeze: a layer name (frozen inclusive), a count `n` meaning the first `n`
   * layers like Keras' `model.layers[:n]` (negative counts from the end, like Python), or the
   * string `"layers[:n]"`. Default: the whole model.
   */
  until?: string | number;
}

/**
 * Freezes the first layers of `model.layers` and makes the rest trainable, so the result depends
 * only on the options, not on earlier calls. Frozen BatchNormalization layers run in inference
 * mode. Recompile the model afterwards.
 */
export function freezeLayers(model: LayersModel, options: FreezeOptions = {}): FreezeResult {
  const layers = model.layers;
  const count = options.until === undefined ? layers.length : frozenCount(model, options.until);
  layers.forEach((layer, i) => setTrainable(layer, i >= count, false));
  return resultOf(model);
}

function frozenCount(model: LayersModel, until: string | number): number {
  const layers = model.layers;
  const slice = typeof until === 'string' ? /^layers\[:(-?\d+)\]$/.exec(until.trim()) : null;
  if (typeof until === 'number' || slice) {
    const n = typeof until === 'number' ? until : Number(slice![1]);
    const count = n < 0 ? layers.length + n : n;
    if (!Number.isInteger(n) || count < 0 || count > layers.length) {
      throw new StageError('layer_index_out_of_range', `cannot freeze layers[:${n}]: model "${model.name}" has ${layers.length} layers`, { until, layers: layers.length });
    }
    return count;
  }
  return layerIndex(model, until) + 1;
}

/** Options of `unfreezeLayers`. */
export interface UnfreezeOptions {
  /** First layer to make trainable; it and every later layer are unfrozen. */
  from?: string;
  /**
   * Unfreeze the top `blocks` frozen blocks and everything above them. A layer's block key is
   * its name up to the end of the first `_`- or `/`-separated segment containing a digit
   * (`block_16_expand_BN` → `block_16`, `conv5_block3_out` → `conv5`, `block6a_se` →
   * `block6a`); a name without one joins the block of the layer before it (`out_relu`). A block
   * is a run of consecutive layers with one key; only blocks holding a frozen layer with
   * weights count. Fewer frozen blocks than asked: all are unfrozen.
   */
  blocks?: number;
  /**
   * Keep BatchNormalization layers that become trainable in inference mode (gamma/beta train,
   * statistics stay), as the Keras fine-tuning guide advises for small datasets. Default false.
   */
  keepBatchNormInference?: boolean;
}

/**
 * Makes the top of the model trainable (from a layer, or the top N blocks, default everything);
 * layers below stay as they are. Recompile the model afterwards.
 */
export function unfreezeLayers(model: LayersModel, options: UnfreezeOptions = {}): FreezeResult {
  if (options.from !== undefined && options.blocks !== undefined) {
    throw new StageError('unfreeze_conflicting_options', 'give either "from" or "blocks", not both', { from: options.from, blocks: options.blocks });
  }
  const start = unfreezeStart(model, options);
  model.layers.forEach((layer, i) => {
    if (i >= start) setTrainable(layer, true, options.keepBatchNormInference ?? false);
  });
  return resultOf(model);
}

/** Index in `model.layers` of the first layer `unfreezeLayers(model, options)` makes trainable. */
export function unfreezeStart(model: LayersModel, options: Pick<UnfreezeOptions, 'from' | 'blocks'>): number {
  if (options.from !== undefined) return layerIndex(model, options.from);
  if (options.blocks !== undefined) return topBlocksStart(model, options.blocks);
  return 0;
}

/** The block key of a layer name (see `UnfreezeOptions.blocks`), or null when it has none. */
export function blockKey(name: string): string | null {
  const match = /^(?:[^_/]*[_/])*?[^_/]*\d[^_/]*/.exec(name);
  return match ? match[0] : null;
}

function topBlocksStart(model: LayersModel, blocks: number): number {
  if (!Number.isInteger(blocks) || blocks < 1) {
    throw new StageError('unfreeze_bad_blocks', `blocks must be a positive integer, got ${blocks}`, { blocks });
  }
  const runs: { key: string | null; start: number; frozenWithWeights: boolean }[] = [];
  model.layers.forEach((layer, i) => {
    const key = blockKey(layer.name) ?? runs.at(-1)?.key ?? null;
    if (runs.length === 0 || runs.at(-1)!.key !== key) runs.push({ key, start: i, frozenWithWeights: false });
    if (!layer.trainable && layer.weights.length > 0) runs.at(-1)!.frozenWithWeights = true;
  });
  const frozen = runs.filter((r) => r.frozenWithWeights);
  if (frozen.length === 0) return model.layers.length;
  return frozen[Math.max(0, frozen.length - blocks)].start;
}

function resultOf(model: LayersModel): FreezeResult {
  return {
    frozen: model.layers.filter((l) => !l.trainable).map((l) => l.name),
    trainable: model.layers.filter((l) => l.trainable).map((l) => l.name),
  };
}

/** Index of a top-level layer by name; a `layer_not_found` error suggests close names. */
export function layerIndex(model: LayersModel, name: string): number {
  const index = model.layers.findIndex((l) => l.name === name);
  if (index >= 0) return index;
  const names = model.layers.map((l) => l.name);
  const suggestions = closestNames(name, names);
  const hint = suggestions.length > 0 ? `did you mean ${suggestions.map((s) => `"${s}"`).join(', ')}?` : `its ${names.length} layers run from "${names[0]}" to "${names.at(-1)}"`;
  throw new StageError('layer_not_found', `model "${model.name}" has no layer "${name}"; ${hint}`, { layer: name, model: model.name, suggestions });
}

/** Up to five names closest to `wanted`: containing it, or within a small edit distance. */
export function closestNames(wanted: string, names: string[]): string[] {
  const query = wanted.toLowerCase();
  const limit = Math.max(2, Math.floor(query.length / 3));
  return names
    .map((name) => {
      const lower = name.toLowerCase();
      const distance = editDistance(query, lower);
      const contains = lower.includes(query) || query.includes(lower);
      return { name, score: contains ? Math.min(distance, 1) : distance };
    })
    .filter((c) => c.score <= limit)
    .sort((a, b) => a.score - b.score || a.name.localeCompare(b.name))
    .slice(0, 5)
    .map((c) => c.name);
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * A new functional model from the model's inputs to the output of `layerName`. The layers (and
 * so the weights and frozen state) are shared with the original, as in Keras.
 */
export async function cutModel(model: LayersModel, layerName: string): Promise<LayersModel> {
  const tfl = await useLayers();
  const layer = model.layers[layerIndex(model, layerName)];
  let output: SymbolicTensor | SymbolicTensor[];
  try {
    output = layer.output;
  } catch (error) {
    // A layer used several times (shared) has no single output to cut at.
    throw new StageError('layer_ambiguous_output', `cannot cut at "${layerName}": ${(error as Error).message}`, { layer: layerName }, { cause: error });
  }
  return tfl.model({ inputs: model.inputs, outputs: output, name: `${model.name}_to_${layerName}`.replace(/[^A-Za-z0-9_.-]/g, '_') });
}

/** Options of `adaptInput`. */
export interface AdaptInputOptions {
  /** The new input shape without the batch: `[height, width, channels]`. */
  inputShape: number[];
}

type LayerJson = { name: string; class_name: string; config: Record<string, unknown>; inbound_nodes: unknown[][][] };
type ModelJson = { class_name: string; config: { name: string; layers: LayerJson[]; input_layers: [string, number, number][] } };

/**
 * Rebuilds an image model for another input: `[h, w, 1]` onto an RGB base by a weightless
 * channel-repeat layer (Concatenate of the input with itself) in front, and/or another spatial
 * size where every layer allows it (fully convolutional up to the end). Weights are copied, the
 * original is untouched; frozen state carries over. Throws `input_adapt_impossible` saying why.
 */
export async function adaptInput(model: LayersModel, options: AdaptInputOptions): Promise<LayersModel> {
  const tfl = await useLayers();
  const impossible = (why: string, cause?: unknown) =>
    new StageError('input_adapt_impossible', `cannot adapt model "${model.name}" to input [${options.inputShape.join(', ')}]: ${why}`, { inputShape: options.inputShape }, cause ? { cause } : undefined);
  const wanted = options.inputShape;
  if (wanted.length !== 3 || !wanted.every((d) => Number.isInteger(d) && d > 0)) throw impossible('the shape must be [height, width, channels] of positive integers');
  if (model.inputs.length !== 1) throw impossible(`it has ${model.inputs.length} inputs`);
  const current = model.inputs[0].shape;
  if (current.length !== 4) throw impossible(`its input [${current.slice(1).join(', ')}] is not an image (rank 3)`);
  const channels = current[3] as number;
  if (wanted[2] !== channels && wanted[2] !== 1) throw impossible(`only 1 channel can be mapped onto ${channels} (by repeating it), not ${wanted[2]}`);
  if (current[1] === wanted[0] && current[2] === wanted[1] && channels === wanted[2]) return model;

  // Work on the functional form's JSON: the deserializer rebuilds any graph (branches, Add,
  // Concatenate, nested models) and re-infers every shape from the new input.
  const functional = model.getClassName() === 'Sequential' ? tfl.model({ inputs: model.inputs, outputs: model.outputs, name: model.name }) : model;
  const json = JSON.parse(JSON.stringify(functional.toJSON(undefined, false))) as ModelJson;
  const inputName = json.config.input_layers[0][0];
  const layers = json.config.layers;
  for (const layer of layers) {
    if (layer.class_name === 'InputLayer') layer.config.batch_input_shape = [null, ...wanted];
    else delete layer.config.batch_input_shape; // only InputLayers may fix a shape in a functional model
  }
  let adapterName: string | null = null;
  if (wanted[2] !== channels) {
    adapterName = uniqueName(`${inputName}_repeat_channels`, new Set(layers.map((l) => l.name)));
    for (const layer of layers) renameInbound(layer, inputName, adapterName);
    const node = Array.from({ length: channels }, () => [inputName, 0, 0, {}]);
    const index = layers.findIndex((l) => l.name === inputName);
    layers.splice(index + 1, 0, { name: adapterName, class_name: 'Concatenate', config: { name: adapterName, axis: -1, trainable: false, dtype: 'float32' }, inbound_nodes: [node] });
  }
  let rebuilt: LayersModel;
  try {
    rebuilt = await tfl.models.modelFromJSON({ modelTopology: json as never });
  } catch (error) {
    throw impossible(`a layer does not accept it (${(error as Error).message.split('\n')[0]})`, error);
  }
  for (const layer of rebuilt.layers) {
    if (layer.name === adapterName) continue;
    const source = functional.getLayer(layer.name);
    const weights = source.getWeights();
    const mismatch = layer.weights.findIndex((w, i) => weights[i] === undefined || w.shape.join() !== weights[i].shape.join());
    if (mismatch >= 0 || layer.weights.length !== weights.length) {
      rebuilt.dispose();
      const detail = mismatch >= 0 ? `its weight ${layer.weights[mismatch].name} would need shape [${layer.weights[mismatch].shape.join(', ')}] instead of [${weights[mismatch]?.shape.join(', ')}]` : 'its weights differ';
      throw impossible(`layer "${layer.name}" depends on the input size (${detail}); the model is not fully convolutional up to there`);
    }
    layer.setWeights(weights);
  }
  applyFreezeState(rebuilt, captureFreezeState(model));
  const metadata = model.getUserDefinedMetadata();
  if (metadata) rebuilt.setUserDefinedMetadata(metadata);
  return rebuilt;
}

function renameInbound(layer: LayerJson, from: string, to: string): void {
  for (const node of layer.inbound_nodes) {
    for (const ref of node) if (Array.isArray(ref) && ref[0] === from) ref[0] = to;
  }
}

function uniqueName(base: string, taken: Set<string>): string {
  let name = base;
  for (let i = 1; taken.has(name); i++) name = `${base}_${i}`;
  return name;
}

/** Counts, shapes and frozen layers of a model, small enough for an artifact's JSON. */
export function summarizeModel(model: LayersModel): ModelSummary {
  const count = (weights: { shape: readonly (number | null)[] }[]) => weights.reduce((sum, w) => sum + w.shape.reduce<number>((a, b) => a * (b ?? 1), 1), 0);
  const trainableParams = count(model.trainableWeights);
  const nonTrainableParams = count(model.nonTrainableWeights);
  const shapes = (tensors: SymbolicTensor[]) => (tensors.length === 1 ? [...tensors[0].shape] : tensors.map((t) => [...t.shape]));
  return {
    name: model.name,
    layers: model.layers.length,
    params: trainableParams + nonTrainableParams,
    trainableParams,
    nonTrainableParams,
    frozenLayers: model.layers.filter((l) => !l.trainable).length,
    inputShape: shapes(model.inputs),
    outputShape: shapes(model.outputs),
  };
}
