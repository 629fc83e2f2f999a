/**
 * BatchNormalization held in inference mode (`setBatchNormInference`): the moving statistics
 * are constants of the step, gamma and beta may train. With `s = γ/√(var+ε)`:
 * `y = x·s + (β − μ·s)`, `dγ = Σ dY·(x−μ)/√(var+ε)`, `dβ = Σ dY`, `dX = dY·s` (sums over all
 * but the channel axis). BN in training mode (batch statistics) is refused.
 */
import type { LayerVariable } from '@tensorflow/tfjs-layers';
import { isBatchNormInference } from '../../surgery.js';
import { channelBroadcast, fields, graphAxis, nonChannelAxes, reduceSum, type EmitContext, type Layer, type LayerEmitter, type Value } from './context.js';

interface Parts {
  gamma: LayerVariable | null;
  beta: LayerVariable | null;
  mean: LayerVariable;
  variance: LayerVariable;
  epsilon: number;
}

function partsOf(ctx: EmitContext, layer: Layer, x: Value): Parts {
  const f = fields(layer);
  if (!isBatchNormInference(layer) && ctx.mode === 'train') ctx.refuse(layer, 'BatchNormalization in training mode (hold it in inference mode)');
  const axis = f.axis as number;
  if (graphAxis(x, axis) !== graphAxis(x, -1)) ctx.refuse(layer, `normalization over axis ${axis} (not the channels)`);
  return {
    gamma: f.scale ? (f.gamma as LayerVariable) : null,
    beta: f.center ? (f.beta as LayerVariable) : null,
    mean: f.movingMean as LayerVariable,
    variance: f.movingVariance as LayerVariable,
    epsilon: f.epsilon as number,
  };
}

export const batchNormalization: LayerEmitter = {
  forward(ctx, layer, [x]) {
    const g = ctx.g;
    const p = partsOf(ctx, layer, x);
    const hint = layer.name;
    const invStd = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [ctx.weight(p.variance), g.floats([p.epsilon])])])], {}, `${hint}/inv_std`);
    const scale = p.gamma ? g.op('Mul', [ctx.weight(p.gamma), invStd], {}, `${hint}/scale`) : invStd;
    const shift0 = g.op('Neg', [g.op('Mul', [ctx.weight(p.mean), scale])]);
    const shift = p.beta ? g.op('Add', [ctx.weight(p.beta), shift0], {}, `${hint}/shift`) : shift0;
    const scaled = g.op('Mul', [x.name, channelBroadcast(g, scale, x, `${hint}/scale_b`)]);
    const y = g.op('Add', [scaled, channelBroadcast(g, shift, x, `${hint}/shift_b`)], {}, `${hint}/bn`);
    return { output: { ...x, name: y }, saved: { invStd, scale } };
  },
  backward(ctx, step) {
    const g = ctx.g;
    const { layer, inputs: [x], saved } = step;
    const p = partsOf(ctx, layer, x);
    const axes = nonChannelAxes(x);
    if (p.beta && ctx.wantsGradient(p.beta)) ctx.addGradient(p.beta, reduceSum(g, step.dOutput, axes, false, `${layer.name}/d_beta`));
    if (p.gamma && ctx.wantsGradient(p.gamma)) {
      // Σ dY·(x−μ), then the per-channel 1/√(var+ε): one full-size pass fewer than normalizing x.
      const centered = g.op('Sub', [x.name, channelBroadcast(g, ctx.weight(p.mean), x)]);
      const sum = reduceSum(g, g.op('Mul', [step.dOutput, centered]), axes, false);
      ctx.addGradient(p.gamma, g.op('Mul', [sum, saved.invStd], {}, `${layer.name}/d_gamma`));
    }
    if (!step.needInput[0]) return [null];
    return [g.op('Mul', [step.dOutput, channelBroadcast(g, saved.scale, x)], {}, `${layer.name}/d_input`)];
  },
};
