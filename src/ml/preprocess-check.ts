/**
 * "Keep preprocessing consistent with the source": does the target's preprocessing match what the
 * base was trained with? Run by the first stage that sees both the base and the shards
 * (train-head).
 *
 * - A base this toolkit exported records its preprocessing (`load-base` copies it into
 *   `info.base.preprocess`): a different size, channel count or normalization is refused
 *   (`preprocess_mismatch`, naming both and the fix) unless `allow_preprocess_mismatch`.
 * - A foreign base records nothing, but its first BatchNormalization after a convolution holds
 *   the moving mean and variance of that convolution's outputs on the source data. The same
 *   statistics on a sample of the target's images, under each normalization, say which one the
 *   base expects: the one whose statistics are closest. A large discrepancy for the chosen one,
 *   with another much closer, is a warning naming the likely right `normalize`.
 */
import path from 'node:path';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { normalizePixels, resolveNormalization, type NormalizeName, type PreprocessSpec } from '../data/spec.js';
import type { ShardDataset } from '../data/shards.js';
import { StageError } from '../runtime/errors.js';
import type { Json } from '../runtime/types.js';
import type { ModelInfo } from './artifact.js';
import { useLayers, type Tf } from './backend.js';

type Layer = LayersModel['layers'][number];

/** Normalizations compared by the statistics check. */
export const NORMALIZATIONS: NormalizeName[] = ['imagenet', 'tf', 'unit'];

/** Images of the train split whose statistics are compared. */
const SAMPLE = 32;
/**
 * The chosen normalization warns above this discrepancy (a mean half-σ shift)… The base's own
 * normalization scores 0.08 on the fashion base and 0.70 on nsfwjs's MobileNetV2; the wrong
 * ones 0.96-3.2.
 */
const WARN_ABOVE = 0.5;
/** …when another one is at most this fraction of it. */
const BETTER_BY = 0.5;

/** What the check found, for the stage's metrics and the run's warnings. */
export interface PreprocessCheckResult {
  /** `recorded` (the base records its preprocessing), `bn_stats` (a foreign base's BatchNorm), `none` (neither applies). */
  method: 'recorded' | 'bn_stats' | 'none';
  /** Messages for the summary's warnings (also logged). */
  warnings: string[];
  /** Facts for the stage's metrics. */
  metrics: Record<string, Json>;
}

/** Facts about the pipeline for the messages: which stages made the model and the shards. */
export interface CheckContext {
  modelStage: string;
  shardsStage: string;
  /** The pipeline file's folder: a relative base path is shown resolved against it. */
  baseDir?: string;
}

/** The check for a base (`info` of the model artifact) against the shards' spec; throws `preprocess_mismatch`. */
export async function checkPreprocessing(tf: Tf, model: LayersModel, info: ModelInfo, dataset: ShardDataset, where: CheckContext): Promise<PreprocessCheckResult> {
  const base = info.base;
  // A re-initialized base has no source statistics; a model with a head already went through this.
  if (!base || base.init === 'random' || info.classes) return { method: 'none', warnings: [], metrics: {} };
  if (base.preprocess) return checkRecorded(base, dataset.spec, where);
  const stats = await batchNormDiscrepancy(tf, model, dataset);
  if (!stats) return { method: 'none', warnings: [], metrics: {} };
  const chosen = dataset.spec.normalize.name;
  const { best, mismatch } = judgeNormalization(stats, chosen);
  const warnings = mismatch ? [`${mismatch}: set it on '${where.shardsStage}' (preprocess)`] : [];
  return {
    method: 'bn_stats',
    warnings,
    metrics: { preprocess_check: 'bn_stats', bn_layer: stats.layer, bn_discrepancy: round(stats.discrepancy[chosen]), bn_best_normalize: best, ...Object.fromEntries(NORMALIZATIONS.map((n) => [`bn_discrepancy_${n}`, round(stats.discrepancy[n])])) },
  };
}

