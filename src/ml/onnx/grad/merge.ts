/**
 * Merge layers: Add, Multiply, Average (inputs of one shape; broadcasting merges are refused)
 * and Concatenate (backward is a Split along the same axis). Inputs are brought to the first
 * input's layout; each input's gradient goes back to its own.
 */
import { convertLayout, graphAxis, inLayout, kerasShapeOf, type EmitContext, type Layer, type LayerEmitter, type SpatialLayout, type Value } from './context.js';

/** The inputs in the first input's layout. */
function aligned(ctx: EmitContext, inputs: Value[]): Value[] {
  const layout = inputs[0].layout;
  return inputs.map((v) => (layout === 'flat' ? v : inLayout(ctx.g, v, layout)));
}

function sameShapes(ctx: EmitContext, layer: Layer, inputs: Value[]): Value[] {
  const first = JSON.stringify(kerasShapeOf(inputs[0]));
  if (inputs.some((v) => JSON.stringify(kerasShapeOf(v)) !== first)) ctx.refuse(layer, 'inputs of different shapes (broadcasting merge)');
  return aligned(ctx, inputs);
}

/** `gradient` (in the output's layout) in the layout of input `i`. */
const backTo = (ctx: EmitContext, inputs: Value[], i: number, gradient: string) =>
  inputs[i].layout === 'flat' ? gradient : convertLayout(ctx.g, gradient, inputs[0].layout, inputs[i].layout as SpatialLayout);

const chain = (ctx: EmitContext, op: string, names: string[], hint: string) => names.reduce((a, b) => ctx.g.op(op, [a, b], {}, hint));

export const add: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const values = sameShapes(ctx, layer, inputs);
    return { output: { ...values[0], name: chain(ctx, 'Add', values.map((v) => v.name), `${layer.name}/add`) } };
  },
  backward(ctx, step) {
    return step.needInput.map((need, i) => (need ? backTo(ctx, step.inputs, i, step.dOutput) : null));
  },
};

export const average: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const values = sameShapes(ctx, layer, inputs);
    const sum = chain(ctx, 'Add', values.map((v) => v.name), `${layer.name}/sum`);
    return { output: { ...values[0], name: ctx.g.op('Mul', [sum, ctx.g.floats([1 / inputs.length])], {}, `${layer.name}/average`) } };
  },
  backward(ctx, step) {
    const share = ctx.g.op('Mul', [step.dOutput, ctx.g.floats([1 / step.inputs.length])], {}, `${step.layer.name}/d_input`);
    return step.needInput.map((need, i) => (need ? backTo(ctx, step.inputs, i, share) : null));
  },
};

export const multiply: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const values = sameShapes(ctx, layer, inputs);
    return { output: { ...values[0], name: chain(ctx, 'Mul', values.map((v) => v.name), `${layer.name}/mul`) } };
  },
  backward(ctx, step) {
    const values = aligned(ctx, step.inputs);
    return values.map((_, i) => {
      if (!step.needInput[i]) return null;
      const others = values.filter((_, j) => j !== i).map((v) => v.name);
      return backTo(ctx, step.inputs, i, chain(ctx, 'Mul', [step.dOutput, ...others], `${step.layer.name}/d_input`));
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
    return parts.map((p, i) => (step.needInput[i] ? backTo(ctx, step.inputs, i, p) : null));
  },
};
