/**
 * What the per-layer emitters of the training graph share: the value type, the context an
 * emitter writes into, the emitter interface, and small ONNX helpers (layouts, reductions).
 *
 * Inside the graph every rank-4 activation is NCHW (`layout: 'nchw'`, shape `[C, H, W]`
 * without the batch); rank-2 activations are `flat` (`[F]`). Weights arrive as graph inputs in
 * TF.js layout and every weight gradient leaves in TF.js layout, so the caller never
 * transposes.
 */
import type { LayersModel, LayerVariable } from '@tensorflow/tfjs-layers';
import type { OnnxGraph } from '../graph.js';

/** A layer of a tfjs-layers model. */
export type Layer = LayersModel['layers'][number];

/** A tensor of the graph: its name and its per-example shape in the graph's layout. */
export interface Value {
  /** ONNX tensor name. */
  name: string;
  /** Shape without the batch: `[C, H, W]` for `nchw`, `[F]` for `flat`. */
  shape: number[];
  layout: 'nchw' | 'flat';
}

/** Thrown for a layer (or a layer configuration) whose backward pass is not implemented. */
export class UnsupportedLayerError extends Error {
  readonly code = 'onnx_unsupported_layer';
  constructor(
    /** Name of the layer. */
    readonly layer: string,
    /** Its tfjs class name. */
    readonly className: string,
    /** Why, in a few words (`"padding causal"`, `"BatchNormalization in training mode"`). */
    readonly reason: string,
  ) {
    super(`layer "${layer}" (${className}) cannot be trained through onnxruntime: ${reason}`);
    this.name = 'UnsupportedLayerError';
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

/** Our layout and shape for a Keras per-example shape (`[H, W, C]` becomes nchw `[C, H, W]`). */
export function valueShape(nhwc: number[]): { shape: number[]; layout: Value['layout'] } {
  if (nhwc.length === 3) return { shape: [nhwc[2], nhwc[0], nhwc[1]], layout: 'nchw' };
  return { shape: nhwc, layout: 'flat' };
}

/** The Keras per-example shape of a value (inverse of `valueShape`). */
export function kerasShapeOf(value: Value): number[] {
  return value.layout === 'nchw' ? [value.shape[1], value.shape[2], value.shape[0]] : value.shape;
}

/** Maps a Keras channels-last axis of a rank-4 (or rank-2) tensor onto our layout. */
export function graphAxis(value: Value, kerasAxis: number): number {
  const rank = value.shape.length + 1;
  const axis = kerasAxis < 0 ? kerasAxis + rank : kerasAxis;
  if (value.layout !== 'nchw') return axis;
  return [0, 2, 3, 1][axis];
}

/** NCHW → NHWC (a no-op for flat values). */
export function toNhwc(g: OnnxGraph, value: Value, hint = 'to_nhwc'): string {
  return value.layout === 'nchw' ? g.op('Transpose', [value.name], { perm: [0, 2, 3, 1] }, hint) : value.name;
}

/** NHWC → our layout for a tensor of Keras shape `nhwc`. */
export function fromNhwc(g: OnnxGraph, tensor: string, nhwc: number[], hint = 'to_nchw'): string {
  return nhwc.length === 3 ? g.op('Transpose', [tensor], { perm: [0, 3, 1, 2] }, hint) : tensor;
}

/** Sum over `axes` (ReduceSum takes its axes as an input from opset 13). */
export function reduceSum(g: OnnxGraph, tensor: string, axes: number[], keepdims = false, hint = 'sum'): string {
  return g.op('ReduceSum', [tensor, g.int64s(axes)], { keepdims: keepdims ? 1 : 0 }, hint);
}

/** Axes of a value's gradient to sum for a per-channel parameter (all but the channel). */
export function nonChannelAxes(value: Value): number[] {
  return value.layout === 'nchw' ? [0, 2, 3] : [0];
}

/** A per-channel vector `[C]` shaped to broadcast against a value (`[C, 1, 1]` in NCHW). */
export function channelBroadcast(g: OnnxGraph, vector: string, value: Value, hint = 'per_channel'): string {
  return value.layout === 'nchw' ? g.op('Reshape', [vector, g.int64s([-1, 1, 1])], {}, hint) : vector;
}

/** Accumulates gradients flowing into one tensor from several consumers. */
export function sumGradients(g: OnnxGraph, parts: string[], hint: string): string {
  return parts.reduce((a, b) => g.op('Add', [a, b], {}, hint));
}
