/**
 * Activations: the functions tfjs-layers names in `activation:` (fused into Conv2D/Dense or in an
 * Activation layer) and the advanced-activation layers (ReLU, LeakyReLU, ELU, ThresholdedReLU,
 * Softmax, PReLU). Each matches TF.js's own formula (tfjs-layers activations.ts), not Keras's
 * where the two differ (tfjs' ReLU layer reads only `maxValue`).
 */
import { float, type OnnxGraph } from './graph.js';
import { internalAxis, type ConvertContext, type LayerConverter, type Variable } from './convert-context.js';
import type { ConvertedTensor } from './types.js';

/** Builds `f(x)`; `axis` is the internal axis of the TF.js last axis (for softmax). */
type ActivationBuilder = (graph: OnnxGraph, x: string, axis: number, hint: string) => string;

const SELU_ALPHA = 1.6732632423543772;
const SELU_GAMMA = 1.0507009873554805;

const ACTIVATIONS: Record<string, ActivationBuilder> = {
  linear: (_g, x) => x,
  relu: (g, x, _a, hint) => g.op('Relu', [x], {}, hint),
  relu6: (g, x, _a, hint) => g.op('Clip', [x, g.floats([0]), g.floats([6])], {}, hint),
  elu: (g, x, _a, hint) => g.op('Elu', [x], { alpha: float(1) }, hint),
  selu: (g, x, _a, hint) => g.op('Selu', [x], { alpha: float(SELU_ALPHA), gamma: float(SELU_GAMMA) }, hint),
  sigmoid: (g, x, _a, hint) => g.op('Sigmoid', [x], {}, hint),
  // TF.js: clip(0.2 x + 0.5, 0, 1).
  hardSigmoid: (g, x, _a, hint) => g.op('HardSigmoid', [x], { alpha: float(0.2), beta: float(0.5) }, hint),
  softplus: (g, x, _a, hint) => g.op('Softplus', [x], {}, hint),
  softsign: (g, x, _a, hint) => g.op('Softsign', [x], {}, hint),
  tanh: (g, x, _a, hint) => g.op('Tanh', [x], {}, hint),
  softmax: (g, x, axis, hint) => g.op('Softmax', [x], { axis }, hint),
  logSoftmax: (g, x, axis, hint) => g.op('LogSoftmax', [x], { axis }, hint),
  swish: (g, x, _a, hint) => g.op('Mul', [x, g.op('Sigmoid', [x], {}, `${hint}/sigmoid`)], {}, hint),
  mish: (g, x, _a, hint) => g.op('Mul', [x, g.op('Tanh', [g.op('Softplus', [x], {}, `${hint}/softplus`)], {}, `${hint}/tanh`)], {}, hint),
  // x * 0.5 * (1 + erf(x / sqrt 2))
  gelu: (g, x, _a, hint) => {
    const erf = g.op('Erf', [g.op('Div', [x, g.floats([Math.SQRT2])], {}, `${hint}/scaled`)], {}, `${hint}/erf`);
    const cdf = g.op('Mul', [g.op('Add', [erf, g.floats([1])], {}, `${hint}/plus1`), g.floats([0.5])], {}, `${hint}/cdf`);
    return g.op('Mul', [x, cdf], {}, hint);
  },
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  gelu_new: (g, x, _a, hint) => {
    const cube = g.op('Mul', [g.op('Mul', [x, x], {}, `${hint}/square`), x], {}, `${hint}/cube`);
    const inner = g.op('Add', [x, g.op('Mul', [cube, g.floats([0.044715])], {}, `${hint}/cubic`)], {}, `${hint}/inner`);
    const tanh = g.op('Tanh', [g.op('Mul', [inner, g.floats([Math.sqrt(2 / Math.PI)])], {}, `${hint}/scaled`)], {}, `${hint}/tanh`);
    const half = g.op('Mul', [g.op('Add', [tanh, g.floats([1])], {}, `${hint}/plus1`), g.floats([0.5])], {}, `${hint}/half`);
    return g.op('Mul', [x, half], {}, hint);
  },
};

