/**
 * Layers that move values without arithmetic: Flatten and Reshape (Keras order is channels
 * last, so an NCHW value goes through NHWC first), ZeroPadding2D (backward: Slice),
 * Cropping2D (backward: Pad) and Dropout.
 *
 * Dropout in training mode multiplies by a mask fed as a graph input (`0` or `1/(1−rate)`,
 * NHWC), which the trainer draws with TF.js's own `tf.dropout` under the step's seed, so the
 * two routes drop the same units. In evaluation graphs it is the identity.
 */
import { fields, fromNhwc, kerasShapeOf, nhwcShapeOf, toNhwc, valueShape, type LayerEmitter } from './context.js';

/** Flatten and Reshape: reshape in Keras (channels-last) order. */
export const reshape: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const outShape = nhwcShapeOf(layer.outputShape as (number | null)[]);
    const g = ctx.g;
    const flat = g.op('Reshape', [toNhwc(g, x), g.int64s([-1, ...outShape])], {}, `${layer.name}/reshape`);
    const { shape, layout } = valueShape(outShape);
    if (shape.length !== 1 && shape.length !== 3) ctx.refuse(layer, `output of rank ${shape.length + 1}`);
    return { output: { name: fromNhwc(g, flat, outShape), shape, layout } };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const inShape = kerasShapeOf(step.inputs[0]);
    const back = g.op('Reshape', [toNhwc(g, { ...step.output, name: step.dOutput }), g.int64s([-1, ...inShape])]);
    return [fromNhwc(g, back, inShape, `${step.layer.name}/d_input`)];
  },
};

type Pairs = [[number, number], [number, number]];

export const zeroPadding2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    if (x.layout !== 'nchw' || (fields(layer).dataFormat ?? 'channelsLast') !== 'channelsLast') ctx.refuse(layer, 'not a channels-last rank-4 input');
    const [[top, bottom], [left, right]] = fields(layer).padding as Pairs;
    const y = ctx.g.op('Pad', [x.name, ctx.g.int64s([0, 0, top, left, 0, 0, bottom, right])], { mode: 'constant' }, `${layer.name}/pad`);
    return { output: { name: y, shape: [x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right], layout: 'nchw' } };
  },
  backward(ctx, step) {
    const [[top], [left]] = fields(step.layer).padding as Pairs;
    const [, h, w] = step.inputs[0].shape;
    const g = ctx.g;
    return [g.op('Slice', [step.dOutput, g.int64s([top, left]), g.int64s([top + h, left + w]), g.int64s([2, 3])], {}, `${step.layer.name}/d_input`)];
  },
};

export const cropping2d: LayerEmitter = {
  forward(ctx, layer, [x]) {
    if (x.layout !== 'nchw' || (fields(layer).dataFormat ?? 'channelsLast') !== 'channelsLast') ctx.refuse(layer, 'not a channels-last rank-4 input');
    const [[top, bottom], [left, right]] = fields(layer).cropping as Pairs;
    const [c, h, w] = x.shape;
    const g = ctx.g;
    const y = g.op('Slice', [x.name, g.int64s([top, left]), g.int64s([h - bottom, w - right]), g.int64s([2, 3])], {}, `${layer.name}/crop`);
    return { output: { name: y, shape: [c, h - top - bottom, w - left - right], layout: 'nchw' } };
  },
  backward(ctx, step) {
    const [[top, bottom], [left, right]] = fields(step.layer).cropping as Pairs;
    return [ctx.g.op('Pad', [step.dOutput, ctx.g.int64s([0, 0, top, left, 0, 0, bottom, right])], { mode: 'constant' }, `${step.layer.name}/d_input`)];
  },
};

export const dropout: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const f = fields(layer);
    if (ctx.mode === 'evaluate' || (f.rate as number) === 0) return { output: x };
    if (f.noiseShape != null) ctx.refuse(layer, 'dropout with a noise shape');
    const mask = fromNhwc(ctx.g, ctx.maskInput(layer, kerasShapeOf(x)), kerasShapeOf(x), `${layer.name}/mask`);
    return { output: { ...x, name: ctx.g.op('Mul', [x.name, mask], {}, `${layer.name}/dropout`) }, saved: { mask } };
  },
  backward(ctx, step) {
    if (!step.saved.mask) return [step.dOutput];
    return [ctx.g.op('Mul', [step.dOutput, step.saved.mask], {}, `${step.layer.name}/d_input`)];
  },
};
