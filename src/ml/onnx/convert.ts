/**
 * Converts a tfjs-layers model, or a span of it between two cuts, to an ONNX graph that
 * onnxruntime runs, so the frozen bottom of a pretrained model can run outside TF.js.
 *
 * The model is walked like `features.ts` does: each layer at its one node in this model, its
 * inputs the tensors of that node. The span is every layer the `to` outputs depend on, stopping
 * at the `from` outputs. Graph inputs and outputs are NHWC float32 with a symbolic `batch`
 * dimension; inside, rank-4 values are NCHW (see convert-context.ts). The per-family converters
 * are convert-conv.ts, convert-spatial.ts, convert-activation.ts, convert-core.ts and
 * convert-merge.ts; CONVERTERS below names the layer classes they cover.
 */
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { StageError } from '../../runtime/errors.js';
import { OnnxGraph, type Dim } from './graph.js';
import { ConvertContext, type Layer, type LayerConverter, type LayerInfo, type Variable } from './convert-context.js';
import { activationLayer, eluLayer, leakyReluLayer, preluLayer, reluLayer, softmaxLayer, thresholdedReluLayer } from './convert-activation.js';
import { conv2d, depthwiseConv2d, separableConv2d } from './convert-conv.js';
import { batchNormalization, dense, flatten, identity, layerNormalization, permute, reshape, rescaling } from './convert-core.js';
import { add, average, concatenate, maximum, minimum, multiply } from './convert-merge.js';
import { MIRROR_INPUT, pixelPrologue, type PixelEncoding } from './convert-pixels.js';
import { averagePooling2d, cropping2d, globalAveragePooling1d, globalAveragePooling2d, globalMaxPooling1d, globalMaxPooling2d, maxPooling2d, upSampling2d, zeroPadding2d } from './convert-spatial.js';
import { UnsupportedLayerError, type ConvertedGraph, type ConvertedTensor, type ConvertOptions, type GraphPort, type LayerTensors, type Shape, type UnsupportedLayer, type WeightInput } from './types.js';

export { UnsupportedLayerError } from './types.js';
export type { ConvertedGraph, ConvertedTensor, ConvertOptions, GraphPort, LayerTensors, Shape, UnsupportedLayer, WeightInput } from './types.js';

/** The converter of each supported tfjs-layers class. */
const CONVERTERS: Record<string, LayerConverter> = {
  Conv2D: conv2d,
  DepthwiseConv2D: depthwiseConv2d,
  SeparableConv2D: separableConv2d,
  BatchNormalization: batchNormalization,
  LayerNormalization: layerNormalization,
  Dense: dense,
  Activation: activationLayer,
  ReLU: reluLayer,
  LeakyReLU: leakyReluLayer,
  ELU: eluLayer,
  ThresholdedReLU: thresholdedReluLayer,
  Softmax: softmaxLayer,
  PReLU: preluLayer,
  MaxPooling2D: maxPooling2d,
  AveragePooling2D: averagePooling2d,
  GlobalAveragePooling2D: globalAveragePooling2d,
  GlobalMaxPooling2D: globalMaxPooling2d,
  GlobalAveragePooling1D: globalAveragePooling1d,
  GlobalMaxPooling1D: globalMaxPooling1d,
  ZeroPadding2D: zeroPadding2d,
  Cropping2D: cropping2d,
  UpSampling2D: upSampling2d,
  Add: add,
  Multiply: multiply,
  Average: average,
  Maximum: maximum,
  Minimum: minimum,
  Concatenate: concatenate,
  Flatten: flatten,
  Reshape: reshape,
  Permute: permute,
  Rescaling: rescaling,
  Dropout: identity,
  SpatialDropout1D: identity,
  GaussianNoise: identity,
  GaussianDropout: identity,
  AlphaDropout: identity,
};

/** The tfjs-layers class names `convertLayersModel` converts (InputLayer aside). */
export const SUPPORTED_LAYERS: readonly string[] = Object.keys(CONVERTERS);

type Node = Layer['inboundNodes'][number];

/** A layer where the span starts or ends, and its output tensor there. */
interface Port {
  layer: Layer;
  tensor: SymbolicTensor;
}

interface SpanLayer {
  info: LayerInfo;
  node: Node;
  /** Why it cannot be converted (found before any graph is built), or null. */
  reason: string | null;
}

interface Span {
  starts: Port[];
  ends: Port[];
  layers: SpanLayer[];
}

