/**
 * Recovery fine-tuning after pruning, on the shared training loop (`fitModel`) with the same
 * feature caching as train-head and fine-tune: when the model's frozen bottom does not change
 * during recovery, its outputs are computed once (memoized under a hash of the bottom's topology
 * and weights, so a pruned bottom never reuses the features of an unpruned one) and only the
 * trainable top trains.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { ShardDataset } from '../../data/shards.js';
import { isAugmenting } from '../../data/spec.js';
import { AbortedError, StageError } from '../../runtime/errors.js';
import { canonicalJson, sha256 } from '../../runtime/hash.js';
import type { StageContext } from '../../runtime/types.js';
import type { Tf } from '../backend.js';
import { extractFeatures, splitAtTrainable } from '../features.js';
import { arraySource, loadArrayData, saveArrayData, shardSource, viewSource } from '../sources.js';
import { evaluateSource, fitModel, nanGuard, progressHook, type BatchSource, type EpochLogs, type TrainHook } from '../train.js';

/** Where recovery batches come from. */
export interface RecoverySources {
  /** The model that trains: the top above the cached features, or the whole model. */
  trainee: LayersModel;
  train: BatchSource;
  val?: BatchSource;
  /** `cached`/`computed`: features of the frozen bottom; `none`: trained on images. */
  features: 'cached' | 'computed' | 'none';
}

/** Options of `prepareRecovery`. */
export interface RecoveryOptions {
  batch: number;
  /** Augmented views to cache when the shards augment. */
  augmentViews: number;
  /** False when the bottom changes during recovery (masks of frozen kernels on a schedule). */
  allowFeatureCache: boolean;
}

/** Hashes a model's topology and weights (identifies a frozen bottom for the features memo). */
export async function fingerprintModel(model: LayersModel): Promise<string> {
  const parts: string[] = [canonicalJson(model.toJSON(null, false) as never)];
  for (const weight of model.weights) {
    const values = (await weight.read().data()) as Float32Array;
    parts.push(sha256(Buffer.from(values.buffer, values.byteOffset, values.byteLength)));
  }
  return sha256(parts.join('\n'));
}

/** Splits the model at its first trainable layer and caches the frozen part's features when allowed. */
export async function prepareRecovery(tf: Tf, ctx: StageContext<unknown>, model: LayersModel, dataset: ShardDataset, options: RecoveryOptions): Promise<RecoverySources> {
  const augment = isAugmenting(dataset.spec.augment);
  const hasVal = Boolean(dataset.splits.val?.count);
  const split = options.allowFeatureCache ? await splitAtTrainable(model) : null;
  if (!split?.bottom) {
    return {
      trainee: model,
      train: shardSource(dataset, 'train', options.batch, ctx.seed, augment),
      val: hasVal ? shardSource(dataset, 'val', options.batch, ctx.seed, false) : undefined,
      features: 'none',
    };
  }
  const bottom = split.bottom;
  const views = augment ? options.augmentViews : 1;
  const parts = { bottom: await fingerprintModel(bottom), shards: ctx.input('shards').key, views, augment, seed: ctx.seed };
  let computed = false;
  const dir = await ctx.memo('features', parts, async (out) => {
    computed = true;
    for (const [name, n] of [['train', views], ['val', 1]] as const) {
      if (!dataset.splits[name]?.count) continue;
      const data = await extractFeatures(tf, bottom, dataset, { split: name, batchSize: options.batch, views: n, augment: augment && name === 'train', seed: ctx.seed, signal: ctx.signal, onProgress: (done, total) => ctx.progress({ unit: `${name} features`, done, total }) });
      await saveArrayData(out, name, data);
    }
  });
  return {
    trainee: split.top,
    train: viewSource(await loadArrayData(dir, 'train'), views, options.batch, ctx.seed),
    val: hasVal ? arraySource(await loadArrayData(dir, 'val'), options.batch, ctx.seed) : undefined,
    features: computed ? 'computed' : 'cached',
  };
}

/** Options of `runRecovery`. */
export interface RunRecoveryOptions {
  epochs: number;
  lr: number;
  numClasses: number;
  /** Pruning hooks (mask re-application); run right after each step, before the others. */
  hooks: TrainHook[];
}

/** Trains the sources' trainee with Adam at `lr`; returns the history (empty for 0 epochs). */
export async function runRecovery(tf: Tf, ctx: StageContext<unknown>, sources: RecoverySources, options: RunRecoveryOptions): Promise<EpochLogs[]> {
  if (options.epochs <= 0) return [];
  if (!sources.trainee.trainableWeights.length) {
    throw new StageError('nothing_trainable', 'recovery fine-tuning needs trainable layers, but the model has none; unfreeze some layers first or set epochs: 0', {});
  }
  const history = await fitModel(tf, sources.trainee, sources.train, sources.val, {
    epochs: options.epochs,
    optimizer: { name: 'adam', lr: options.lr },
    numClasses: options.numClasses,
    signal: ctx.signal,
    seed: ctx.seed,
    hooks: [
      ...options.hooks,
      nanGuard(),
      progressHook((logs, epochs) => {
        ctx.log.info({ ...logs }, 'recovery epoch done');
        ctx.progress({ unit: 'epoch', done: logs.epoch + 1, total: epochs, info: { loss: logs.loss, acc: logs.acc, ...(logs.valAcc !== undefined ? { val_acc: logs.valAcc } : {}) } });
      }),
    ],
  });
  if (ctx.signal.aborted) throw new AbortedError();
  return history;
}

/** Validation accuracy of the whole model on the shards' val split (null without one). */
export async function validationAccuracy(tf: Tf, model: LayersModel, dataset: ShardDataset, batch: number, seed: number): Promise<{ acc: number; loss: number } | null> {
  if (!dataset.splits.val?.count) return null;
  return evaluateSource(tf, model, shardSource(dataset, 'val', batch, seed, false), dataset.classes.length);
}
