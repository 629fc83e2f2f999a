/**
 * Merge layers: Add, Multiply, Average, Maximum, Minimum (elementwise, with broadcasting between
 * inputs of one rank, e.g. squeeze-excite's [N, 1, 1, C] * [N, H, W, C]) and Concatenate (its
 * axis moved to the NCHW position for rank-4 inputs).
 */
import { internalAxis, type LayerConverter, type LayerInfo } from './convert-context.js';

function mergeReason(info: LayerInfo): string | null {
  if (info.inputShapes.length < 2) return `expects at least two inputs, got ${info.inputShapes.length}`;
  const ranks = new Set(info.inputShapes.map((s) => s.length));
  return ranks.size === 1 ? null : `inputs of different ranks (${info.inputShapes.map((s) => s.length).join(', ')})`;
}

/** Folds the inputs pairwise with `op` (TF.js adds/multiplies one input at a time too). */
function elementwise(op: 'Add' | 'Mul' | 'Max' | 'Min', mean = false): LayerConverter {
  return {
    check: mergeReason,
    convert(ctx, info, inputs) {
      const g = ctx.graph;
      const name = info.layer.name;
      let acc = inputs[0].name;
      inputs.slice(1).forEach((x, i) => {
        acc = g.op(op, [acc, x.name], {}, `${name}/${op.toLowerCase()}${inputs.length > 2 ? i : ''}`);
      });
      if (mean) acc = g.op('Mul', [acc, g.floats([1 / inputs.length])], {}, `${name}/mean`);
      return { output: ctx.tensor(acc, info.outputShape) };
    },
  };
}

/** `Add`. */
export const add = elementwise('Add');
/** `Multiply`. */
export const multiply = elementwise('Mul');
/** `Average`: the sum times 1/n, as TF.js computes it. */
export const average = elementwise('Add', true);
/** `Maximum`. */
export const maximum = elementwise('Max');
/** `Minimum`. */
export const minimum = elementwise('Min');

/** `Concatenate`. */
export const concatenate: LayerConverter = {
  check: mergeReason,
  convert(ctx, info, inputs) {
    const axis = internalAxis((info.config.axis as number | undefined) ?? -1, inputs[0].shape.length);
    return { output: ctx.tensor(ctx.graph.op('Concat', inputs.map((x) => x.name), { axis }, `${info.layer.name}/concat`), info.outputShape) };
  },
};
