/**
 * Conv2D, DepthwiseConv2D and SeparableConv2D (channels last in Keras, NCHW in the graph).
 *
 * - Padding is explicit: TF's `same` puts the odd pixel at the end (`begin = ⌊total/2⌋`).
 * - dX of a strided conv is a ConvTranspose with the forward weight, pads and group, plus
 *   `output_padding` for the rows it never read (`(in + pads − kernel_extent) mod stride`); at
 *   stride 1 it is a Conv with the flipped kernel (faster in onnxruntime).
 * - A 1x1 stride-1 Conv2D runs in NHWC as MatMul/Gemm on `[N·H·W, C]` (no transposes, and
 *   better GEMM shapes than onnxruntime's per-image 1x1 Conv); other convs run in NCHW.
 * - dW swaps batch and channels: `X` as `[Cin, N, H, W]` convolved with `dY` as a kernel
 *   `[Cout, N, oh, ow]`, strides and dilations exchanged, gives `[Cin, Cout, kh', kw']`
 *   (sliced to the kernel when the last strided rows were not read). Depthwise does the same
 *   with all channels in one batch row, `[1, C·N, H, W]`, and `group = C`, but only for
 *   kernels over 25 taps: smaller ones sum shifted products in NHWC (faster). A 1x1 stride-1
 *   kernel is one MatMul instead.
 */
import type { LayerVariable } from '@tensorflow/tfjs-layers';
import type { OnnxGraph } from '../graph.js';
import { activationOf, emitActivation, emitActivationGrad } from './activation.js';
import { channelsOf, convertLayout, fields, inLayout, nonChannelAxes, reduceSum, spatialShape, valueOf, type BackwardStep, type EmitContext, type Forward, type Layer, type LayerEmitter, type SpatialLayout, type Value } from './context.js';

/** Spatial geometry of one 2-D convolution or pooling window. */
export interface ConvGeometry {
  kernel: [number, number];
  strides: [number, number];
  dilations: [number, number];
  /** ONNX order: [top, left, bottom, right]. */
  pads: [number, number, number, number];
  input: [number, number];
  output: [number, number];
  /** Rows/columns at the end of the input that no window reads (ConvTranspose output_padding). */
  outputPadding: [number, number];
}

/** The geometry of a TF `same`/`valid` window over an input of size `input`. */
export function convGeometry(padding: string, input: [number, number], kernel: [number, number], strides: [number, number], dilations: [number, number] = [1, 1]): ConvGeometry {
  const out: number[] = [];
  const begin: number[] = [];
  const end: number[] = [];
  const extra: number[] = [];
  for (let i = 0; i < 2; i++) {
    const extent = (kernel[i] - 1) * dilations[i] + 1;
    const size = padding === 'same' ? Math.ceil(input[i] / strides[i]) : Math.ceil((input[i] - extent + 1) / strides[i]);
    const total = padding === 'same' ? Math.max((size - 1) * strides[i] + extent - input[i], 0) : 0;
    out.push(size);
    begin.push(Math.floor(total / 2));
    end.push(total - Math.floor(total / 2));
    extra.push((input[i] + total - extent) % strides[i]);
  }
  return { kernel, strides, dilations, pads: [begin[0], begin[1], end[0], end[1]], input, output: [out[0], out[1]], outputPadding: [extra[0], extra[1]] };
}

const pair = (v: unknown): [number, number] => (Array.isArray(v) ? [v[0], v.length > 1 ? v[1] : v[0]] : [v as number, v as number]);

function geometryOf(ctx: EmitContext, layer: Layer, x: Value): ConvGeometry {
  const f = fields(layer);
  if (x.layout === 'flat') ctx.refuse(layer, 'input is not rank 4');
  if ((f.dataFormat ?? 'channelsLast') !== 'channelsLast') ctx.refuse(layer, `data format ${String(f.dataFormat)}`);
  const padding = f.padding as string;
  if (padding !== 'same' && padding !== 'valid') ctx.refuse(layer, `padding ${padding}`);
  const dilations = pair(f.dilationRate ?? 1);
  // TF.js cannot differentiate dilated convolutions (and its depthwise kernels ignore dilation),
  // so there is no reference to match: refuse.
  if (dilations.some((d) => d !== 1)) ctx.refuse(layer, 'dilated convolution');
  return convGeometry(padding, spatialShape(x), pair(f.kernelSize), pair(f.strides), dilations);
}