/**
 * The normalization with the smallest discrepancy, and when `chosen` disagrees badly (above
 * `WARN_ABOVE`, and another at most `BETTER_BY` of it) a sentence saying so, naming the likely one.
 */
export function judgeNormalization(stats: BatchNormDiscrepancy, chosen: NormalizeName): { best: NormalizeName; mismatch?: string } {
  const best = NORMALIZATIONS.reduce((a, b) => (stats.discrepancy[b] < stats.discrepancy[a] ? b : a));
  if (best === chosen || !(stats.discrepancy[chosen] > WARN_ABOVE && stats.discrepancy[best] <= BETTER_BY * stats.discrepancy[chosen])) return { best };
  const scores = NORMALIZATIONS.map((n) => `${n} ${stats.discrepancy[n].toFixed(2)}`).join(', ');
  return { best, mismatch: `normalize: ${chosen} does not match what the base's first BatchNormalization (${stats.layer}) saw in training (statistics discrepancy ${scores}); the base was likely trained with normalize: ${best}` };
}

function checkRecorded(base: NonNullable<ModelInfo['base']>, spec: PreprocessSpec, where: CheckContext): PreprocessCheckResult {
  const trained = base.preprocess!;
  const differs: string[] = [];
  // An adapted input (load-base input_shape) changes size and channels on purpose; normalization still must match.
  if (!base.inputShape && (trained.size[0] !== spec.size[0] || trained.size[1] !== spec.size[1])) differs.push('size');
  if (!base.inputShape && trained.channels !== spec.channels) differs.push('channels');
  if (trained.normalize.name !== spec.normalize.name) differs.push('normalize');
  if (differs.length === 0) return { method: 'recorded', warnings: [], metrics: { preprocess_check: 'recorded' } };
  const describe = (s: PreprocessSpec) => differs.map((k) => (k === 'size' ? `size [${s.size.join(', ')}]` : k === 'channels' ? `channels ${s.channels}` : `normalize ${s.normalize.name}`)).join(', ');
  const fix = differs.map((k) => (k === 'size' ? `size: [${trained.size.join(', ')}]` : k === 'channels' ? `channels: ${trained.channels}` : `normalize: ${trained.normalize.name}`)).join(', ');
  const source = where.baseDir && !/^[a-z][a-z0-9+.-]+:/i.test(base.source) ? path.resolve(where.baseDir, base.source) : base.source;
  const facts = `the base ${source} (from '${where.modelStage}') was trained with ${describe(trained)}, and the shards of '${where.shardsStage}' have ${describe(spec)}`;
  if (!base.allowPreprocessMismatch) {
    throw new StageError('preprocess_mismatch', `${facts}; set ${fix} on '${where.shardsStage}' (preprocess), or allow_preprocess_mismatch: true on '${where.modelStage}' (load-base) to train anyway`, {
      base: source,
      differs,
      trained: { size: trained.size, channels: trained.channels, normalize: trained.normalize.name },
      shards: { size: spec.size, channels: spec.channels, normalize: spec.normalize.name },
    });
  }
  return { method: 'recorded', warnings: [`${facts} (allowed by allow_preprocess_mismatch)`], metrics: { preprocess_check: 'recorded', preprocess_mismatch: differs.join(',') } };
}

/** Per normalization, the mean over channels of the distance between the first BN's moving statistics and the target's. */
export interface BatchNormDiscrepancy {
  /** The BatchNormalization layer compared. */
  layer: string;
  /** Mean over channels of |μ − μ_bn| / σ_bn + |ln(σ / σ_bn)|: 0 when the statistics agree. */
  discrepancy: Record<NormalizeName, number>;
}

/** Raw sample images for `discrepancyOnImages`, and how to bring normalized ones to the model's input. */
export interface SampleImages {
  /** `count` uint8 HWC records back to back. */
  raw: Uint8Array;
  count: number;
  /** `[h, w, c]` of a record. */
  shape: [number, number, number];
  /** Normalized NHWC values -> the model's input (repeat a channel, resize); default as they are. */
  prepare?(x: Float32Array): { x: Float32Array; shape: number[] };
}

