/**
 * Elementwise activations, fused (a layer's `activation`) or as layers (Activation, ReLU,
 * LeakyReLU, Softmax). Each backward follows the TF.js gradient of the same function, masks
 * included: relu6's is `x > 0 && x <= 6` (tfjs `Relu6_grad`), LeakyReLU's `x > 0 ? dy : α·dy`.
 */
import type { OnnxGraph } from '../graph.js';
import { float } from '../graph.js';
import { DataType } from '../proto.js';
import { fields, reduceSum, type BackwardStep, type EmitContext, type Forward, type Layer, type LayerEmitter, type Value } from './context.js';

/** An activation we differentiate: its kind and parameters. */
export interface ActivationSpec {
  kind: 'linear' | 'relu' | 'clip' | 'leaky' | 'sigmoid' | 'tanh' | 'swish' | 'softmax';
  /** Upper bound of `clip` (ReLU(max_value), relu6). */
  max?: number;
  /** Slope of `leaky` below zero. */
  alpha?: number;
}

const BY_CLASS: Record<string, ActivationSpec> = {
  linear: { kind: 'linear' },
  relu: { kind: 'relu' },
  relu6: { kind: 'clip', max: 6 },
  sigmoid: { kind: 'sigmoid' },
  tanh: { kind: 'tanh' },
  swish: { kind: 'swish' },
  softmax: { kind: 'softmax' },
};

/** The spec of a layer's fused `activation` (Conv2D, Dense, Activation); refuses unknown ones. */
export function activationOf(ctx: EmitContext, layer: Layer): ActivationSpec {
  const activation = fields(layer).activation as { getClassName(): string } | undefined;
  const name = activation ? activation.getClassName() : 'linear';
  const spec = BY_CLASS[name];
  if (!spec) ctx.refuse(layer, `activation ${name}`);
  return spec;
}

/** Emits `spec(x)`; returns the output name (x itself for linear). */
export function emitActivation(ctx: EmitContext, layer: Layer, spec: ActivationSpec, x: Value): string {
  const g = ctx.g;
  const hint = `${layer.name}/act`;
  switch (spec.kind) {
    case 'linear':
      return x.name;
    case 'relu':
      return g.op('Relu', [x.name], {}, hint);
    case 'clip':
      return g.op('Clip', [x.name, g.floats([0]), g.floats([spec.max!])], {}, hint);
    case 'leaky':
      return g.op('LeakyRelu', [x.name], { alpha: float(spec.alpha!) }, hint);
    case 'sigmoid':
      return g.op('Sigmoid', [x.name], {}, hint);
    case 'tanh':
      return g.op('Tanh', [x.name], {}, hint);
    case 'swish':
      return g.op('Mul', [g.op('Sigmoid', [x.name], {}, `${hint}/sigmoid`), x.name], {}, hint);
    case 'softmax':
      if (x.layout !== 'flat' || x.shape.length !== 1) ctx.refuse(layer, 'softmax over a tensor of rank other than 2');
      return g.op('Softmax', [x.name], { axis: -1 }, hint);
  }
}

/** Emits the gradient through `spec` given its input `x`, output `y` and output gradient. */
export function emitActivationGrad(g: OnnxGraph, spec: ActivationSpec, x: string, y: string, dY: string, hint: string): string {
  if (spec.kind === 'linear') return dY;
  const zero = () => g.floats([0]);
  const one = () => g.floats([1]);
  switch (spec.kind) {
    // dy·cast(mask), as TF.js writes relu's and relu6's gradients (and faster in onnxruntime
    // than a Where against a broadcast zero).
    case 'relu':
      return g.op('Mul', [dY, g.op('Cast', [g.op('Greater', [x, zero()])], { to: DataType.FLOAT })], {}, hint);
    case 'clip': {
      const inside = g.op('And', [g.op('Greater', [x, zero()]), g.op('LessOrEqual', [x, g.floats([spec.max!])])]);
      return g.op('Mul', [dY, g.op('Cast', [inside], { to: DataType.FLOAT })], {}, hint);
    }
    case 'leaky':
      return g.op('Where', [g.op('Greater', [x, zero()]), dY, g.op('Mul', [dY, g.floats([spec.alpha!])])], {}, hint);
    case 'sigmoid':
      return g.op('Mul', [dY, g.op('Mul', [y, g.op('Sub', [one(), y])])], {}, hint);
    case 'tanh':
      return g.op('Mul', [dY, g.op('Sub', [one(), g.op('Mul', [y, y])])], {}, hint);
    case 'swish': {
      // d/dx x·σ(x) = σ + x·σ·(1-σ)
      const s = g.op('Sigmoid', [x]);
      const slope = g.op('Add', [s, g.op('Mul', [x, g.op('Mul', [s, g.op('Sub', [one(), s])])])]);
      return g.op('Mul', [dY, slope], {}, hint);
    }
    case 'softmax': {
      // dx = y·(dy − Σ y·dy), the TF.js softmax gradient
      const dot = reduceSum(g, g.op('Mul', [y, dY]), [1], true);
      return g.op('Mul', [y, g.op('Sub', [dY, dot])], {}, hint);
    }
  }
}

function layerSpec(ctx: EmitContext, layer: Layer): ActivationSpec {
  const f = fields(layer);
  switch (layer.getClassName()) {
    case 'ReLU':
      return f.maxValue == null ? { kind: 'relu' } : { kind: 'clip', max: f.maxValue as number };
    case 'LeakyReLU':
      return { kind: 'leaky', alpha: f.alpha as number };
    case 'Softmax': {
      const axis = f.axis as number | number[];
      if (axis !== -1 && !(Array.isArray(axis) && axis.length === 1 && axis[0] === -1)) ctx.refuse(layer, `softmax over axis ${JSON.stringify(axis)}`);
      return { kind: 'softmax' };
    }
    default:
      return activationOf(ctx, layer);
  }
}

/** Activation, ReLU, LeakyReLU and Softmax layers. */
export const activationLayer: LayerEmitter = {
  forward(ctx, layer, [x]): Forward {
    const spec = layerSpec(ctx, layer);
    return { output: { ...x, name: emitActivation(ctx, layer, spec, x) } };
  },
  backward(ctx, step: BackwardStep) {
    const spec = layerSpec(ctx, step.layer);
    return [emitActivationGrad(ctx.g, spec, step.inputs[0].name, step.output.name, step.dOutput, `${step.layer.name}/d_input`)];
  },
};