/** Null when activation `name` (as `getConfig().activation` gives it) converts, else why not. */
export function activationReason(name: unknown): string | null {
  if (name === undefined || name === null) return null;
  if (typeof name !== 'string') return `activation ${JSON.stringify(name)} is not a built-in activation name`;
  return ACTIVATIONS[name] ? null : `activation '${name}' is not supported`;
}

/** True when the activation changes its input (anything but linear). */
export function isFusedActivation(name: unknown): boolean {
  return typeof name === 'string' && name !== 'linear';
}

/** `t` through activation `name` (TF.js semantics; softmax over the TF.js last axis). */
export function applyActivation(ctx: ConvertContext, name: unknown, t: ConvertedTensor, hint: string): ConvertedTensor {
  const key = typeof name === 'string' ? name : 'linear';
  const builder = ACTIVATIONS[key];
  if (!builder) throw new Error(`internal: activation ${key} was not checked`);
  return { ...t, name: builder(ctx.graph, t.name, internalAxis(-1, t.shape.length), `${hint}/${key}`) };
}

const always = () => null;

/** `Activation` layer. */
export const activationLayer: LayerConverter = {
  check: (info) => activationReason(info.config.activation),
  convert: (ctx, info, [x]) => ({ output: applyActivation(ctx, info.config.activation, x, info.layer.name) }),
};

/** `ReLU` layer: relu, or clip to [0, maxValue]. */
export const reluLayer: LayerConverter = {
  check: always,
  convert(ctx, info, [x]) {
    const max = info.config.maxValue as number | null | undefined;
    const g = ctx.graph;
    const name = max === null || max === undefined ? g.op('Relu', [x.name], {}, `${info.layer.name}/relu`) : g.op('Clip', [x.name, g.floats([0]), g.floats([max])], {}, `${info.layer.name}/relu_clip`);
    return { output: { ...x, name } };
  },
};

/** `LeakyReLU` layer (alpha default 0.3). */
export const leakyReluLayer: LayerConverter = {
  check: always,
  convert: (ctx, info, [x]) => ({ output: { ...x, name: ctx.graph.op('LeakyRelu', [x.name], { alpha: float((info.config.alpha as number | undefined) ?? 0.3) }, `${info.layer.name}/leaky_relu`) } }),
};

/** `ELU` layer (tfjs accepts only alpha 1). */
export const eluLayer: LayerConverter = {
  check: always,
  convert: (ctx, info, [x]) => ({ output: { ...x, name: ctx.graph.op('Elu', [x.name], { alpha: float((info.config.alpha as number | undefined) ?? 1) }, `${info.layer.name}/elu`) } }),
};

/** `ThresholdedReLU` layer: x where x > theta, else 0. */
export const thresholdedReluLayer: LayerConverter = {
  check: always,
  convert: (ctx, info, [x]) => ({ output: { ...x, name: ctx.graph.op('ThresholdedRelu', [x.name], { alpha: float((info.config.theta as number | undefined) ?? 1) }, `${info.layer.name}/thresholded_relu`) } }),
};

/** `Softmax` layer over one axis. */
export const softmaxLayer: LayerConverter = {
  check: (info) => (Array.isArray(info.config.axis) && info.config.axis.length !== 1 ? 'softmax over several axes' : null),
  convert(ctx, info, [x]) {
    const raw = info.config.axis as number | number[] | undefined;
    const axis = internalAxis(Array.isArray(raw) ? raw[0] : (raw ?? -1), x.shape.length);
    return { output: { ...x, name: ctx.graph.op('Softmax', [x.name], { axis }, `${info.layer.name}/softmax`) } };
  },
};

/** `PReLU` layer: learned slope per element (shared axes have size 1). */
export const preluLayer: LayerConverter = {
  check: always,
  convert(ctx, info, [x]) {
    const alpha = (info.layer as unknown as { alpha: Variable }).alpha;
    // The slope has the input's shape without the batch; rank-4 inputs are NCHW here.
    const transform = x.layout === 'nchw' ? { perm: [2, 0, 1] } : {};
    const slope = ctx.weight(info.layer.name, alpha, 'alpha', transform);
    return { output: { ...x, name: ctx.graph.op('PRelu', [x.name, slope], {}, `${info.layer.name}/prelu`) } };
  },
};