function convAttributes(geometry: ConvGeometry, group: number) {
  return { kernel_shape: geometry.kernel, strides: geometry.strides, dilations: geometry.dilations, pads: geometry.pads, group };
}

/** Dense kernel HWIO → ONNX OIHW. */
const kernelToOnnx = (g: OnnxGraph, kernel: string) => g.op('Transpose', [kernel], { perm: [3, 2, 0, 1] }, 'kernel_oihw');

/** Depthwise kernel `[kh, kw, C, M]` → ONNX `[C·M, 1, kh, kw]`. */
function depthwiseToOnnx(g: OnnxGraph, kernel: string, channels: number, multiplier: number, geometry: ConvGeometry): string {
  const chw = g.op('Transpose', [kernel], { perm: [2, 3, 0, 1] }, 'depthwise_cmhw');
  return g.op('Reshape', [chw, g.int64s([channels * multiplier, 1, ...geometry.kernel])], {}, 'depthwise_oihw');
}

const isPointwise = (geometry: ConvGeometry) => geometry.kernel.every((k) => k === 1) && geometry.strides.every((s) => s === 1) && geometry.pads.every((p) => p === 0);

/**
 * Gradient of the input of a convolution. Stride 1: a convolution of dY with the kernel
 * flipped and its channel roles swapped (`swapped`: the TF kernel as `[group·in, out/group, kh, kw]`
 * before flipping), padded to `extent − 1 − pad` (onnxruntime's grouped ConvTranspose is about
 * twice as slow). Strided: ConvTranspose with the forward weight `weight`.
 */
function inputGradient(g: OnnxGraph, dZ: string, weight: string, swapped: () => string, geometry: ConvGeometry, group: number, hint: string): string {
  if (geometry.strides.some((s) => s !== 1)) return g.op('ConvTranspose', [dZ, weight], { ...convAttributes(geometry, group), output_padding: geometry.outputPadding }, hint);
  const flipped = g.op('Slice', [swapped(), g.int64s([-1, -1]), g.int64s([-(2 ** 31), -(2 ** 31)]), g.int64s([2, 3]), g.int64s([-1, -1])], {}, `${hint}/flipped_kernel`);
  const extent = geometry.kernel.map((k, i) => (k - 1) * geometry.dilations[i] + 1);
  const [top, left, bottom, right] = geometry.pads;
  const pads = [extent[0] - 1 - top, extent[1] - 1 - left, extent[0] - 1 - bottom, extent[1] - 1 - right];
  return g.op('Conv', [dZ, flipped], { kernel_shape: geometry.kernel, dilations: geometry.dilations, pads, group }, hint);
}

/** A TF kernel `[kh, kw, A, B]` as `[A, B, kh, kw]` (dense: `[in, out, …]`; depthwise: `[C, M, …]`). */
const channelsFirst = (g: OnnxGraph, kernel: string) => () => g.op('Transpose', [kernel], { perm: [2, 3, 0, 1] }, 'kernel_abhw');

/** Slices a `[…, kh', kw']` filter gradient down to the kernel. */
function cropKernel(g: OnnxGraph, grad: string, geometry: ConvGeometry): string {
  const full = geometry.kernel.map((k, i) => geometry.input[i] + geometry.pads[i] + geometry.pads[i + 2] - (geometry.output[i] - 1) * geometry.strides[i]);
  const wide = full.map((f, i) => Math.floor((f - 1) / geometry.dilations[i]) + 1);
  if (wide[0] === geometry.kernel[0] && wide[1] === geometry.kernel[1]) return grad;
  return g.op('Slice', [grad, g.int64s([0, 0]), g.int64s(geometry.kernel), g.int64s([2, 3])], {}, 'crop_kernel');
}