/** Converts the span of `model` between `from` and `to`. Throws UnsupportedLayerError naming the first layer that cannot be converted. */
export function convertLayersModel(model: LayersModel, options: ConvertOptions = {}): ConvertedGraph {
  const span = resolveSpan(model, options);
  const failure = firstUnsupported(span);
  if (failure) throw new UnsupportedLayerError(failure.layer, failure.className, failure.reason);

  const graph = new OnnxGraph(options.name ?? model.name);
  const values = new Map<number, ConvertedTensor>();
  const tensors = new Map<string, LayerTensors>();
  const inputs: GraphPort[] = [];
  const used = new Set<string>();
  const pixels = options.pixels ? pixelStart(span, options) : null;
  for (const start of span.starts) {
    const shape = start.tensor.shape;
    const name = graph.input(start.layer.name, dimsOf(shape, start.layer.name), pixels ? 'UINT8' : 'FLOAT');
    used.add(name);
    inputs.push({ name, layer: start.layer.name, shape, ...(pixels ? { dtype: 'uint8' as const } : {}) });
  }
  if (pixels) used.add(MIRROR_INPUT);
  const weightInputs = options.weights === 'inputs' ? declareWeights(model, span, graph) : [];
  weightInputs.forEach((w) => used.add(w.name));
  const ctx = new ConvertContext(graph, options.weights === 'inputs' ? new Map(weightInputs.map((w) => [(w.variable as Variable).id, w.name])) : null);
  for (const start of span.starts) {
    const value = pixels
      ? ctx.tensor(pixelPrologue(graph, start.layer.name, dimsOf(start.tensor.shape, start.layer.name), pixels), start.tensor.shape)
      : ctx.fromTfLayout(start.layer.name, start.tensor.shape, start.layer.name);
    values.set(start.tensor.id, value);
    tensors.set(start.layer.name, { output: value, inputs: [] });
  }

  for (const { info, node } of span.layers) {
    const layerInputs = node.inputTensors.map((t) => values.get(t.id)!);
    const converted = CONVERTERS[info.className].convert(ctx, info, layerInputs);
    values.set(node.outputTensors[0].id, converted.output);
    tensors.set(info.layer.name, { output: converted.output, ...(converted.preActivation ? { preActivation: converted.preActivation } : {}), inputs: layerInputs });
  }

  const outputs: GraphPort[] = span.ends.map((end) => {
    const value = values.get(end.tensor.id)!;
    let name = end.layer.name;
    for (let i = 1; used.has(name); i++) name = `${end.layer.name}_output${i > 1 ? i : ''}`;
    used.add(name);
    graph.output(ctx.toTfLayout(value, `${end.layer.name}/output`), name, dimsOf(end.tensor.shape, name));
    return { name, layer: end.layer.name, shape: end.tensor.shape };
  });
  return { graph, inputs, outputs, tensors, weightInputs, ...(pixels ? { mirrorInput: pixels.mirror ? MIRROR_INPUT : null } : {}) };
}

/** The pixel encoding, checked against the span: one NHWC model input of known size. */
function pixelStart(span: Span, options: ConvertOptions): PixelEncoding {
  const shape = span.starts[0]?.tensor.shape;
  if (options.from?.length || span.starts.length !== 1 || shape.length !== 4 || shape.slice(1).some((d) => d === null)) {
    throw badCut(`a uint8 pixel input needs a span from the model's one image input of known size (got ${span.starts.length} inputs${shape ? ` of shape [${shape.join(', ')}]` : ''})`, { from: options.from ?? null });
  }
  if (options.weights === 'inputs') throw badCut('a uint8 pixel input takes baked-in weights', {});
  const channels = shape[3] as number;
  if (options.pixels!.scale.length !== channels || options.pixels!.offset.length !== channels) {
    throw badCut(`the pixel normalization has ${options.pixels!.scale.length} coefficients for ${channels} input channels`, { channels });
  }
  return options.pixels!;
}

/** The first layer in the span that cannot be converted, or null (no graph built). */
export function findUnsupportedLayer(model: LayersModel, options: ConvertOptions = {}): UnsupportedLayer | null {
  return firstUnsupported(resolveSpan(model, options));
}

function firstUnsupported(span: Span): UnsupportedLayer | null {
  for (const start of span.starts) {
    if (start.tensor.dtype !== 'float32') return { layer: start.layer.name, className: start.layer.getClassName(), reason: `its output is ${start.tensor.dtype}; graph inputs are float32` };
  }
  const bad = span.layers.find((l) => l.reason !== null);
  return bad ? { layer: bad.info.layer.name, className: bad.info.className, reason: bad.reason! } : null;
}

/** `['batch', …]`: the batch is symbolic, other unknown sizes get their own names. */
function dimsOf(shape: Shape, name: string): Dim[] {
  return shape.map((d, i) => (i === 0 ? 'batch' : (d ?? `${name}_dim${i}`)));
}

