/**
 * Merge layers: Add, Multiply, Average (inputs of one shape; broadcasting merges are
 * refused) and Concatenate (backward is a Split along the same axis).
 */
import { graphAxis, type EmitContext, type Layer, type LayerEmitter, type Value } from './context.js';

function sameShapes(ctx: EmitContext, layer: Layer, inputs: Value[]): void {
  const first = JSON.stringify(inputs[0].shape);
  if (inputs.some((v) => JSON.stringify(v.shape) !== first || v.layout !== inputs[0].layout)) ctx.refuse(layer, 'inputs of different shapes (broadcasting merge)');
}

const chain = (ctx: EmitContext, op: string, names: string[], hint: string) => names.reduce((a, b) => ctx.g.op(op, [a, b], {}, hint));

export const add: LayerEmitter = {
  forward(ctx, layer, inputs) {
    sameShapes(ctx, layer, inputs);
    return { output: { ...inputs[0], name: chain(ctx, 'Add', inputs.map((v) => v.name), `${layer.name}/add`) } };
  },
  backward(_ctx, step) {
    return step.needInput.map((need) => (need ? step.dOutput : null));
  },
};

export const average: LayerEmitter = {
  forward(ctx, layer, inputs) {
    sameShapes(ctx, layer, inputs);
    const sum = chain(ctx, 'Add', inputs.map((v) => v.name), `${layer.name}/sum`);
    return { output: { ...inputs[0], name: ctx.g.op('Mul', [sum, ctx.g.floats([1 / inputs.length])], {}, `${layer.name}/average`) } };
  },
  backward(ctx, step) {
    const share = ctx.g.op('Mul', [step.dOutput, ctx.g.floats([1 / step.inputs.length])], {}, `${step.layer.name}/d_input`);
    return step.needInput.map((need) => (need ? share : null));
  },
};

export const multiply: LayerEmitter = {
  forward(ctx, layer, inputs) {
    sameShapes(ctx, layer, inputs);
    return { output: { ...inputs[0], name: chain(ctx, 'Mul', inputs.map((v) => v.name), `${layer.name}/mul`) } };
  },
  backward(ctx, step) {
    return step.inputs.map((_, i) => {
      if (!step.needInput[i]) return null;
      const others = step.inputs.filter((_, j) => j !== i).map((v) => v.name);
      return chain(ctx, 'Mul', [step.dOutput, ...others], `${step.layer.name}/d_input`);
    });
  },
};

export const concatenate: LayerEmitter = {
  forward(ctx, layer, inputs) {
    const kerasAxis = (layer as unknown as { axis: number }).axis;
    if (inputs.some((v) => v.layout !== inputs[0].layout)) ctx.refuse(layer, 'inputs of different ranks');
    const axis = graphAxis(inputs[0], kerasAxis);
    const shape = [...inputs[0].shape];
    shape[axis - 1] = inputs.reduce((n, v) => n + v.shape[axis - 1], 0);
    if (axis === 0) ctx.refuse(layer, 'concatenation over the batch');
    return { output: { name: ctx.g.op('Concat', inputs.map((v) => v.name), { axis }, `${layer.name}/concat`), shape, layout: inputs[0].layout }, saved: {} };
  },
  backward(ctx, step) {
    const axis = graphAxis(step.inputs[0], (step.layer as unknown as { axis: number }).axis);
    const sizes = step.inputs.map((v) => v.shape[axis - 1]);
    const parts = ctx.g.node('Split', [step.dOutput, ctx.g.int64s(sizes)], { axis }, { hint: `${step.layer.name}/d_input`, outputs: sizes.length });
    return parts.map((p, i) => (step.needInput[i] ? p : null));
  },
};
