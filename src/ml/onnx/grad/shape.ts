/**
 * Layers that move values without arithmetic: Flatten and Reshape (Keras order is channels
 * last, so an NCHW value goes through NHWC first), ZeroPadding2D (backward: Slice),
 * Cropping2D (backward: Pad) and Dropout.
 *
 * Dropout in training mode multiplies by a mask fed as a graph input (`0` or `1/(1−rate)`,
 * NHWC), which the trainer draws with TF.js's own `tf.dropout` under the step's seed, so the
 * two routes drop the same units. In evaluation graphs it is the identity.
 */
import type { OnnxGraph } from '../graph.js';
import { convertLayout, fields, kerasShapeOf, nhwcShapeOf, spatialAxes, toKeras, valueOf, type EmitContext, type Layer, type LayerEmitter, type SpatialLayout, type Value } from './context.js';

/** Flatten and Reshape: reshape in Keras (channels-last) order; a rank-4 result is NHWC. */
export const reshape: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const outShape = nhwcShapeOf(layer.outputShape as (number | null)[]);
    if (outShape.length !== 1 && outShape.length !== 3) ctx.refuse(layer, `output of rank ${outShape.length + 1}`);
    const y = ctx.g.op('Reshape', [toKeras(ctx.g, x), ctx.g.int64s([-1, ...outShape])], {}, `${layer.name}/reshape`);
    return { output: valueOf(y, outShape, 'nhwc') };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const [x] = step.inputs;
    const back = g.op('Reshape', [step.dOutput, g.int64s([-1, ...kerasShapeOf(x)])], {}, `${step.layer.name}/d_input`);
    return [x.layout === 'flat' ? back : convertLayout(g, back, 'nhwc', x.layout)];
  },
};

type Pairs = [[number, number], [number, number]];

function checkSpatial(ctx: EmitContext, layer: Layer, x: Value): void {
  if (x.layout === 'flat' || (fields(layer).dataFormat ?? 'channelsLast') !== 'channelsLast') ctx.refuse(layer, 'not a channels-last rank-4 input');
}

/** Pad's `pads` for [top, bottom], [left, right] in the value's layout. */
function padsOf(x: Value, [[top, bottom], [left, right]]: Pairs): number[] {
  return x.layout === 'nchw' ? [0, 0, top, left, 0, 0, bottom, right] : [0, top, left, 0, 0, bottom, right, 0];
}

const pad = (g: OnnxGraph, x: Value, tensor: string, amounts: Pairs, hint: string) => g.op('Pad', [tensor, g.int64s(padsOf(x, amounts))], { mode: 'constant' }, hint);

/** The window [top, top+h) × [left, left+w) of a tensor laid out like `x`. */
const crop = (g: OnnxGraph, x: Value, tensor: string, top: number, left: number, h: number, w: number, hint: string) =>
  g.op('Slice', [tensor, g.int64s([top, left]), g.int64s([top + h, left + w]), g.int64s(spatialAxes(x))], {}, hint);

export const zeroPadding2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    checkSpatial(ctx, layer, x);
    const padding = fields(layer).padding as Pairs;
    const [h, w, c] = kerasShapeOf(x);
    const y = pad(ctx.g, x, x.name, padding, `${layer.name}/pad`);
    return { output: valueOf(y, [h + padding[0][0] + padding[0][1], w + padding[1][0] + padding[1][1], c], x.layout as SpatialLayout) };
  },
  backward(ctx, step) {
    const [[top], [left]] = fields(step.layer).padding as Pairs;
    const [x] = step.inputs;
    const [h, w] = kerasShapeOf(x);
    return [crop(ctx.g, x, step.dOutput, top, left, h, w, `${step.layer.name}/d_input`)];
  },
};

export const cropping2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    checkSpatial(ctx, layer, x);
    const [[top, bottom], [left, right]] = fields(layer).cropping as Pairs;
    const [h, w, c] = kerasShapeOf(x);
    const y = crop(ctx.g, x, x.name, top, left, h - top - bottom, w - left - right, `${layer.name}/crop`);
    return { output: valueOf(y, [h - top - bottom, w - left - right, c], x.layout as SpatialLayout) };
  },
  backward(ctx, step) {
    return [pad(ctx.g, step.inputs[0], step.dOutput, fields(step.layer).cropping as Pairs, `${step.layer.name}/d_input`)];
  },
};

export const dropout: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const f = fields(layer);
    const rate = f.rate as number;
    // TF.js's Dropout drops only for 0 < rate < 1 and is the identity otherwise.
    if (ctx.mode === 'evaluate' || !(rate > 0 && rate < 1)) return { output: x };
    if (f.noiseShape != null) ctx.refuse(layer, 'dropout with a noise shape');
    const fed = ctx.maskInput(layer, kerasShapeOf(x));
    const mask = x.layout === 'flat' ? fed : convertLayout(ctx.g, fed, 'nhwc', x.layout, `${layer.name}/mask`);
    return { output: { ...x, name: ctx.g.op('Mul', [x.name, mask], {}, `${layer.name}/dropout`) }, saved: { mask } };
  },
  backward(ctx, step) {
    if (!step.saved.mask) return [step.dOutput];
    return [ctx.g.op('Mul', [step.dOutput, step.saved.mask], {}, `${step.layer.name}/d_input`)];
  },
};
