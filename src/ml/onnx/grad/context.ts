/**
 * What the per-layer emitters of the training graph share: the value type, the context an
 * emitter writes into, the emitter interface, and small ONNX helpers (layouts, reductions).
 *
 * Each rank-4 value carries its layout: `nhwc` (Keras order: 1x1 convs are plain MatMuls,
 * per-channel parameters broadcast without reshapes) or `nchw` (what ONNX Conv and pooling
 * need); an emitter converts its inputs with `inLayout` (one Transpose per value at most) and
 * returns each input's gradient in that input's layout. Rank-2 values are `flat`. Weights arrive
 * as graph inputs in TF.js layout and every weight gradient leaves in TF.js layout.
 */
import type { LayersModel, LayerVariable } from '@tensorflow/tfjs-layers';
import type { OnnxGraph } from '../graph.js';
import { UnsupportedLayerError as ConverterUnsupportedLayerError } from '../types.js';

/** A layer of a tfjs-layers model. */
export type Layer = LayersModel['layers'][number];

/** A tensor of the graph: its name and its per-example shape in the graph's layout. */
export interface Value {
  /** ONNX tensor name. */
  name: string;
  /** Shape without the batch: `[C, H, W]` for `nchw`, `[H, W, C]` for `nhwc`, `[F]` for `flat`. */
  shape: number[];
  layout: 'nchw' | 'nhwc' | 'flat';
}

/**
 * Thrown for a layer (or a layer configuration) whose backward pass is not implemented. A
 * subclass of the converter's error (same `code`, `layer`, `className`, `reason`), so a caller
 * catching `UnsupportedLayerError` from `convert.ts` catches both.
 */
export class UnsupportedLayerError extends ConverterUnsupportedLayerError {
  constructor(layer: string, className: string, reason: string) {
    super(layer, className, reason);
    this.message = `layer "${layer}" (${className}) cannot be trained through onnxruntime: ${reason}`;
  }
}

/** What an emitter writes into while the forward and backward passes are built. */
export interface EmitContext {
  g: OnnxGraph;
  /** `train`: dropout masks are graph inputs; `evaluate`: dropout is the identity. */
  mode: 'train' | 'evaluate';
  /** The graph input holding a weight (TF.js layout). */
  weight(variable: LayerVariable): string;
  /** Whether a gradient is wanted for `variable` (trainable layer and weight). */
  wantsGradient(variable: LayerVariable): boolean;
  /** Records the gradient of `variable` (a tensor in TF.js layout, `variable.shape`). */
  addGradient(variable: LayerVariable, tensor: string): void;
  /** A float mask input fed per step (dropout), NHWC `[batch, ...shape]`; returns its name. */
  maskInput(layer: Layer, nhwcShape: number[]): string;
  /** Throws UnsupportedLayerError for `layer`. */
  refuse(layer: Layer, reason: string): never;
}

/** What a forward emission leaves for the backward one. */
export interface Forward {
  output: Value;
  /** Named intermediate tensors (pre-activation, masks, transposed weights). */
  saved?: Record<string, string>;
}

/** Everything the backward emission of one layer gets. */
export interface BackwardStep {
  layer: Layer;
  inputs: Value[];
  output: Value;
  saved: Record<string, string>;
  /** Gradient of the loss with respect to the layer's output. */
  dOutput: string;
  /** Per input: whether its gradient is needed (false for inputs no trainable weight is below). */
  needInput: boolean[];
}

/** Forward and backward emission of one layer class. */
export interface LayerEmitter {
  /** Emits the forward pass; may refuse a configuration it cannot differentiate. */
  forward(ctx: EmitContext, layer: Layer, inputs: Value[]): Forward;
  /** Emits the backward pass: the gradient of each input (null where not needed). */
  backward(ctx: EmitContext, step: BackwardStep): (string | null)[];
}

/** Keras config fields the emitters read, loosely typed (tfjs keeps them on the instance). */
export type LayerFields = Record<string, unknown>;
export const fields = (layer: Layer): LayerFields => layer as unknown as LayerFields;

/** Keras shape `[null, ...]` of a layer's first output, without the batch. */
export function nhwcShapeOf(shape: (number | null)[]): number[] {
  const dims = shape.slice(1);
  if (dims.some((d) => d === null)) throw new Error(`dynamic shape [${shape.join(', ')}]`);
  return dims as number[];
}

