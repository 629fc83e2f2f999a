/**
 * Core layers: Dense, BatchNormalization, LayerNormalization, Flatten, Reshape, Permute,
 * Rescaling and the layers that are the identity at inference (Dropout, noise).
 */
import { float } from './graph.js';
import { activationReason, applyActivation, isFusedActivation } from './convert-activation.js';
import type { LayerConverter, LayerInfo, Variable } from './convert-context.js';
import type { ConvertedTensor } from './types.js';

interface DenseWeights {
  kernel: Variable;
  bias?: Variable | null;
}

function oneInput(info: LayerInfo): string | null {
  return info.inputShapes.length === 1 ? null : `expects one input, got ${info.inputShapes.length}`;
}

function channelsLast(info: LayerInfo): string | null {
  const format = info.config.dataFormat;
  return format === undefined || format === null || format === 'channelsLast' ? null : `dataFormat '${String(format)}'`;
}

/** `Dense`: Gemm on [batch, features]; MatMul + Add over the last axis of higher ranks. */
export const dense: LayerConverter = {
  check: (info) => oneInput(info) ?? activationReason(info.config.activation),
  convert(ctx, info, [x]) {
    const g = ctx.graph;
    const name = info.layer.name;
    const { kernel, bias } = info.layer as unknown as DenseWeights;
    const w = ctx.weight(name, kernel, 'kernel');
    const b = info.config.useBias !== false && bias ? ctx.weight(name, bias, 'bias') : undefined;
    let pre: ConvertedTensor;
    if (x.shape.length === 2) {
      pre = ctx.tensor(g.op('Gemm', b ? [x.name, w, b] : [x.name, w], {}, `${name}/gemm`), info.outputShape);
    } else {
      const product = g.op('MatMul', [ctx.toTfLayout(x, name), w], {}, `${name}/matmul`);
      pre = ctx.fromTfLayout(b ? g.op('Add', [product, b], {}, `${name}/bias`) : product, info.outputShape, name);
    }
    const output = applyActivation(ctx, info.config.activation, pre, name);
    return isFusedActivation(info.config.activation) ? { output, preActivation: pre } : { output };
  },
};

/** The normalized axis, when it is the single last axis; else null. */
function lastAxis(info: LayerInfo): number | null {
  const raw = info.config.axis;
  const axis = Array.isArray(raw) ? (raw.length === 1 ? raw[0] : null) : ((raw as number | undefined) ?? -1);
  const rank = info.inputShapes[0]?.length ?? 0;
  if (axis === null) return null;
  const positive = axis < 0 ? axis + rank : axis;
  return positive === rank - 1 ? positive : null;
}

function normalizationReason(info: LayerInfo): string | null {
  const reason = oneInput(info);
  if (reason) return reason;
  if (info.inputShapes[0].length < 2) return 'input must have a batch and a feature axis';
  if (lastAxis(info) === null) return `axis ${JSON.stringify(info.config.axis)} is not the last (channel) axis`;
  const channels = info.inputShapes[0].at(-1);
  return typeof channels === 'number' ? null : 'the channel count is unknown';
}

interface NormalizationWeights {
  gamma?: Variable | null;
  beta?: Variable | null;
  movingMean: Variable;
  movingVariance: Variable;
}

/**
 * `BatchNormalization` in inference mode: `(x - mean) / sqrt(var + eps) * gamma + beta` over the
 * channel axis. Baked weights: one BatchNormalization node on NCHW (onnxruntime folds it into the
 * conv before it) or a folded scale and shift otherwise. Weights as inputs: the formula in
 * elementwise ops, so a gradient w.r.t. gamma and beta is plain backpropagation.
 */
export const batchNormalization: LayerConverter = {
  check: normalizationReason,
  convert(ctx, info, [x]) {
    const g = ctx.graph;
    const name = info.layer.name;
    const epsilon = (info.config.epsilon as number | undefined) ?? 1e-3;
    const channels = x.shape.at(-1) as number;
    const { gamma, beta, movingMean, movingVariance } = info.layer as unknown as NormalizationWeights;
    const useGamma = info.config.scale !== false && gamma;
    const useBeta = info.config.center !== false && beta;
    if (!ctx.weightsAreInputs) {
      if (x.layout === 'nchw') {
        const scale = useGamma ? ctx.weight(name, gamma, 'gamma') : ctx.constant(`${name}/gamma`, new Float32Array(channels).fill(1), [channels]);
        const shift = useBeta ? ctx.weight(name, beta, 'beta') : ctx.constant(`${name}/beta`, new Float32Array(channels), [channels]);
        const inputs = [x.name, scale, shift, ctx.weight(name, movingMean, 'moving_mean'), ctx.weight(name, movingVariance, 'moving_variance')];
        return { output: { ...x, name: g.op('BatchNormalization', inputs, { epsilon: float(epsilon) }, `${name}/batch_norm`) } };
      }
      const mean = ctx.values(movingMean);
      const variance = ctx.values(movingVariance);
      const gammas = useGamma ? ctx.values(gamma) : null;
      const betas = useBeta ? ctx.values(beta) : null;
      const scale = new Float32Array(channels);
      const shift = new Float32Array(channels);
      for (let c = 0; c < channels; c++) {
        scale[c] = (gammas ? gammas[c] : 1) / Math.sqrt(variance[c] + epsilon);
        shift[c] = (betas ? betas[c] : 0) - mean[c] * scale[c];
      }
      const scaled = g.op('Mul', [x.name, ctx.constant(`${name}/scale`, scale, [channels])], {}, `${name}/scaled`);
      return { output: { ...x, name: g.op('Add', [scaled, ctx.constant(`${name}/shift`, shift, [channels])], {}, `${name}/batch_norm`) } };
    }
    const perChannel = (variable: Variable, role: string) => ctx.broadcastChannels(ctx.weight(name, variable, role), x, channels, `${name}/${role}`);
    const centered = g.op('Sub', [x.name, perChannel(movingMean, 'moving_mean')], {}, `${name}/centered`);
    const deviation = g.op('Sqrt', [g.op('Add', [perChannel(movingVariance, 'moving_variance'), g.floats([epsilon])], {}, `${name}/variance_eps`)], {}, `${name}/deviation`);
    let y = g.op('Div', [centered, deviation], {}, `${name}/normalized`);
    if (useGamma) y = g.op('Mul', [y, perChannel(gamma, 'gamma')], {}, `${name}/scaled`);
    if (useBeta) y = g.op('Add', [y, perChannel(beta, 'beta')], {}, `${name}/shifted`);
    return { output: { ...x, name: y } };
  },
};