/**
 * The first BatchNormalization whose input is a convolution's output, compared with that
 * output's per-channel batch statistics on up to `SAMPLE` train images under each normalization;
 * null when the model has no such layer.
 */
export async function batchNormDiscrepancy(tf: Tf, model: LayersModel, dataset: ShardDataset, sample = SAMPLE): Promise<BatchNormDiscrepancy | null> {
  const count = Math.min(sample, dataset.splits.train?.count ?? 0);
  if (count === 0) return null;
  // Evenly spaced records: every class of a sorted split is represented.
  const total = dataset.splits.train.count;
  const indices = Int32Array.from({ length: count }, (_, i) => Math.floor((i * total) / count));
  return discrepancyOnImages(tf, model, { raw: await dataset.readRecords('train', indices), count, shape: dataset.recordShape });
}

/** `batchNormDiscrepancy` on given images. */
export async function discrepancyOnImages(tf: Tf, model: LayersModel, images: SampleImages): Promise<BatchNormDiscrepancy | null> {
  const found = firstConvBatchNorm(model);
  if (!found || images.count === 0) return null;
  const { bn, conv } = found;
  const weight = (suffix: string) => bn.weights.find((w) => w.originalName.endsWith(suffix) || w.name.endsWith(suffix));
  const meanWeight = weight('moving_mean');
  const varianceWeight = weight('moving_variance');
  if (!meanWeight || !varianceWeight) return null;
  const movingMean = (await meanWeight.read().data()) as Float32Array;
  const movingVariance = (await varianceWeight.read().data()) as Float32Array;
  const epsilon = (bn.getConfig() as { epsilon?: number }).epsilon ?? 1e-3;
  const tfl = await useLayers();
  const probe = tfl.model({ inputs: model.inputs, outputs: conv.output as SymbolicTensor });
  const [h, w, c] = images.shape;
  const discrepancy = {} as Record<NormalizeName, number>;
  for (const name of NORMALIZATIONS) {
    const normalized = normalizePixels(images.raw, resolveNormalization(name, c as 1 | 3));
    const input = images.prepare ? images.prepare(normalized) : { x: normalized, shape: [images.count, h, w, c] };
    const [mean, variance] = tf.tidy(() => {
      const out = probe.predict(tf.tensor(input.x, input.shape)) as TfCore.Tensor;
      const moments = tf.moments(out, [0, 1, 2]);
      return [moments.mean.dataSync() as Float32Array, moments.variance.dataSync() as Float32Array];
    });
    let sum = 0;
    for (let k = 0; k < mean.length; k++) {
      const sdBn = Math.sqrt(movingVariance[k] + epsilon);
      sum += Math.abs(mean[k] - movingMean[k]) / sdBn + Math.abs(0.5 * Math.log((variance[k] + epsilon) / (movingVariance[k] + epsilon)));
    }
    discrepancy[name] = sum / mean.length;
  }
  return { layer: bn.name, discrepancy };
}

const CONVOLUTIONS = new Set(['Conv2D', 'DepthwiseConv2D', 'SeparableConv2D']);

/** The first BatchNormalization (in layer order) fed directly by a convolution, and that convolution. */
function firstConvBatchNorm(model: LayersModel): { bn: Layer; conv: Layer } | null {
  for (const layer of model.layers) {
    if (layer.getClassName() !== 'BatchNormalization') continue;
    const inbound = layer.inboundNodes[0]?.inboundLayers as Layer[] | undefined;
    if (inbound?.length === 1 && CONVOLUTIONS.has(inbound[0].getClassName())) return { bn: layer, conv: inbound[0] };
    return null; // the first BN normalizes something else: nothing to compare
  }
  return null;
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}