/** dW of a dense convolution in TF layout `[kh, kw, Cin, Cout]`. */
function filterGradient(g: OnnxGraph, x: Value, dZ: string, cout: number, geometry: ConvGeometry, hint: string): string {
  const cin = x.shape[0];
  if (isPointwise(geometry)) {
    const xs = g.op('Reshape', [g.op('Transpose', [x.name], { perm: [1, 0, 2, 3] }), g.int64s([cin, -1])]);
    const dys = g.op('Reshape', [g.op('Transpose', [dZ], { perm: [0, 2, 3, 1] }), g.int64s([-1, cout])]);
    return g.op('Reshape', [g.op('MatMul', [xs, dys]), g.int64s([1, 1, cin, cout])], {}, hint);
  }
  const xt = g.op('Transpose', [x.name], { perm: [1, 0, 2, 3] }, `${hint}/x_cnhw`);
  const dyt = g.op('Transpose', [dZ], { perm: [1, 0, 2, 3] }, `${hint}/dy_cnhw`);
  const swapped = { kernel_shape: geometry.output, strides: geometry.dilations, dilations: geometry.strides, pads: geometry.pads, group: 1 };
  const grad = cropKernel(g, g.op('Conv', [xt, dyt], swapped, `${hint}/io_hw`), geometry);
  return g.op('Transpose', [grad], { perm: [2, 3, 0, 1] }, hint);
}

/** dW of a depthwise convolution in TF layout `[kh, kw, C, M]`. */
function depthwiseFilterGradient(g: OnnxGraph, x: Value, dZ: string, multiplier: number, geometry: ConvGeometry, hint: string): string {
  const [channels, height, width] = x.shape;
  const [oh, ow] = geometry.output;
  const rows = g.op('Reshape', [g.op('Transpose', [x.name], { perm: [1, 0, 2, 3] }), g.int64s([1, -1, height, width])], {}, `${hint}/x_1cnhw`);
  let kernel: string;
  if (multiplier === 1) kernel = g.op('Transpose', [dZ], { perm: [1, 0, 2, 3] }, `${hint}/dy_cnhw`);
  else {
    const split = g.op('Reshape', [dZ, g.int64s([0, channels, multiplier, oh, ow])]);
    kernel = g.op('Reshape', [g.op('Transpose', [split], { perm: [1, 2, 0, 3, 4] }), g.int64s([channels * multiplier, -1, oh, ow])], {}, `${hint}/dy_cmnhw`);
  }
  const swapped = { kernel_shape: geometry.output, strides: geometry.dilations, dilations: geometry.strides, pads: geometry.pads, group: channels };
  const grad = cropKernel(g, g.op('Conv', [rows, kernel], swapped, `${hint}/cm_hw`), geometry);
  const cmhw = g.op('Reshape', [grad, g.int64s([channels, multiplier, ...geometry.kernel])]);
  return g.op('Transpose', [cmhw], { perm: [2, 3, 0, 1] }, hint);
}

/**
 * dW of a depthwise convolution as a sum of shifted products in NHWC, for small kernels:
 * `dW[a, b, c, m] = Σ_{n,y,x} Xpad[n, y·s + a·d, x·s + b·d, c] · dZ[n, y, x, c·M + m]`, one
 * strided Slice, Mul and ReduceSum over the leading axes per tap (about 2.5x faster in
 * onnxruntime than the grouped-conv form for a 3x3 kernel on 7x7x960). Already TF layout.
 */
