/**
 * A training step of a tfjs-layers model as one ONNX graph: forward pass, the loss of
 * `src/ml/train.ts` `crossEntropy`, and the gradient of every trainable weight through
 * explicit backward ops (standard ONNX only: onnxruntime-node has no training API).
 *
 * ```ts
 * const graph = buildTrainingGraph(top, { numClasses: 2 });
 * // graph inputs : x [N, ...top input, NHWC] float, labels [N] int32,
 * //                class_weights [numClasses] (with classWeights), every weight (TF.js layout),
 * //                a dropout mask per active Dropout layer (graph.masks)
 * // graph outputs: loss [], correct [] (argmax hits, float), probs [N, numClasses],
 * //                per trainable weight, its gradient (graph.trainable[i].gradient)
 * ```
 * `mode: 'evaluate'` builds the forward-only graph (loss, correct, probs; Dropout is the identity).
 * `src/ml/onnx/trainer.ts` runs it as a drop-in for `optimizer.minimize`.
 *
 * The model is walked from its output back to its input through the inbound node that made
 * each tensor, so the top of `splitAtTrainable` (whose layers are shared with the full model)
 * works. Frozen layers may sit anywhere: they get no weight gradient, gradients still flow
 * through them; layers below every trainable weight get no backward at all. A layer without an
 * emitter in `grad/index.ts`, or in a configuration an emitter refuses, throws
 * `UnsupportedLayerError` (a subclass of convert.ts's; the caller then trains with TF.js and
 * logs `err.layer`, `err.className`, `err.reason`). `findUntrainableLayer` asks without throwing.
 *
 * Differentiated (forward and backward, `grad/*.ts`): Conv2D (any kernel and stride, undilated,
 * same/valid), DepthwiseConv2D (any multiplier), SeparableConv2D, Dense (rank-2 input),
 * BatchNormalization held in inference mode (gamma/beta train; training-mode BN is refused),
 * activations linear/relu/relu6/sigmoid/tanh/swish/softmax (fused or as Activation, ReLU with
 * max_value, LeakyReLU, Softmax over the last axis), Add/Multiply/Average (broadcasting over
 * unit dims), Concatenate, GlobalAverage/GlobalMaxPooling2D, MaxPooling2D, AveragePooling2D
 * (TF.js's gradient, see pooling.ts), Flatten, Reshape, ZeroPadding2D, Cropping2D, Dropout
 * (masks fed from TF.js's own `tf.dropout`, without noise_shape). Not: ELU/SELU/GELU and other
 * activations, PReLU, LayerNormalization, UpSampling2D, Permute, Maximum/Minimum, RNNs,
 * 1-D/3-D layers, dilated convolutions (TF.js has no gradient for them), nested models, shared
 * layers.
 *
 * Why this file emits its own forward pass instead of taking convert.ts's: the backward needs
 * the forward's intermediate values by name (pre-activations, the weights in ONNX layout, pool
 * indices), and per-value layouts pay off here: 1x1 convs, most of a MobileNetV2 top's work, run
 * as NHWC MatMuls without transposes (about 1.7x faster than onnxruntime's 1x1 Conv on 7x7
 * maps), where the converter keeps every rank-4 value NCHW. Both are checked against TF.js.
 */
