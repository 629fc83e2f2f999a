/**
 * What every per-family converter shares: the graph being built, how weights enter it
 * (constants or graph inputs), and the layout rule.
 *
 * Layout rule: graph inputs and outputs are NHWC like TF.js, but inside the graph every rank-4
 * value is NCHW, the layout ONNX's Conv and pooling ops take. A rank-4 value therefore moves
 * between layouts with one Transpose wherever an op needs the TF.js order (Flatten, Reshape,
 * Dense on an image); onnxruntime folds back-to-back transposes away.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { OnnxGraph } from './graph.js';
import type { ConvertedTensor, Shape } from './types.js';

/** A tfjs-layers layer. */
export type Layer = LayersModel['layers'][number];

/** A tfjs-layers LayerVariable, as far as the converter needs it. */
export interface Variable {
  id: number;
  name: string;
  originalName: string;
  shape: number[];
  dtype: string;
  trainable: boolean;
  read(): { dataSync(): ArrayLike<number> };
}

/** One layer at its (single) position in the converted model. */
export interface LayerInfo {
  layer: Layer;
  /** `layer.getClassName()`. */
  className: string;
  /** `layer.getConfig()`: hyperparameters, camelCase, activations by name. */
  config: Record<string, unknown>;
  /** TF.js shapes of its inputs at this node. */
  inputShapes: Shape[];
  /** TF.js shape of its output at this node. */
  outputShape: Shape;
}

/** The values a layer converter produced. */
export interface ConvertedLayer {
  output: ConvertedTensor;
  /** The value before the fused activation, when the layer has one. */
  preActivation?: ConvertedTensor;
}

/** Converts one layer class. */
export interface LayerConverter {
  /** Null when the layer can be converted as configured; otherwise why not (a few words). */
  check(info: LayerInfo): string | null;
  /** Adds the layer's nodes; `inputs` follow the layout rule. */
  convert(ctx: ConvertContext, info: LayerInfo, inputs: ConvertedTensor[]): ConvertedLayer;
}

/** How a weight is rearranged from its TF.js layout into the one an ONNX op takes. */
export interface WeightTransform {
  /** Transpose, as ONNX's `perm`. */
  perm?: number[];
  /** Then reshape to these dims. */
  shape?: number[];
}

/** NHWC → NCHW. */
export const TO_NCHW = [0, 3, 1, 2];
/** NCHW → NHWC. */
export const TO_NHWC = [0, 2, 3, 1];

/** Internal axis of TF.js axis `axis` (negative counts from the end) of a value of `rank`. */
export function internalAxis(axis: number, rank: number): number {
  const positive = axis < 0 ? axis + rank : axis;
  return rank === 4 ? TO_NCHW.indexOf(positive) : positive;
}

/** `data` (row-major, dims `shape`) transposed by `perm`. */
export function transposeData(data: ArrayLike<number>, shape: number[], perm: number[]): Float32Array {
  const rank = shape.length;
  const outShape = perm.map((p) => shape[p]);
  const inStrides = new Array<number>(rank);
  for (let i = rank - 1, s = 1; i >= 0; i--) {
    inStrides[i] = s;
    s *= shape[i];
  }
  // Stride in the input of each output axis.
  const strides = perm.map((p) => inStrides[p]);
  const out = new Float32Array(data.length);
  const index = new Array<number>(rank).fill(0);
  let source = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = data[source];
    for (let axis = rank - 1; axis >= 0; axis--) {
      index[axis]++;
      source += strides[axis];
      if (index[axis] < outShape[axis]) break;
      source -= strides[axis] * outShape[axis];
      index[axis] = 0;
    }
  }
  return out;
}

export class ConvertContext {
  /**
   * @param graph the graph being built
   * @param weightInputs with weights:'inputs', the graph input name of each variable (by id); null to bake weights in
   */
  constructor(
    readonly graph: OnnxGraph,
    private readonly weightInputs: Map<number, string> | null,
  ) {}

  /** True when weights are graph inputs (so weight transforms must be graph ops). */
  get weightsAreInputs(): boolean {
    return this.weightInputs !== null;
  }

  /**
   * The ONNX value of `variable` rearranged by `transform`: a constant computed here, or (with
   * weights as inputs) the graph input followed by Transpose/Reshape nodes.
   */
  weight(owner: string, variable: Variable, role: string, transform: WeightTransform = {}): string {
    const hint = `${owner}/${role}`;
    if (this.weightInputs) {
      let name = this.weightInputs.get(variable.id);
      if (name === undefined) throw new Error(`internal: weight ${variable.name} of ${owner} is not a graph input`);
      if (transform.perm) name = this.graph.op('Transpose', [name], { perm: transform.perm }, `${hint}/transposed`);
      if (transform.shape) name = this.graph.op('Reshape', [name, this.graph.int64s(transform.shape)], {}, `${hint}/reshaped`);
      return name;
    }
    return this.constant(hint, this.values(variable), variable.shape, transform);
  }

  /** A constant from `data` (dims `shape`) rearranged by `transform`. */
  constant(hint: string, data: ArrayLike<number>, shape: number[], transform: WeightTransform = {}): string {
    let values: Float32Array = Float32Array.from(data);
    let dims = shape;
    if (transform.perm) {
      values = transposeData(values, shape, transform.perm);
      dims = transform.perm.map((p) => shape[p]);
    }
    if (transform.shape) dims = transform.shape;
    return this.graph.initializer(hint, values, dims);
  }

  /** The current values of a variable (float32). */
  values(variable: Variable): Float32Array {
    if (variable.dtype !== 'float32') throw new Error(`internal: weight ${variable.name} is ${variable.dtype}, not float32`);
    return Float32Array.from(variable.read().dataSync());
  }

  /** A value with `shape` in the internal layout (NCHW when rank 4). */
  tensor(name: string, shape: Shape): ConvertedTensor {
    return { name, shape, layout: shape.length === 4 ? 'nchw' : 'flat' };
  }

  /** `t` in TF.js order (rank 4: NHWC); adds a Transpose when needed. */
  toTfLayout(t: ConvertedTensor, hint: string): string {
    return t.layout === 'nchw' ? this.graph.op('Transpose', [t.name], { perm: TO_NHWC }, `${hint}/to_nhwc`) : t.name;
  }

  /** A value given in TF.js order, in the internal layout; adds a Transpose for rank 4. */
  fromTfLayout(name: string, shape: Shape, hint: string): ConvertedTensor {
    if (shape.length !== 4) return this.tensor(name, shape);
    return this.tensor(this.graph.op('Transpose', [name], { perm: TO_NCHW }, `${hint}/to_nchw`), shape);
  }

  /** A per-channel vector constant or value shaped to broadcast over `t`'s channel axis. */
  broadcastChannels(vector: string, t: ConvertedTensor, channels: number, hint: string): string {
    if (t.layout !== 'nchw') return vector;
    return this.graph.op('Reshape', [vector, this.graph.int64s([channels, 1, 1])], {}, `${hint}/per_channel`);
  }
}