function shiftedDepthwiseFilterGradient(g: OnnxGraph, x: Value, dZ: string, multiplier: number, geometry: ConvGeometry, hint: string): string {
  const channels = channelsOf(x);
  const [top, left, bottom, right] = geometry.pads;
  const padded = geometry.pads.some((p) => p > 0) ? g.op('Pad', [x.name, g.int64s([0, top, left, 0, 0, bottom, right, 0])], { mode: 'constant' }, `${hint}/x_padded`) : x.name;
  // [N, oh, ow, C, M] against slices [N, oh, ow, C, 1] when there is a multiplier.
  const grad = multiplier === 1 ? dZ : g.op('Reshape', [dZ, g.int64s([0, ...geometry.output, channels, multiplier])]);
  const taps: string[] = [];
  for (let a = 0; a < geometry.kernel[0]; a++)
    for (let b = 0; b < geometry.kernel[1]; b++) {
      const start = [a * geometry.dilations[0], b * geometry.dilations[1]];
      const end = start.map((s0, i) => s0 + (geometry.output[i] - 1) * geometry.strides[i] + 1);
      let window = g.op('Slice', [padded, g.int64s(start), g.int64s(end), g.int64s([1, 2]), g.int64s(geometry.strides)]);
      if (multiplier !== 1) window = g.op('Unsqueeze', [window, g.int64s([4])]);
      taps.push(g.op('Unsqueeze', [reduceSum(g, g.op('Mul', [window, grad]), [0, 1, 2]), g.int64s([0])]));
    }
  return g.op('Reshape', [g.op('Concat', taps, { axis: 0 }), g.int64s([...geometry.kernel, channels, multiplier])], {}, hint);
}

/** Kernels up to this many taps take the shifted form of the depthwise dW. */
const SHIFTED_DEPTHWISE_MAX_TAPS = 25;

/** dW of a depthwise convolution whose output gradient `dZ` is NCHW, in TF layout. */
function depthwiseKernelGradient(g: OnnxGraph, x: Value, dZ: string, multiplier: number, geometry: ConvGeometry, hint: string): string {
  if (geometry.kernel[0] * geometry.kernel[1] > SHIFTED_DEPTHWISE_MAX_TAPS) return depthwiseFilterGradient(g, inLayout(g, x, 'nchw'), dZ, multiplier, geometry, hint);
  return shiftedDepthwiseFilterGradient(g, inLayout(g, x, 'nhwc'), convertLayout(g, dZ, 'nchw', 'nhwc', `${hint}/dz_nhwc`), multiplier, geometry, hint);
}

function biasOf(layer: Layer): LayerVariable | null {
  const f = fields(layer);
  return f.useBias ? (f.bias as LayerVariable) : null;
}

/** Emits bias gradient and activation backward; returns dZ (gradient before the activation). */
function headBackward(ctx: EmitContext, step: BackwardStep): string {
  const { layer, saved } = step;
  const dZ = emitActivationGrad(ctx.g, activationOf(ctx, layer), saved.z, step.output.name, step.dOutput, `${layer.name}/d_z`);
  const bias = biasOf(layer);
  if (bias && ctx.wantsGradient(bias)) ctx.addGradient(bias, reduceSum(ctx.g, dZ, nonChannelAxes(step.output), false, `${layer.name}/d_bias`));
  return dZ;
}

/** An NCHW convolution (+ bias, activation) of the NCHW value `x`. */
function forwardWith(ctx: EmitContext, layer: Layer, x: Value, weight: string, group: number, channels: number, geometry: ConvGeometry): Forward {
  const bias = biasOf(layer);
  const inputs = [x.name, weight, ...(bias ? [ctx.weight(bias)] : [])];
  const z = ctx.g.op('Conv', inputs, convAttributes(geometry, group), `${layer.name}/conv`);
  const output = valueOf(z, [...geometry.output, channels], 'nchw');
  output.name = emitActivation(ctx, layer, activationOf(ctx, layer), output);
  return { output, saved: { z, weight } };
}

/** A 1x1 kernel `[1, 1, in, out]` as the matrix `[in, out]`. */
const kernelMatrix = (g: OnnxGraph, kernel: string, shape: number[]) => g.op('Reshape', [kernel, g.int64s([shape[2], shape[3]])], {}, 'kernel_matrix');