/** `LayerNormalization` over the last axis → ONNX LayerNormalization (opset 17). */
export const layerNormalization: LayerConverter = {
  check: normalizationReason,
  convert(ctx, info, [x]) {
    const g = ctx.graph;
    const name = info.layer.name;
    const channels = x.shape.at(-1) as number;
    const { gamma, beta } = info.layer as unknown as NormalizationWeights;
    const scale = info.config.scale !== false && gamma ? ctx.weight(name, gamma, 'gamma') : ctx.constant(`${name}/gamma`, new Float32Array(channels).fill(1), [channels]);
    const shift = info.config.center !== false && beta ? ctx.weight(name, beta, 'beta') : ctx.constant(`${name}/beta`, new Float32Array(channels), [channels]);
    const epsilon = (info.config.epsilon as number | undefined) ?? 1e-3;
    const normalized = g.op('LayerNormalization', [ctx.toTfLayout(x, name), scale, shift], { axis: -1, epsilon: float(epsilon) }, `${name}/layer_norm`);
    return { output: ctx.fromTfLayout(normalized, info.outputShape, name) };
  },
};

/** `Flatten`: in TF.js element order, so NCHW goes back to NHWC first. */
export const flatten: LayerConverter = {
  check: (info) => oneInput(info) ?? channelsLast(info),
  convert(ctx, info, [x]) {
    if (x.shape.length === 2) return { output: x };
    return { output: ctx.tensor(ctx.graph.op('Flatten', [ctx.toTfLayout(x, info.layer.name)], { axis: 1 }, `${info.layer.name}/flatten`), info.outputShape) };
  },
};

/** `Reshape` (TF.js element order; the batch is kept). */
export const reshape: LayerConverter = {
  check: (info) => oneInput(info) ?? ((info.config.targetShape as (number | null)[]).includes(0) ? 'a zero in targetShape' : null),
  convert(ctx, info, [x]) {
    const name = info.layer.name;
    // 0 copies the batch dimension; the unknown dimension (null in tfjs, -1 in Keras) is inferred.
    const target = (info.config.targetShape as (number | null)[]).map((d) => (d === null || d < 0 ? -1 : d));
    const shape = ctx.graph.int64s([0, ...target], `${name}/shape`);
    return { output: ctx.fromTfLayout(ctx.graph.op('Reshape', [ctx.toTfLayout(x, name), shape], {}, `${name}/reshape`), info.outputShape, name) };
  },
};

/** `Permute` (dims are 1-based, the batch stays first). */
export const permute: LayerConverter = {
  check: oneInput,
  convert(ctx, info, [x]) {
    const name = info.layer.name;
    const perm = [0, ...(info.config.dims as number[])];
    return { output: ctx.fromTfLayout(ctx.graph.op('Transpose', [ctx.toTfLayout(x, name)], { perm }, `${name}/permute`), info.outputShape, name) };
  },
};

/** `Rescaling`: x * scale + offset. */
export const rescaling: LayerConverter = {
  check: (info) => oneInput(info) ?? (typeof info.config.scale === 'number' && typeof (info.config.offset ?? 0) === 'number' ? null : 'scale and offset must be numbers'),
  convert(ctx, info, [x]) {
    const g = ctx.graph;
    const scaled = g.op('Mul', [x.name, g.floats([info.config.scale as number])], {}, `${info.layer.name}/scale`);
    const offset = (info.config.offset as number | undefined) ?? 0;
    return { output: { ...x, name: offset === 0 ? scaled : g.op('Add', [scaled, g.floats([offset])], {}, `${info.layer.name}/offset`) } };
  },
};

/** Layers that only act in training (Dropout, noise): the identity at inference. */
export const identity: LayerConverter = {
  check: oneInput,
  convert: (_ctx, _info, [x]) => ({ output: x }),
};
