/**
 * A small builder for ONNX graphs: nodes with unique output names, constant initializers,
 * typed graph inputs/outputs, serialized to ModelProto bytes. Both the forward exporter
 * (`convert.ts`) and the training-graph generator build on it, so every graph we make is
 * written one way.
 */
import { AttributeType, DataType, ModelProto, type DataTypeName } from './proto.js';

/** Opset of every graph we write (ONNX 1.12; onnxruntime-node 1.30 runs it). */
export const OPSET = 17;
const IR_VERSION = 8;

/** An attribute value: number (int unless `float()`), number[] (ints), string, a tagged float, or a subgraph (`If` branches). */
export type AttributeValue = number | number[] | string | { float: number } | { floats: number[] } | { graph: OnnxGraph };

/** A dimension: a fixed size or a symbolic name (e.g. `batch`). */
export type Dim = number | string;

/** Typed array accepted as initializer data. */
export type TensorData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

interface ValueInfo {
  name: string;
  type: DataTypeName;
  dims: Dim[];
}

function dataTypeOf(data: TensorData): DataTypeName {
  if (data instanceof Float32Array) return 'FLOAT';
  if (data instanceof Float64Array) return 'DOUBLE';
  if (data instanceof Int32Array) return 'INT32';
  if (data instanceof BigInt64Array) return 'INT64';
  return 'UINT8';
}

/** Marks a number attribute as a float (plain numbers are written as ints). */
export const float = (value: number): AttributeValue => ({ float: value });
/** Marks a number[] attribute as floats. */
export const floats = (values: number[]): AttributeValue => ({ floats: values });

function attribute(name: string, value: AttributeValue) {
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}=${value} is not an integer: wrap it in float()`);
    return { name, type: AttributeType.INT, i: value };
  }
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ('graph' in value) return { name, type: AttributeType.GRAPH, g: value.graph.toGraphObject() };
  return { name, type: AttributeType.FLOATS, floats: value.floats };
}

export class OnnxGraph {
  private readonly nodes: object[] = [];
  private readonly initializers: object[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly used = new Set<string>();
  private readonly constants = new Map<string, string>();

  constructor(readonly name = 'graph') {}

  /** A name not used yet in this graph, derived from `hint`. */
  unique(hint: string): string {
    const base = hint.replace(/[^A-Za-z0-9_./:-]/g, '_') || 't';
    let name = base;
    for (let i = 1; this.used.has(name); i++) name = `${base}__${i}`;
    this.used.add(name);
    return name;
  }

  /**
   * Adds a node; returns its output names (`outputs` of them, named after `hint`). Pass an
   * empty string in `inputs` for an omitted optional input.
   */
  node(op: string, inputs: string[], attributes: Record<string, AttributeValue | undefined> = {}, options: { hint?: string; outputs?: number; domain?: string } = {}): string[] {
    const hint = options.hint ?? op;
    const outputs = Array.from({ length: options.outputs ?? 1 }, (_, i) => this.unique(i === 0 ? hint : `${hint}:${i}`));
    this.nodes.push({
      opType: op,
      input: inputs,
      output: outputs,
      name: this.unique(`${hint}/${op}`),
      ...(options.domain ? { domain: options.domain } : {}),
      attribute: Object.entries(attributes)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => attribute(k, v!)),
    });
    return outputs;
  }

  /** Adds a node with one output and returns its name. */
  op(op: string, inputs: string[], attributes: Record<string, AttributeValue | undefined> = {}, hint?: string): string {
    return this.node(op, inputs, attributes, { hint })[0];
  }

  /** A constant tensor stored in the model (weights, shapes, axes). */
  initializer(hint: string, data: TensorData, dims: number[]): string {
    const name = this.unique(hint);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    this.initializers.push({ name, dataType: DataType[dataTypeOf(data)], dims, rawData: bytes.slice() });
    return name;
  }

  /** A small int64 constant (shapes, axes, pads), deduplicated by value. */
  int64s(values: number[], hint = 'const'): string {
    const key = `i64:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.initializer(hint, BigInt64Array.from(values.map(BigInt)), [values.length]);
      this.constants.set(key, name);
    }
    return name;
  }

  /** A float32 scalar or vector constant, deduplicated by value. */
  floats(values: number[], dims: number[] = values.length === 1 ? [] : [values.length], hint = 'const'): string {
    const key = `f32:${dims.join('x')}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.initializer(hint, Float32Array.from(values), dims);
      this.constants.set(key, name);
    }
    return name;
  }

  /** Declares a graph input; returns its name (exactly `name`, which must be unused). */
  input(name: string, dims: Dim[], type: DataTypeName = 'FLOAT'): string {
    if (this.used.has(name)) throw new Error(`graph input name ${name} is already used`);
    this.used.add(name);
    this.inputs.push({ name, type, dims });
    return name;
  }

  /** Declares `tensor` a graph output under `name` (an Identity is added when they differ). */
  output(tensor: string, name: string, dims: Dim[], type: DataTypeName = 'FLOAT'): string {
    let out = tensor;
    if (tensor !== name) {
      if (this.used.has(name)) throw new Error(`graph output name ${name} is already used`);
      this.used.add(name);
      this.nodes.push({ opType: 'Identity', input: [tensor], output: [name], name: this.unique(`${name}/Identity`), attribute: [] });
      out = name;
    }
    this.outputs.push({ name: out, type, dims });
    return out;
  }

  /** Names of the declared graph inputs, in order. */
  inputNames(): string[] {
    return this.inputs.map((i) => i.name);
  }

  /** Names of the declared graph outputs, in order. */
  outputNames(): string[] {
    return this.outputs.map((o) => o.name);
  }

  /** Number of nodes so far. */
  get size(): number {
    return this.nodes.length;
  }

  /** The GraphProto as a plain object (a model's graph, or a subgraph attribute). */
  toGraphObject(): object {
    const valueInfo = (v: ValueInfo) => ({
      name: v.name,
      type: { tensorType: { elemType: DataType[v.type], shape: { dim: v.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
    });
    return { name: this.name, node: this.nodes, initializer: this.initializers, input: this.inputs.map(valueInfo), output: this.outputs.map(valueInfo) };
  }

  /** Serializes the graph as an ONNX ModelProto. */
  toBytes(metadata: Record<string, string> = {}): Uint8Array {
    const message = ModelProto.fromObject({
      irVersion: IR_VERSION,
      opsetImport: [{ domain: '', version: OPSET }],
      producerName: 'finetune-pipeline',
      producerVersion: '0.1.0',
      graph: this.toGraphObject(),
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
    });
    return ModelProto.encode(message).finish();
  }
}
