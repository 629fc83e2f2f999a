/**
 * Convolutions: Conv2D, DepthwiseConv2D (a grouped Conv, one group per input channel) and
 * SeparableConv2D (depthwise then 1x1). TF.js kernels are HWIO (depthwise: H, W, in, multiplier);
 * ONNX wants OIHW, so kernels are transposed, as constants here or by nodes in the graph.
 */
import type { AttributeValue } from './graph.js';
import { activationReason, applyActivation, isFusedActivation } from './convert-activation.js';
import type { ConvertContext, ConvertedLayer, LayerConverter, LayerInfo, Variable } from './convert-context.js';
import type { ConvertedTensor, Shape } from './types.js';

/** HWIO → OIHW. */
const KERNEL_TO_OIHW = [3, 2, 0, 1];
/** Depthwise H, W, in, multiplier → in, multiplier, H, W (then reshaped to in·multiplier, 1, H, W). */
const DEPTHWISE_TO_IMHW = [2, 3, 0, 1];

/**
 * ONNX padding attributes for TF padding `padding` over the H, W of an NHWC `shape`. TF's 'same'
 * pads `total = max((ceil(in / s) - 1) s + (k - 1) d + 1 - in, 0)`, the odd pixel at the bottom
 * and right; spelled out as `pads` when the size is known, else ONNX's equivalent `SAME_UPPER`.
 */
export function paddingAttributes(shape: Shape, kernel: number[], strides: number[], dilations: number[], padding: unknown): Record<string, AttributeValue> {
  if (padding !== 'same') return {};
  const sizes = [shape[1], shape[2]];
  if (sizes.some((s) => s === null)) return { auto_pad: 'SAME_UPPER' };
  const before: number[] = [];
  const after: number[] = [];
  sizes.forEach((size, i) => {
    const effective = (kernel[i] - 1) * dilations[i] + 1;
    const out = Math.ceil(size! / strides[i]);
    const total = Math.max((out - 1) * strides[i] + effective - size!, 0);
    before.push(Math.floor(total / 2));
    after.push(total - Math.floor(total / 2));
  });
  const pads = [...before, ...after];
  return pads.some((p) => p > 0) ? { pads } : {};
}

/** Pair form of a number-or-pair config value. */
export function pair(value: unknown, fallback: number): number[] {
  if (Array.isArray(value)) return value.length === 1 ? [value[0], value[0]] : (value as number[]);
  return typeof value === 'number' ? [value, value] : [fallback, fallback];
}

/** Why a 2D conv/pool layer (or, without `checkPadding`, a 2D padding/resizing layer) cannot be converted, or null. */
export function spatialReason(info: LayerInfo, checkPadding = true): string | null {
  if (info.inputShapes.length !== 1 || info.inputShapes[0].length !== 4) return `input must be one rank-4 (NHWC) tensor, got ${JSON.stringify(info.inputShapes)}`;
  const format = info.config.dataFormat;
  if (format !== undefined && format !== null && format !== 'channelsLast') return `dataFormat '${String(format)}' (only channelsLast is supported)`;
  if (checkPadding && !['same', 'valid'].includes(String(info.config.padding ?? 'valid'))) return `padding '${String(info.config.padding)}'`;
  return null;
}

function convReason(info: LayerInfo): string | null {
  return spatialReason(info) ?? activationReason(info.config.activation);
}

interface ConvWeights {
  kernel?: Variable;
  depthwiseKernel?: Variable;
  pointwiseKernel?: Variable;
  bias?: Variable | null;
}

function weightsOf(info: LayerInfo): ConvWeights {
  return info.layer as unknown as ConvWeights;
}

/** Adds the bias (when used), then the activation; returns the layer's values. */
function finish(ctx: ConvertContext, info: LayerInfo, conv: string): ConvertedLayer {
  const pre: ConvertedTensor = ctx.tensor(conv, info.outputShape);
  const output = applyActivation(ctx, info.config.activation, pre, info.layer.name);
  return isFusedActivation(info.config.activation) ? { output, preActivation: pre } : { output };
}

function biasInput(ctx: ConvertContext, info: LayerInfo): string[] {
  const bias = weightsOf(info).bias;
  return info.config.useBias !== false && bias ? [ctx.weight(info.layer.name, bias, 'bias')] : [];
}

function spatialAttributes(info: LayerInfo, kernel: number[]) {
  const strides = pair(info.config.strides, 1);
  const dilations = pair(info.config.dilationRate, 1);
  return { kernel_shape: kernel, strides, dilations, ...paddingAttributes(info.inputShapes[0], kernel, strides, dilations, info.config.padding) };
}

/** A depthwise (grouped) Conv of `x`; `withBias` adds the layer's bias to it. */
function depthwise(ctx: ConvertContext, info: LayerInfo, x: ConvertedTensor, withBias: boolean): string {
  const kernel = weightsOf(info).depthwiseKernel!;
  const [kh, kw, channels, multiplier] = kernel.shape;
  const w = ctx.weight(info.layer.name, kernel, 'depthwise_kernel', { perm: DEPTHWISE_TO_IMHW, shape: [channels * multiplier, 1, kh, kw] });
  const inputs = [x.name, w, ...(withBias ? biasInput(ctx, info) : [])];
  return ctx.graph.op('Conv', inputs, { ...spatialAttributes(info, [kh, kw]), group: channels }, `${info.layer.name}/depthwise`);
}

/** `Conv2D`. */
export const conv2d: LayerConverter = {
  check: convReason,
  convert(ctx, info, [x]) {
    const kernel = weightsOf(info).kernel!;
    const w = ctx.weight(info.layer.name, kernel, 'kernel', { perm: KERNEL_TO_OIHW });
    const conv = ctx.graph.op('Conv', [x.name, w, ...biasInput(ctx, info)], { ...spatialAttributes(info, kernel.shape.slice(0, 2)), group: 1 }, `${info.layer.name}/conv`);
    return finish(ctx, info, conv);
  },
};

/**
 * `DepthwiseConv2D` (any depth multiplier). TF.js ignores its `dilationRate` (tfjs-layers calls
 * depthwiseConv2d without it), so a dilated one computes something else in TF.js than in Keras:
 * refused rather than matching either silently.
 */
export const depthwiseConv2d: LayerConverter = {
  check: (info) => convReason(info) ?? (pair(info.config.dilationRate, 1).some((d) => d !== 1) ? 'dilationRate != 1, which TF.js ignores for DepthwiseConv2D (TF.js and Keras disagree)' : null),
  convert: (ctx, info, [x]) => finish(ctx, info, depthwise(ctx, info, x, true)),
};

/** `SeparableConv2D`: depthwise (no bias), then a 1x1 Conv with the bias. */
export const separableConv2d: LayerConverter = {
  check: convReason,
  convert(ctx, info, [x]) {
    const inner = ctx.tensor(depthwise(ctx, info, x, false), info.outputShape);
    const pointwise = weightsOf(info).pointwiseKernel!;
    const w = ctx.weight(info.layer.name, pointwise, 'pointwise_kernel', { perm: KERNEL_TO_OIHW });
    const conv = ctx.graph.op('Conv', [inner.name, w, ...biasInput(ctx, info)], { kernel_shape: [1, 1], group: 1 }, `${info.layer.name}/pointwise`);
    return finish(ctx, info, conv);
  },
};