import type { LayersModel, LayerVariable, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { OnnxGraph } from './graph.js';
import { nhwcShapeOf, sumGradients, UnsupportedLayerError, valueOf, type EmitContext, type Forward, type Layer, type Value } from './grad/context.js';
import { emitters } from './grad/index.js';
import { emitCrossEntropy } from './grad/loss.js';

export { UnsupportedLayerError } from './grad/context.js';

/** Options of `buildTrainingGraph`. */
export interface TrainingGraphOptions {
  /** Number of classes (width of the model's output). */
  numClasses: number;
  /** The graph takes a `class_weights` input (Keras-style per-class loss weights). Default false. */
  classWeights?: boolean;
  /** `train` (default): gradients and dropout masks; `evaluate`: forward and loss only. */
  mode?: 'train' | 'evaluate';
}

/** A weight the graph takes as an input. */
export interface WeightInput {
  /** Graph input name (the TF.js variable name). */
  name: string;
  variable: LayerVariable;
  /** TF.js shape (the layout fed and the layout of the gradient). */
  shape: number[];
  /** Whether the graph outputs its gradient. */
  trainable: boolean;
  /** Graph output with its gradient (trainable weights in `train` mode). */
  gradient?: string;
}

/** A dropout mask input: `0` or `1/(1−rate)` per unit, NHWC `[N, ...shape]`. */
export interface DropoutMask {
  name: string;
  /** The Dropout layer. */
  layer: string;
  rate: number;
  /** The layer's own seed, if it has one (TF.js then repeats its mask every step). */
  seed?: number;
  /** Per-example Keras shape. */
  shape: number[];
}

/** The serialized graph and how to feed it. */
export interface TrainingGraph {
  bytes: Uint8Array;
  /** Input of the model: name and per-example Keras shape. */
  input: { name: string; shape: number[] };
  labels: string;
  classWeights?: string;
  /** Every weight the graph reads, in the order first used. */
  weightInputs: WeightInput[];
  /** The trainable ones, in `model.trainableWeights` order. */
  trainable: WeightInput[];
  /** Dropout masks, in forward order (the order TF.js draws them). */
  masks: DropoutMask[];
  outputs: { loss: string; correct: string; probs: string };
  /** Layers in the order the graph computes them. */
  layers: string[];
}

interface Step {
  layer: Layer;
  inputs: SymbolicTensor[];
  output: SymbolicTensor;
}

interface InboundNode {
  inputTensors: SymbolicTensor[];
  outputTensors: SymbolicTensor[];
}

/** The layer applications from the model's input to its output, in dependency order. */
function stepsOf(model: LayersModel): Step[] {
  if (model.inputs.length !== 1 || model.outputs.length !== 1) throw new UnsupportedLayerError(model.name, 'LayersModel', `${model.inputs.length} inputs and ${model.outputs.length} outputs (one of each is supported)`);
  const inputId = model.inputs[0].id;
  const steps: Step[] = [];
  const done = new Set<number>();
  const visit = (tensor: SymbolicTensor) => {
    if (tensor.id === inputId || done.has(tensor.id)) return;
    done.add(tensor.id);
    const layer = tensor.sourceLayer as Layer;
    const node = (layer.inboundNodes as unknown as InboundNode[])[tensor.nodeIndex];
    if (!node || node.inputTensors.length === 0) throw new UnsupportedLayerError(layer.name, layer.getClassName(), 'reads an input other than the model input');
    if (node.outputTensors.length !== 1) throw new UnsupportedLayerError(layer.name, layer.getClassName(), 'several outputs');
    node.inputTensors.forEach(visit);
    steps.push({ layer, inputs: node.inputTensors, output: tensor });
  };
  visit(model.outputs[0]);
  const uses = new Map<Layer, number>();
  for (const step of steps) uses.set(step.layer, (uses.get(step.layer) ?? 0) + 1);
  for (const [layer, count] of uses) if (count > 1) throw new UnsupportedLayerError(layer.name, layer.getClassName(), `applied ${count} times (shared layer)`);
  return steps;
}

/** The first layer `buildTrainingGraph` would refuse, or null when it builds. */
export function findUntrainableLayer(model: LayersModel, options: TrainingGraphOptions): { layer: string; className: string; reason: string } | null {
  try {
    buildTrainingGraph(model, options);
    return null;
  } catch (error) {
    if (!(error instanceof UnsupportedLayerError)) throw error;
    return { layer: error.layer, className: error.className, reason: error.reason };
  }
}

/** Builds the training (or evaluation) graph of `model`; see the file header. */
export function buildTrainingGraph(model: LayersModel, options: TrainingGraphOptions): TrainingGraph {
  const mode = options.mode ?? 'train';
  const steps = stepsOf(model);
  const g = new OnnxGraph(`${model.name}_${mode}`);
  const inputShape = nhwcShapeOf(model.inputs[0].shape);
  const xName = g.input('x', ['batch', ...inputShape]);
  const labels = g.input('labels', ['batch'], 'INT32');
  const classWeights = options.classWeights ? g.input('class_weights', [options.numClasses]) : undefined;

  const trainableSet = new Set(model.trainableWeights as LayerVariable[]);
  const weightInputs = new Map<LayerVariable, WeightInput>();
  const masks: DropoutMask[] = [];
  const ctx: EmitContext = {
    g,
    mode,
    weight(variable) {
      let entry = weightInputs.get(variable);
      if (!entry) {
        entry = { name: g.input(variable.name, variable.shape as number[]), variable, shape: variable.shape as number[], trainable: trainableSet.has(variable) };
        weightInputs.set(variable, entry);
      }
      return entry.name;
    },
    wantsGradient: (variable) => mode === 'train' && trainableSet.has(variable),
    addGradient(variable, tensor) {
      const entry = weightInputs.get(variable)!;
      if (entry.gradient) throw new Error(`two gradients for ${variable.name}`);
      entry.gradient = g.output(tensor, `grad/${variable.name}`, variable.shape as number[]);
    },
    maskInput(layer, shape) {
      const f = layer as unknown as { rate: number; seed?: number };
      const name = g.input(`mask/${layer.name}`, ['batch', ...shape]);
      masks.push({ name, layer: layer.name, rate: f.rate, ...(f.seed != null ? { seed: f.seed } : {}), shape });
      return name;
    },
    refuse(layer, reason): never {
      throw new UnsupportedLayerError(layer.name, layer.getClassName(), reason);
    },
  };

  // Forward. A tensor "needs a gradient" when some trainable weight lies at or below it.
  const values = new Map<number, Value>([[model.inputs[0].id, valueOf(xName, inputShape, 'nhwc')]]);
  const needs = new Set<number>();
  const forwards: Forward[] = [];
  for (const step of steps) {
    const emitter = emitters[step.layer.getClassName()];
    if (!emitter) ctx.refuse(step.layer, 'no backward implemented for this layer class');
    const inputs = step.inputs.map((t) => values.get(t.id)!);
    const forward = emitter.forward(ctx, step.layer, inputs);
    forwards.push(forward);
    values.set(step.output.id, forward.output);
    if (step.layer.trainableWeights.length > 0 || step.inputs.some((t) => needs.has(t.id))) needs.add(step.output.id);
  }
  const probs = values.get(model.outputs[0].id)!;
  if (probs.layout !== 'flat' || probs.shape.length !== 1 || probs.shape[0] !== options.numClasses)
    throw new UnsupportedLayerError(steps.at(-1)!.layer.name, steps.at(-1)!.layer.getClassName(), `output of shape [${probs.shape.join(', ')}] (expected [${options.numClasses}] probabilities)`);
  const loss = emitCrossEntropy(g, probs.name, labels, options.numClasses, classWeights);

  // Backward, output to input; a tensor read by several layers sums their gradients.
  if (mode === 'train') {
    const parts = new Map<number, string[]>([[model.outputs[0].id, [loss.dProbs]]]);
    for (let i = steps.length - 1; i >= 0; i--) {
      const step = steps[i];
      const incoming = parts.get(step.output.id);
      if (!incoming || !needs.has(step.output.id)) continue;
      const dOutput = incoming.length === 1 ? incoming[0] : sumGradients(g, incoming, `${step.layer.name}/d_output`);
      const needInput = step.inputs.map((t) => needs.has(t.id));
      const inputs = step.inputs.map((t) => values.get(t.id)!);
      const grads = emitters[step.layer.getClassName()].backward(ctx, { layer: step.layer, inputs, output: forwards[i].output, saved: forwards[i].saved ?? {}, dOutput, needInput });
      step.inputs.forEach((t, k) => {
        if (!needInput[k] || !grads[k]) return;
        parts.set(t.id, [...(parts.get(t.id) ?? []), grads[k]!]);
      });
    }
  }

  g.output(loss.loss, 'loss', []);
  g.output(loss.correct, 'correct', []);
  g.output(probs.name, 'probs', ['batch', options.numClasses]);
  const trainable = (model.trainableWeights as LayerVariable[]).map((v) => weightInputs.get(v)).filter((w): w is WeightInput => w !== undefined);
  return {
    bytes: g.toBytes({ source: 'finetune-pipeline train-graph', mode }),
    input: { name: xName, shape: inputShape },
    labels,
    ...(classWeights ? { classWeights } : {}),
    weightInputs: [...weightInputs.values()],
    trainable,
    masks,
    outputs: { loss: 'loss', correct: 'correct', probs: 'probs' },
    layers: steps.map((s) => s.layer.name),
  };
}