/** Graph inputs for the span's variables, in `model.weights` order. */
function declareWeights(model: LayersModel, span: Span, graph: OnnxGraph): WeightInput[] {
  const owner = new Map<number, string>();
  for (const { info } of span.layers) for (const v of info.layer.weights as unknown as Variable[]) owner.set(v.id, info.layer.name);
  return (model.weights as unknown as Variable[])
    .filter((v) => owner.has(v.id))
    .map((variable) => ({ name: graph.input(variable.name, variable.shape), layer: owner.get(variable.id)!, variable, shape: [...variable.shape], trainable: variable.trainable }));
}

function badCut(message: string, details: Record<string, unknown>): StageError {
  return new StageError('onnx_bad_cut', message, details);
}

/**
 * The layers of the span, in model order, each at its node in this model. A tensor's producer is
 * its `sourceLayer`; a layer's nodes in this model are those in `containerNodes` (a layer reused
 * by a model built on top of this one, as `splitAtTrainable` does, has nodes of other models too).
 * A Sequential model records no container nodes and lists no InputLayer: all nodes count.
 */
function resolveSpan(model: LayersModel, options: ConvertOptions): Span {
  const containerNodes = (model as unknown as { containerNodes?: Set<string> }).containerNodes;
  const filterNodes = containerNodes !== undefined && containerNodes.size > 0;
  const nodesOf = (layer: Layer): Node[] => layer.inboundNodes.filter((_, i) => !filterNodes || containerNodes.has(`${layer.name}_ib-${i}`));
  const inModel = new Set(model.layers);

  const port = (name: string, role: 'from' | 'to'): Port => {
    const layer = model.layers.find((l) => l.name === name);
    if (!layer) throw badCut(`'${role}' names layer '${name}', which is not in model '${model.name}'`, { layer: name, role });
    const nodes = nodesOf(layer);
    if (nodes.length !== 1 || nodes[0].outputTensors.length !== 1) throw new UnsupportedLayerError(name, layer.getClassName(), nodes.length !== 1 ? `used at ${nodes.length} nodes of the model` : 'it has several outputs');
    return { layer, tensor: nodes[0].outputTensors[0] };
  };
  const sourcePort = (tensor: SymbolicTensor): Port => ({ layer: tensor.sourceLayer as Layer, tensor });
  const starts = options.from?.length ? options.from.map((n) => port(n, 'from')) : model.inputs.map(sourcePort);
  const ends = options.to?.length ? options.to.map((n) => port(n, 'to')) : model.outputs.map(sourcePort);

  const startIds = new Set(starts.map((s) => s.tensor.id));
  const needed = new Set<Layer>();
  const stack = ends.map((e) => e.tensor);
  while (stack.length > 0) {
    const tensor = stack.pop()!;
    if (startIds.has(tensor.id)) continue;
    const layer = tensor.sourceLayer as Layer;
    if (needed.has(layer)) continue;
    if (layer.getClassName() === 'InputLayer') {
      throw badCut(`the span needs the model input '${layer.name}', which 'from' does not list (from: ${JSON.stringify(options.from)})`, { layer: layer.name, from: options.from ?? null });
    }
    if (!inModel.has(layer)) throw badCut(`tensor ${tensor.name} is produced by '${layer.name}', which is not in model '${model.name}'`, { tensor: tensor.name, layer: layer.name });
    needed.add(layer);
    const nodes = nodesOf(layer);
    if (nodes.length === 1) stack.push(...nodes[0].inputTensors);
  }

  const layers = model.layers.filter((l) => needed.has(l)).map((layer) => spanLayer(layer, nodesOf(layer)));
  return { starts, ends, layers };
}

function spanLayer(layer: Layer, nodes: Node[]): SpanLayer {
  const className = layer.getClassName();
  const node = nodes[0];
  const info: LayerInfo = {
    layer,
    className,
    config: layer.getConfig() as Record<string, unknown>,
    inputShapes: node ? node.inputTensors.map((t) => t.shape) : [],
    outputShape: node ? node.outputTensors[0].shape : [],
  };
  let reason: string | null;
  if (nodes.length !== 1) reason = `used at ${nodes.length} nodes of the model (a shared layer)`;
  else if (Array.isArray((layer as unknown as { layers?: unknown }).layers)) reason = 'a nested model';
  else if (!CONVERTERS[className]) reason = `no ONNX converter for ${className}`;
  else if (node.outputTensors.length !== 1) reason = 'it has several outputs';
  else if (node.inputTensors.some((t) => t.dtype !== 'float32')) reason = 'a non-float32 input';
  else reason = CONVERTERS[className].check(info);
  return { info, node, reason };
}
