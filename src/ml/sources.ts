/**
 * Batch sources for the training loop: cached activations of a frozen bottom (shared by every
 * stage through `frozen-pass.ts`), in-memory arrays, and the shard reader (images, optionally
 * augmented). All shuffle with a seed derived per epoch, never with `Math.random`.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { ShardDataset } from '../data/shards.js';
import { isAugmenting } from '../data/spec.js';
import type { StageContext } from '../runtime/types.js';
import type { Tf } from './backend.js';
import { lowestPassStart, trainableFrom } from './frontier.js';
import { cachedSource, describeFrontier, frozenActivations, type FrozenPassStats } from './frozen-pass.js';
import type { BatchSource } from './train.js';

/** Records held in memory: `x` is `count * prod(recordShape)` float32. */
export interface ArrayData {
  x: Float32Array;
  y: Int32Array;
  recordShape: number[];
}

export function arraySource(data: ArrayData, batchSize: number, seed: number): BatchSource {
  return cachedSource({ xs: [data.x], shapes: [data.recordShape], y: data.y, count: data.y.length, views: 1 }, batchSize, seed);
}

/** Batches of a split straight from the shards (augmented when `augment`). */
export function shardSource(dataset: ShardDataset, split: string, batchSize: number, seed: number, augment: boolean): BatchSource {
  return {
    count: dataset.splits[split]?.count ?? 0,
    batchSize,
    async *batches(epoch, { shuffle }) {
      if (!dataset.splits[split]) return;
      for await (const batch of dataset.batches(split, { batchSize, shuffle, seed, epoch, augment })) {
        yield { x: batch.x, y: batch.y, count: batch.count, shape: batch.shape };
      }
    },
  };
}

/** What a training or scoring stage runs on. */
export interface TrainingSources {
  /** The model that runs: the top above the cached activations, or the whole model. */
  trainee: LayersModel;
  train?: BatchSource;
  val?: BatchSource;
  /** Other splits (test), by name. */
  splits: Record<string, BatchSource>;
  /** `computed`: this stage ran the frozen pass; `cached`: it reused one; `none`: images. */
  features: 'cached' | 'computed' | 'none';
  /** The pass's counts and where the frontier is (absent for `none`). */
  pass?: FrozenPassStats & { frontier: string };
  /**
   * The layer the pass over images stopped below, when it was lowered for stages downstream or
   * taken from `SourceOptions.frozenFrom`: record it in the model's info (`ModelInfo.frozenFrom`).
   */
  frozenFrom?: string;
}

/** Options of `prepareSources`. */
export interface SourceOptions {
  batch: number;
  /** Random views to cache when the shards augment with more than a flip. */
  augmentViews: number;
  /** False when the frozen part changes while training (so nothing can be cached). */
  allowCache?: boolean;
  /** `ModelInfo.frozenFrom` of the model: an upstream stage's pass stopped below this layer. */
  frozenFrom?: string;
}

/**
 * The sources a stage trains or scores on: cached activations of the model's frozen bottom
 * (computed once per pipeline at the lowest cut that `ctx.downstream` needs) with the top as
 * the trainee, or the shards and the whole model when nothing is frozen.
 */
export async function prepareSources(tf: Tf, ctx: StageContext<unknown>, model: LayersModel, dataset: ShardDataset, options: SourceOptions): Promise<TrainingSources> {
  const start = options.allowCache === false ? undefined : lowestPassStart(model, ctx.downstream, options.frozenFrom);
  const pass =
    options.allowCache === false
      ? null
      : await frozenActivations({ tf, ctx, model, dataset, batch: options.batch, augmentViews: options.augmentViews, lowerFor: start === undefined ? undefined : trainableFrom(model, start) });
  const augment = isAugmenting(dataset.spec.augment);
  const sources: TrainingSources = { trainee: model, splits: {}, features: 'none' };
  for (const name of Object.keys(dataset.splits)) {
    const source = pass ? cachedSource(pass.splits[name], options.batch, ctx.seed) : shardSource(dataset, name, options.batch, ctx.seed, name === 'train' && augment);
    if (name === 'train') sources.train = source;
    else if (name === 'val') sources.val = source;
    sources.splits[name] = source;
  }
  if (pass) {
    sources.trainee = pass.top;
    sources.features = pass.stats.images > 0 || pass.stats.derived > 0 ? 'computed' : 'cached';
    sources.pass = { ...pass.stats, frontier: describeFrontier(pass.frontier) };
    if (start !== undefined) sources.frozenFrom = start;
  }
  return sources;
}

/** Metrics that name the engine and prove the sharing (one frozen forward per image-view). */
export function passMetrics(sources: TrainingSources): Record<string, number | string> {
  const pass = sources.pass;
  if (!pass) return { features: 'none' };
  return {
    features: sources.features,
    frozen_engine: pass.engine,
    frozen_forwards: pass.images,
    frozen_seconds: pass.seconds,
    ...(pass.images ? { frozen_img_s: Math.round((pass.images / Math.max(1e-3, pass.seconds)) * 10) / 10 } : {}),
    derived_records: pass.derived,
    frontier: pass.frontier,
  };
}
