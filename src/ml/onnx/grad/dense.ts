/**
 * Dense on a rank-2 input: `z = x·W + b` (W `[in, out]`, the TF.js layout, used untransposed),
 * `dW = xᵀ·dZ`, `db = Σ dZ`, `dX = dZ·Wᵀ`, all Gemm.
 */
import type { LayerVariable } from '@tensorflow/tfjs-layers';
import { activationOf, emitActivation, emitActivationGrad } from './activation.js';
import { fields, reduceSum, type LayerEmitter } from './context.js';

export const dense: LayerEmitter = {
  forward(ctx, layer, [x]) {
    if (x.layout !== 'flat' || x.shape.length !== 1) ctx.refuse(layer, 'input of rank other than 2');
    const f = fields(layer);
    const kernel = ctx.weight(f.kernel as LayerVariable);
    const inputs = [x.name, kernel, ...(f.useBias ? [ctx.weight(f.bias as LayerVariable)] : [])];
    const z = ctx.g.op('Gemm', inputs, {}, `${layer.name}/gemm`);
    const output = { name: z, shape: [f.units as number], layout: 'flat' as const };
    return { output: { ...output, name: emitActivation(ctx, layer, activationOf(ctx, layer), output) }, saved: { z } };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const { layer, inputs: [x] } = step;
    const f = fields(layer);
    const dZ = emitActivationGrad(g, activationOf(ctx, layer), step.saved.z, step.output.name, step.dOutput, `${layer.name}/d_z`);
    const kernel = f.kernel as LayerVariable;
    if (ctx.wantsGradient(kernel)) ctx.addGradient(kernel, g.op('Gemm', [x.name, dZ], { transA: 1 }, `${layer.name}/d_kernel`));
    if (f.useBias && ctx.wantsGradient(f.bias as LayerVariable)) ctx.addGradient(f.bias as LayerVariable, reduceSum(g, dZ, [0], false, `${layer.name}/d_bias`));
    if (!step.needInput[0]) return [null];
    return [g.op('Gemm', [dZ, ctx.weight(kernel)], { transB: 1 }, `${layer.name}/d_input`)];
  },
};
