/**
 * Merge layers: Add, Multiply, Average (inputs of one rank, broadcasting over unit
 * dimensions: the gradient of a broadcast input is summed over them) and Concatenate (backward is a Split along the same axis). Inputs are brought to the first
 * input's layout; each input's gradient goes back to its own.
 */
import { convertLayout, graphAxis, inLayout, reduceSum, type EmitContext, type Layer, type LayerEmitter, type SpatialLayout, type Value } from './context.js';

/** The inputs in the first input's layout. */
function aligned(ctx: EmitContext, inputs: Value[]): Value[] {
  const layout = inputs[0].layout;
  return inputs.map((v) => (layout === 'flat' ? v : inLayout(ctx.g, v, layout)));
}

/**
 * The inputs aligned to one layout, and the output value. Inputs of one rank may broadcast
 * where a dimension is 1 (squeeze-excite multiplies `[H, W, C]` by `[1, 1, C]`).
 */
function broadcastShapes(ctx: EmitContext, layer: Layer, inputs: Value[]): { values: Value[]; output: Value } {
  const values = aligned(ctx, inputs);
  if (values.some((v) => v.shape.length !== values[0].shape.length)) ctx.refuse(layer, 'inputs of different ranks');
  const shape = values[0].shape.map((_, i) => Math.max(...values.map((v) => v.shape[i])));
  if (values.some((v) => v.shape.some((d, i) => d !== shape[i] && d !== 1))) ctx.refuse(layer, 'inputs whose shapes do not broadcast');
  return { values, output: { name: '', shape, layout: values[0].layout } };
}

/**
 * `gradient` (of the output, in its layout) for input `i`: summed over the axes the input
 * was broadcast along, then in the input's own layout.
 */
function backTo(ctx: EmitContext, step: { inputs: Value[]; output: Value }, i: number, gradient: string): string {
  const aligned0 = aligned(ctx, step.inputs)[i];
  const axes = aligned0.shape.flatMap((d, k) => (d === 1 && step.output.shape[k] !== 1 ? [k + 1] : []));
  const summed = axes.length ? reduceSum(ctx.g, gradient, axes, true, `${step.inputs[i].name}/d_broadcast`) : gradient;
  const input = step.inputs[i];
  return input.layout === 'flat' ? summed : convertLayout(ctx.g, summed, step.output.layout, input.layout as SpatialLayout);
}

const chain = (ctx: EmitContext, op: string, names: string[], hint: string) => names.reduce((a, b) => ctx.g.op(op, [a, b], {}, hint));

export const add: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const { values, output } = broadcastShapes(ctx, layer, inputs);
    return { output: { ...output, name: chain(ctx, 'Add', values.map((v) => v.name), `${layer.name}/add`) } };
  },
  backward(ctx, step) {
    return step.needInput.map((need, i) => (need ? backTo(ctx, step, i, step.dOutput) : null));
  },
};

export const average: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const { values, output } = broadcastShapes(ctx, layer, inputs);
    const sum = chain(ctx, 'Add', values.map((v) => v.name), `${layer.name}/sum`);
    return { output: { ...output, name: ctx.g.op('Mul', [sum, ctx.g.floats([1 / inputs.length])], {}, `${layer.name}/average`) } };
  },
  backward(ctx, step) {
    const share = ctx.g.op('Mul', [step.dOutput, ctx.g.floats([1 / step.inputs.length])], {}, `${step.layer.name}/d_input`);
    return step.needInput.map((need, i) => (need ? backTo(ctx, step, i, share) : null));
  },
};

export const multiply: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const { values, output } = broadcastShapes(ctx, layer, inputs);
    return { output: { ...output, name: chain(ctx, 'Mul', values.map((v) => v.name), `${layer.name}/mul`) } };
  },
  backward(ctx, step) {
    const values = aligned(ctx, step.inputs);
    return values.map((_, i) => {
      if (!step.needInput[i]) return null;
      const others = values.filter((_, j) => j !== i).map((v) => v.name);
      return backTo(ctx, step, i, chain(ctx, 'Mul', [step.dOutput, ...others], `${step.layer.name}/d_input`));
    });
  },
};

const concatAxis = (layer: Layer) => (layer as unknown as { axis: number }).axis;

export const concatenate: LayerEmitter = {
  forward(ctx, layer, inputs) {
    if (inputs.some((v) => v.shape.length !== inputs[0].shape.length)) ctx.refuse(layer, 'inputs of different ranks');
    const values = aligned(ctx, inputs);
    const axis = graphAxis(values[0], concatAxis(layer));
    if (axis === 0) ctx.refuse(layer, 'concatenation over the batch');
    const shape = [...values[0].shape];
    shape[axis - 1] = values.reduce((n, v) => n + v.shape[axis - 1], 0);
    return { output: { name: ctx.g.op('Concat', values.map((v) => v.name), { axis }, `${layer.name}/concat`), shape, layout: values[0].layout } };
  },
  backward(ctx, step) {
    const values = aligned(ctx, step.inputs);
    const axis = graphAxis(values[0], concatAxis(step.layer));
    const sizes = values.map((v) => v.shape[axis - 1]);
    const parts = ctx.g.node('Split', [step.dOutput, ctx.g.int64s(sizes)], { axis }, { hint: `${step.layer.name}/d_input`, outputs: sizes.length });
    return parts.map((p, i) => (step.needInput[i] ? (step.inputs[i].layout === 'flat' ? p : convertLayout(ctx.g, p, values[0].layout as SpatialLayout, step.inputs[i].layout as SpatialLayout)) : null));
  },
};
