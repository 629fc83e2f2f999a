/**
 * The public shapes of the TF.js → ONNX converter (`convert.ts` re-exports them). They live in
 * their own file so the per-family converters can use them without importing the driver.
 */
import type { PixelEncoding } from './convert-pixels.js';
import type { OnnxGraph } from './graph.js';

/** A TF.js shape: `null` for the batch (and any other unknown) dimension. */
export type Shape = (number | null)[];

/** Options of `convertLayersModel`. */
export interface ConvertOptions {
  /** Layer names whose OUTPUT tensors become the graph inputs (a cut inside the model). Default: the model's own inputs. */
  from?: string[];
  /** Layer names whose outputs become graph outputs. Default: the model outputs. */
  to?: string[];
  /**
   * 'initializers' (default): weights baked in. 'inputs': each weight is a graph input fed per
   * run, holding the TF.js variable's values in TF.js layout (e.g. conv kernel HWIO; the graph
   * transposes inside), so gradients computed in the graph are w.r.t. the TF.js layout.
   */
  weights?: 'initializers' | 'inputs';
  /** Graph name. Default: the model's name. */
  name?: string;
  /**
   * Feed the model's image input as uint8 NHWC pixels, normalized (and optionally mirrored)
   * inside the graph (see convert-pixels.ts). Only for a span from the model's one input.
   */
  pixels?: PixelEncoding;
}

/** A value of the ONNX graph, as the converter tracks it. */
export interface ConvertedTensor {
  /** ONNX value name. */
  name: string;
  /** TF.js shape, batch null. */
  shape: Shape;
  /** Layout inside the graph: rank-4 tensors are NCHW, all others keep the TF.js order. */
  layout: 'nchw' | 'flat';
}

/** The ONNX values of one converted layer. */
export interface LayerTensors {
  /** The layer's output. */
  output: ConvertedTensor;
  /** Pre-activation value when the layer has a fused activation (Conv2D/Dense/DepthwiseConv2D/SeparableConv2D activation != linear); else undefined. */
  preActivation?: ConvertedTensor;
  /** The layer's input value(s); empty for a layer whose output is a graph input (`from`, InputLayer). */
  inputs: ConvertedTensor[];
}

/** A graph input or output as TF.js sees it. */
export interface GraphPort {
  /** ONNX value name. */
  name: string;
  /** The layer whose output this is. */
  layer: string;
  /** NHWC (TF.js) shape, batch null: what the caller feeds or receives. */
  shape: Shape;
  /** Element type fed; absent = float32. `uint8` for a pixel input. */
  dtype?: 'uint8';
}

/** A weight fed as a graph input (`weights: 'inputs'`). */
export interface WeightInput {
  /** ONNX input name (the variable's name). */
  name: string;
  /** The layer that owns the variable. */
  layer: string;
  /** The tfjs-layers LayerVariable: `variable.read()` gives the tensor; `name`, `originalName`. */
  // `any`: tfjs-layers' public typings do not export LayerVariable.
  variable: any;
  /** TF.js shape of the variable (the fed layout). */
  shape: number[];
  /** Whether the variable is trainable (`variable.trainable`). */
  trainable: boolean;
}

/** What `convertLayersModel` returns. */
export interface ConvertedGraph {
  /** The graph; `graph.toBytes()` is the ONNX model. */
  graph: OnnxGraph;
  /** Graph inputs as TF.js sees them: the ONNX input name and the NHWC shape the caller feeds. */
  inputs: GraphPort[];
  /** Graph outputs, NHWC. */
  outputs: GraphPort[];
  /** Per layer name (layers inside the converted span, and the `from` layers): its ONNX tensors. */
  tensors: Map<string, LayerTensors>;
  /**
   * With weights:'inputs': graph inputs for weights, in `model.weights` order of the converted
   * layers, each with its LayerVariable, TF.js shape and trainability. Empty otherwise.
   */
  weightInputs: WeightInput[];
  /**
   * With `pixels`: the boolean graph input that mirrors the batch (null without `mirror`).
   * Absent for a float input.
   */
  mirrorInput?: string | null;
}

/** A layer the converter cannot express in ONNX (or not the way this model uses it). */
export class UnsupportedLayerError extends Error {
  /** Stable code, as the project's other errors have. */
  readonly code = 'onnx_unsupported_layer';
  /** The layer's name. */
  readonly layer: string;
  /** Its TF.js class name (`Conv3D`, `LSTM`, …). */
  readonly className: string;
  /** Why it cannot be converted, in a few words. */
  readonly reason: string;
  constructor(layer: string, className: string, reason: string) {
    super(`cannot convert layer '${layer}' (${className}) to ONNX: ${reason}`);
    this.name = 'UnsupportedLayerError';
    this.layer = layer;
    this.className = className;
    this.reason = reason;
  }
}

/** The names of an unsupported layer (`findUnsupportedLayer`). */
export interface UnsupportedLayer {
  layer: string;
  className: string;
  reason: string;
}