/** A rank-4 layout. */
export type SpatialLayout = 'nchw' | 'nhwc';

/** A value of Keras per-example shape `keras` (`[H, W, C]` or `[F]`) in `layout` (rank 4 only). */
export function valueOf(name: string, keras: number[], layout: SpatialLayout = 'nhwc'): Value {
  if (keras.length !== 3) return { name, shape: keras, layout: 'flat' };
  return layout === 'nhwc' ? { name, shape: keras, layout } : { name, shape: [keras[2], keras[0], keras[1]], layout };
}

/** The Keras per-example shape of a value. */
export function kerasShapeOf(value: Value): number[] {
  return value.layout === 'nchw' ? [value.shape[1], value.shape[2], value.shape[0]] : value.shape;
}

/** Height and width of a rank-4 value. */
export function spatialShape(value: Value): [number, number] {
  const [h, w] = kerasShapeOf(value);
  return [h, w];
}

/** Channels of a value (features of a flat one). */
export function channelsOf(value: Value): number {
  return kerasShapeOf(value).at(-1)!;
}

/** Graph axes of height and width. */
export function spatialAxes(value: Value): [number, number] {
  return value.layout === 'nchw' ? [2, 3] : [1, 2];
}

/** Maps a Keras channels-last axis (negative counts from the end) onto the value's layout. */
export function graphAxis(value: Value, kerasAxis: number): number {
  const rank = value.shape.length + 1;
  const axis = kerasAxis < 0 ? kerasAxis + rank : kerasAxis;
  return value.layout === 'nchw' ? [0, 2, 3, 1][axis] : axis;
}

const PERM = { 'nchw>nhwc': [0, 2, 3, 1], 'nhwc>nchw': [0, 3, 1, 2] } as const;
const converted = new WeakMap<OnnxGraph, Map<string, string>>();

/** A rank-4 tensor moved from one layout to another (a no-op when they agree). */
export function convertLayout(g: OnnxGraph, tensor: string, from: Value['layout'], to: SpatialLayout, hint = `to_${to}`): string {
  if (from === to || from === 'flat') return tensor;
  return g.op('Transpose', [tensor], { perm: [...(PERM as Record<string, readonly number[]>)[`${from}>${to}`]] }, hint);
}

/**
 * The value in `layout`, transposed at most once per graph (forward and backward ask for the
 * same tensor). Flat values are returned as they are.
 */
export function inLayout(g: OnnxGraph, value: Value, layout: SpatialLayout): Value {
  if (value.layout === 'flat' || value.layout === layout) return value;
  let cache = converted.get(g);
  if (!cache) converted.set(g, (cache = new Map()));
  const key = `${value.name}>${layout}`;
  let name = cache.get(key);
  if (!name) cache.set(key, (name = convertLayout(g, value.name, value.layout, layout, `${value.name}/${layout}`)));
  return valueOf(name, kerasShapeOf(value), layout);
}

/** Channels-last (Keras order) tensor of a value. */
export function toKeras(g: OnnxGraph, value: Value): string {
  return inLayout(g, value, 'nhwc').name;
}

/** Sum over `axes` (ReduceSum takes its axes as an input from opset 13). */
export function reduceSum(g: OnnxGraph, tensor: string, axes: number[], keepdims = false, hint = 'sum'): string {
  return g.op('ReduceSum', [tensor, g.int64s(axes)], { keepdims: keepdims ? 1 : 0 }, hint);
}

/** Axes of a value's gradient to sum for a per-channel parameter (all but the channel). */
export function nonChannelAxes(value: Value): number[] {
  if (value.layout === 'flat') return [0];
  return value.layout === 'nchw' ? [0, 2, 3] : [0, 1, 2];
}

/** A per-channel vector `[C]` shaped to broadcast against a value (`[C, 1, 1]` in NCHW). */
export function channelBroadcast(g: OnnxGraph, vector: string, value: Value, hint = 'per_channel'): string {
  return value.layout === 'nchw' ? g.op('Reshape', [vector, g.int64s([-1, 1, 1])], {}, hint) : vector;
}

/** Accumulates gradients flowing into one tensor from several consumers. */
export function sumGradients(g: OnnxGraph, parts: string[], hint: string): string {
  return parts.reduce((a, b) => g.op('Add', [a, b], {}, hint));
}
