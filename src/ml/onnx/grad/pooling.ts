/**
 * Pooling layers.
 *
 * - GlobalAveragePooling2D: dX = dY/(H·W) expanded over H, W.
 * - GlobalMaxPooling2D: dX = dY where x equals the max (ties all receive it, like TF.js's
 *   `max` gradient).
 * - MaxPooling2D: MaxPool's second output holds each window's argmax as a flat index into the
 *   input; dX scatters dY there (ScatterElements, reduction add, for overlapping windows).
 * - AveragePooling2D: dX is a grouped ConvTranspose of dY with a constant kernel. TF.js's
 *   `avgPoolGrad` divides by the full window size even where `same` padding made the forward
 *   average fewer pixels; we follow TF.js, so gradients match the route they replace.
 */
import { convGeometry, type ConvGeometry } from './conv.js';
import { channelsOf, convertLayout, fields, inLayout, spatialAxes, spatialShape, valueOf, type EmitContext, type Layer, type LayerEmitter, type SpatialLayout, type Value } from './context.js';

function checkChannelsLast(ctx: EmitContext, layer: Layer, x: Value): void {
  if (x.layout === 'flat') ctx.refuse(layer, 'input is not rank 4');
  const format = fields(layer).dataFormat;
  if (format !== undefined && format !== 'channelsLast') ctx.refuse(layer, `data format ${String(format)}`);
}

function keepsDims(layer: Layer): boolean {
  return Boolean(fields(layer).keepDims);
}

const globalOutput = (layer: Layer, x: Value, name: string): Value => (keepsDims(layer) ? valueOf(name, [1, 1, channelsOf(x)], x.layout as SpatialLayout) : valueOf(name, [channelsOf(x)]));

/** dY with unit spatial axes in x's layout, whatever the layer's keepDims. */
const asColumns = (ctx: EmitContext, layer: Layer, x: Value, dY: string) => (keepsDims(layer) ? dY : ctx.g.op('Unsqueeze', [dY, ctx.g.int64s(spatialAxes(x))]));

export const globalAveragePooling2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    checkChannelsLast(ctx, layer, x);
    return { output: globalOutput(layer, x, ctx.g.op('ReduceMean', [x.name], { axes: spatialAxes(x), keepdims: keepsDims(layer) ? 1 : 0 }, `${layer.name}/gap`)) };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const [x] = step.inputs;
    const [h, w] = spatialShape(x);
    const share = g.op('Mul', [asColumns(ctx, step.layer, x, step.dOutput), g.floats([1 / (h * w)])]);
    return [g.op('Expand', [share, g.op('Shape', [x.name])], {}, `${step.layer.name}/d_input`)];
  },
};

export const globalMaxPooling2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    checkChannelsLast(ctx, layer, x);
    const max = ctx.g.op('ReduceMax', [x.name], { axes: spatialAxes(x), keepdims: 1 }, `${layer.name}/gmp`);
    const out = keepsDims(layer) ? max : ctx.g.op('Squeeze', [max, ctx.g.int64s(spatialAxes(x))], {}, `${layer.name}/gmp_flat`);
    return { output: globalOutput(layer, x, out), saved: { max } };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const hit = g.op('Equal', [step.inputs[0].name, step.saved.max]);
    return [g.op('Where', [hit, asColumns(ctx, step.layer, step.inputs[0], step.dOutput), g.floats([0])], {}, `${step.layer.name}/d_input`)];
  },
};

function poolGeometry(ctx: EmitContext, layer: Layer, x: Value): ConvGeometry {
  checkChannelsLast(ctx, layer, x);
  const f = fields(layer);
  const padding = f.padding as string;
  if (padding !== 'same' && padding !== 'valid') ctx.refuse(layer, `padding ${padding}`);
  return convGeometry(padding, spatialShape(x), f.poolSize as [number, number], f.strides as [number, number]);
}

const poolOutput = (x: Value, geometry: ConvGeometry, name: string): Value => valueOf(name, [...geometry.output, channelsOf(x)], 'nchw');

/** A pool's input gradient (NCHW) in the layout of its input. */
const back = (ctx: EmitContext, x: Value, dX: string, hint: string) => convertLayout(ctx.g, dX, 'nchw', x.layout as SpatialLayout, hint);

export const maxPooling2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const geometry = poolGeometry(ctx, layer, x);
    const [y, indices] = ctx.g.node('MaxPool', [inLayout(ctx.g, x, 'nchw').name], { kernel_shape: geometry.kernel, strides: geometry.strides, pads: geometry.pads }, { hint: `${layer.name}/maxpool`, outputs: 2 });
    return { output: poolOutput(x, geometry, y), saved: { indices } };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const [x] = step.inputs;
    const shape = g.op('Shape', [inLayout(g, x, 'nchw').name]);
    const zeros = g.op('ConstantOfShape', [g.op('ReduceProd', [shape], { keepdims: 1 })]);
    const flat = (t: string) => g.op('Reshape', [t, g.int64s([-1])]);
    const scattered = g.op('ScatterElements', [zeros, flat(step.saved.indices), flat(step.dOutput)], { axis: 0, reduction: 'add' });
    return [back(ctx, x, g.op('Reshape', [scattered, shape], {}, `${step.layer.name}/d_input`), `${step.layer.name}/d_input_${x.layout}`)];
  },
};

export const averagePooling2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const geometry = poolGeometry(ctx, layer, x);
    const y = ctx.g.op('AveragePool', [inLayout(ctx.g, x, 'nchw').name], { kernel_shape: geometry.kernel, strides: geometry.strides, pads: geometry.pads, count_include_pad: 0 }, `${layer.name}/avgpool`);
    return { output: poolOutput(x, geometry, y) };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const [x] = step.inputs;
    const geometry = poolGeometry(ctx, step.layer, x);
    const [kh, kw] = geometry.kernel;
    const channels = channelsOf(x);
    const kernel = g.initializer(`${step.layer.name}/avg_kernel`, new Float32Array(channels * kh * kw).fill(1 / (kh * kw)), [channels, 1, kh, kw]);
    const attributes = { kernel_shape: geometry.kernel, strides: geometry.strides, pads: geometry.pads, group: channels, output_padding: geometry.outputPadding };
    return [back(ctx, x, g.op('ConvTranspose', [step.dOutput, kernel], attributes, `${step.layer.name}/d_input`), `${step.layer.name}/d_input_${x.layout}`)];
  },
};