/** A 1x1 stride-1 Conv2D on an NHWC value: `z = x·W (+ b)`, one MatMul over the channels. */
function pointwiseForward(ctx: EmitContext, layer: Layer, x: Value): Forward {
  const g = ctx.g;
  const kernel = fields(layer).kernel as LayerVariable;
  let z = g.op('MatMul', [x.name, kernelMatrix(g, ctx.weight(kernel), kernel.shape as number[])], {}, `${layer.name}/matmul`);
  const bias = biasOf(layer);
  if (bias) z = g.op('Add', [z, ctx.weight(bias)], {}, `${layer.name}/bias`);
  const output = valueOf(z, [...spatialShape(x), fields(layer).filters as number], 'nhwc');
  output.name = emitActivation(ctx, layer, activationOf(ctx, layer), output);
  return { output, saved: { z } };
}

/** Its backward: `dW = X₂ᵀ·dZ₂`, `dX = dZ₂·Wᵀ` on `[N·H·W, C]` matrices, no transposes. */
function pointwiseBackward(ctx: EmitContext, layer: Layer, x: Value, dZ: string, needInput: boolean): string | null {
  const g = ctx.g;
  const kernel = fields(layer).kernel as LayerVariable;
  const [, , cin, cout] = kernel.shape as number[];
  const dZ2 = g.op('Reshape', [dZ, g.int64s([-1, cout])]);
  if (ctx.wantsGradient(kernel)) {
    const x2 = g.op('Reshape', [x.name, g.int64s([-1, cin])]);
    ctx.addGradient(kernel, g.op('Reshape', [g.op('Gemm', [x2, dZ2], { transA: 1 }), g.int64s([1, 1, cin, cout])], {}, `${layer.name}/d_kernel`));
  }
  if (!needInput) return null;
  const dX2 = g.op('Gemm', [dZ2, kernelMatrix(g, ctx.weight(kernel), kernel.shape as number[])], { transB: 1 });
  return g.op('Reshape', [dX2, g.int64s([-1, ...spatialShape(x), cin])], {}, `${layer.name}/d_input`);
}

/** Conv2D: 1x1 stride 1 as MatMuls in NHWC; any other kernel as an NCHW Conv. */
export const conv2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const geometry = geometryOf(ctx, layer, x);
    if (isPointwise(geometry)) return pointwiseForward(ctx, layer, inLayout(ctx.g, x, 'nhwc'));
    const kernel = fields(layer).kernel as LayerVariable;
    return forwardWith(ctx, layer, inLayout(ctx.g, x, 'nchw'), kernelToOnnx(ctx.g, ctx.weight(kernel)), 1, fields(layer).filters as number, geometry);
  },
  backward(ctx, step) {
    const { layer, inputs: [x], saved } = step;
    const g = ctx.g;
    const geometry = geometryOf(ctx, layer, x);
    const dZ = headBackward(ctx, step);
    const back = (dX: string | null, from: SpatialLayout) => [dX && convertLayout(g, dX, from, x.layout as SpatialLayout, `${layer.name}/d_input_${x.layout}`)];
    if (isPointwise(geometry)) return back(pointwiseBackward(ctx, layer, inLayout(g, x, 'nhwc'), dZ, step.needInput[0]), 'nhwc');
    const xc = inLayout(g, x, 'nchw');
    const kernel = fields(layer).kernel as LayerVariable;
    if (ctx.wantsGradient(kernel)) ctx.addGradient(kernel, filterGradient(g, xc, dZ, channelsOf(step.output), geometry, `${layer.name}/d_kernel`));
    if (!step.needInput[0]) return [null];
    return back(inputGradient(g, dZ, saved.weight, channelsFirst(g, ctx.weight(kernel)), geometry, 1, `${layer.name}/d_input`), 'nchw');
  },
};

export const depthwiseConv2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const geometry = geometryOf(ctx, layer, x);
    const multiplier = fields(layer).depthMultiplier as number;
    const kernel = fields(layer).depthwiseKernel as LayerVariable;
    const channels = channelsOf(x);
    const weight = depthwiseToOnnx(ctx.g, ctx.weight(kernel), channels, multiplier, geometry);
    return forwardWith(ctx, layer, inLayout(ctx.g, x, 'nchw'), weight, channels, channels * multiplier, geometry);
  },
  backward(ctx, step) {
    const { layer, inputs: [x], saved } = step;
    const g = ctx.g;
    const geometry = geometryOf(ctx, layer, x);
    const dZ = headBackward(ctx, step);
    const kernel = fields(layer).depthwiseKernel as LayerVariable;
    const multiplier = fields(layer).depthMultiplier as number;
    if (ctx.wantsGradient(kernel)) ctx.addGradient(kernel, depthwiseKernelGradient(g, x, dZ, multiplier, geometry, `${layer.name}/d_depthwise_kernel`));
    if (!step.needInput[0]) return [null];
    const dX = inputGradient(g, dZ, saved.weight, channelsFirst(g, ctx.weight(kernel)), geometry, channelsOf(x), `${layer.name}/d_input`);
    return [convertLayout(g, dX, 'nchw', x.layout as SpatialLayout)];
  },
};

/** SeparableConv2D: depthwise (no bias), then a pointwise conv with the bias and activation, in NCHW. */
export const separableConv2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const f = fields(layer);
    const geometry = geometryOf(ctx, layer, x);
    const multiplier = f.depthMultiplier as number;
    const channels = channelsOf(x);
    const depthwise = depthwiseToOnnx(ctx.g, ctx.weight(f.depthwiseKernel as LayerVariable), channels, multiplier, geometry);
    const mid = ctx.g.op('Conv', [inLayout(ctx.g, x, 'nchw').name, depthwise], convAttributes(geometry, channels), `${layer.name}/depthwise`);
    const midValue = valueOf(mid, [...geometry.output, channels * multiplier], 'nchw');
    const pointwise = kernelToOnnx(ctx.g, ctx.weight(f.pointwiseKernel as LayerVariable));
    const forward = forwardWith(ctx, layer, midValue, pointwise, 1, f.filters as number, convGeometry('valid', geometry.output, [1, 1], [1, 1]));
    return { output: forward.output, saved: { ...forward.saved, depthwise, mid } };
  },
  backward(ctx, step) {
    const { layer, inputs: [x], saved } = step;
    const f = fields(layer);
    const g = ctx.g;
    const geometry = geometryOf(ctx, layer, x);
    const multiplier = f.depthMultiplier as number;
    const channels = channelsOf(x);
    const dZ = headBackward(ctx, step);
    const mid = valueOf(saved.mid, [...geometry.output, channels * multiplier], 'nchw');
    const pointwiseGeometry = convGeometry('valid', geometry.output, [1, 1], [1, 1]);
    const pointwise = f.pointwiseKernel as LayerVariable;
    const depthwise = f.depthwiseKernel as LayerVariable;
    if (ctx.wantsGradient(pointwise)) ctx.addGradient(pointwise, filterGradient(g, mid, dZ, channelsOf(step.output), pointwiseGeometry, `${layer.name}/d_pointwise_kernel`));
    const transposed = g.op('Transpose', [ctx.weight(pointwise)], { perm: [2, 3, 0, 1] });
    const dMid = g.op('Conv', [dZ, transposed], { kernel_shape: [1, 1] }, `${layer.name}/d_mid`);
    if (ctx.wantsGradient(depthwise)) ctx.addGradient(depthwise, depthwiseKernelGradient(g, x, dMid, multiplier, geometry, `${layer.name}/d_depthwise_kernel`));
    if (!step.needInput[0]) return [null];
    const dX = inputGradient(g, dMid, saved.depthwise, channelsFirst(g, ctx.weight(depthwise)), geometry, channels, `${layer.name}/d_input`);
    return [convertLayout(g, dX, 'nchw', x.layout as SpatialLayout)];
  },
};
