/**
 * What train-head and fine-tune share: train the trainable top of a model on cached features
 * of its frozen bottom (or on images when nothing below is frozen), with resume checkpoints,
 * NaN guard, early stopping and progress; then save the whole model.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { ShardDataset } from '../data/shards.js';
import { canonicalJson, sha256 } from '../runtime/hash.js';
import { StageError } from '../runtime/errors.js';
import type { Metrics, StageContext } from '../runtime/types.js';
import { writeModelArtifact, type ModelInfo } from './artifact.js';
import type { Tf } from './backend.js';
import { RESUMED_UNIT } from '../runtime/types.js';
import { createTrainStepper } from './engine.js';
import { checkpointHook, copyCheckpoint, restoreCheckpoint } from './checkpoint.js';
import { passMetrics, prepareSources } from './sources.js';
import { summarizeModel } from './surgery.js';
import { batchProgressHook, createOptimizer, earlyStopping, evaluateSource, fitModel, historyFile, nanGuard, progressHook, type EpochLogs, type OptimizerSpec, type TrainHook } from './train.js';

/** Training params shared by train-head and fine-tune (schema: the stages' JSON files). */
export interface TrainingParams {
  /** Passes over the train split. Default: per stage (train-head 10, fine-tune 5). */
  epochs: number;
  /** Records per training step. Default 32. */
  batch: number;
  /** Default `adam`. */
  optimizer: OptimizerSpec['name'];
  /** Momentum of sgd and rmsprop. Default: per optimizer (0.9 for sgd, 0 for rmsprop). */
  momentum?: number;
  /** Epochs of linear learning-rate warmup from lr/10. Default 0. */
  warmup: number;
  /** Cosine learning-rate decay after the warmup. Default false. */
  cosine: boolean;
  /** Stop when val loss stops improving, or `false`. Default `{ patience: 3, min_delta: 0 }`. */
  early_stopping: { patience?: number; min_delta?: number } | false;
  /** Loss weight per class: `none`, `balanced` or one number per class. Default `none`. */
  class_weights: 'none' | 'balanced' | number[];
  /** Augmented views of the training images to cache when the shards augment. Default 4. */
  augment_views: number;
}

export interface TrainRequest {
  tf: Tf;
  ctx: StageContext<any>;
  /** The whole model to train (its trainable layers train). */
  model: LayersModel;
  dataset: ShardDataset;
  params: TrainingParams;
  lr: number;
  /** Info saved with the trained model. */
  info: ModelInfo;
}

/** Trains, saves the model into `ctx.outDir` and returns the stage's metrics. */
export async function trainAndSave(request: TrainRequest): Promise<Metrics> {
  const { tf, ctx, model, dataset, params, lr } = request;
  const numClasses = dataset.classes.length;
  if (!dataset.splits.train?.count) throw new StageError('no_training_data', `the shards in ${dataset.dir} have no train split`);
  const sources = await prepareSources(tf, ctx, model, dataset, { batch: params.batch, augmentViews: params.augment_views, frozenFrom: request.info.frozenFrom });
  const { trainee, val } = sources;
  const train = sources.train!;

  const optimizer = createOptimizer(tf, { name: params.optimizer, lr, momentum: params.momentum });
  // Layer names and weight shapes, not weight names: TF.js uniquifies variable names per process.
  const fingerprint = sha256(canonicalJson({ key: ctx.key, trainable: trainee.layers.filter((l) => l.trainable && l.weights.length).map((l) => [l.name, l.weights.map((w) => w.shape)]) }));
  const stopper = params.early_stopping ? earlyStopping({ patience: params.early_stopping.patience ?? 3, minDelta: params.early_stopping.min_delta ?? 0 }) : undefined;
  // A rung of a halved sweep goes on from the shorter rung before it (StageContext.resumeFrom).
  const fromRung = ctx.resumeFrom ? await copyCheckpoint(ctx.resumeFrom, ctx.workDir) : false;
  const resumed = await restoreCheckpoint(tf, ctx.workDir, fingerprint, trainee, optimizer, stopper);
  if (resumed) {
    ctx.log.info({ epoch: resumed.startEpoch, stopped: resumed.stopped, ...(fromRung ? { from: ctx.resumeFrom } : {}) }, 'resuming from checkpoint');
    // Shown on stderr (`↻ tune resumed from epoch 3/10`): a rerun should say it did not start over.
    ctx.progress({ unit: RESUMED_UNIT, done: resumed.startEpoch, total: params.epochs, ...(fromRung ? { info: { from: 'rung' } } : {}) });
  }
  const hooks: TrainHook[] = [
    nanGuard(),
    ...(stopper ? [stopper] : []),
    checkpointHook(ctx.workDir, fingerprint, stopper),
    batchProgressHook((label, total) => ctx.track(label, total)),
    progressHook((logs, epochs) => {
      ctx.log.info({ ...logs }, 'epoch done');
      ctx.progress({ unit: 'epoch', done: logs.epoch + 1, total: epochs, info: { loss: logs.loss, acc: logs.acc, ...(logs.valAcc !== undefined ? { val_acc: logs.valAcc, val_loss: logs.valLoss! } : {}) } });
    }),
  ];
  const classWeights = await classWeightsFor(params.class_weights, dataset, numClasses);
  // Made after the checkpoint is restored: the stepper reads the weights it starts from.
  const stepper = await createTrainStepper(tf, trainee, { numClasses, classWeights, log: ctx.log });
  let history;
  try {
    history = await fitModel(tf, trainee, train, val, {
      epochs: params.epochs,
      optimizer: { name: params.optimizer, lr, momentum: params.momentum },
      schedule: { warmup: params.warmup, cosine: params.cosine },
      classWeights,
      numClasses,
      hooks,
      signal: ctx.signal,
      // A run killed after early stopping decided to stop trains no further epochs.
      startEpoch: resumed?.stopped ? params.epochs : resumed?.startEpoch,
      ...(ctx.budget !== undefined ? { until: ctx.budget } : {}),
      seed: ctx.seed,
      history: resumed?.history,
      existingOptimizer: optimizer,
      stepper: stepper ?? undefined,
    });
  } finally {
    optimizer.dispose();
    await stepper?.dispose();
  }
  if (ctx.budget !== undefined) return pausedMetrics(ctx, history, lr, stopper?.best(), params.epochs);
  const last = history.at(-1);
  // On the onnxruntime route the last epoch scored these very weights on val already (unless
  // early stopping restored an earlier epoch's): its numbers are the final ones, as history.json
  // says, without a second pass through TF.js (about 1.2 s on MobileNetV2's top).
  const restored = stopper?.best() !== undefined && stopper.best()!.epoch !== last?.epoch;
  const scored = stepper && !restored && last?.valLoss !== undefined && last.valAcc !== undefined ? { loss: last.valLoss, acc: last.valAcc } : undefined;
  // The top shares its layers (and weights) with `model`, which the caller disposes.
  const final = val ? (scored ?? (await evaluateSource(tf, trainee, val, numClasses, { signal: ctx.signal }))) : undefined;
  const summary = await writeModelArtifact(ctx.outDir, model, sources.frozenFrom ? { ...request.info, frozenFrom: sources.frozenFrom } : request.info);
  await writeFile(path.join(ctx.outDir, 'history.json'), historyFile(history));
  const epochSeconds = history.filter((h) => h.seconds > 0).map((h) => h.seconds);
  return {
    epochs_run: history.length,
    ...(stopper?.best() ? { best_epoch: stopper.best()!.epoch + 1 } : {}),
    loss: last?.loss ?? null,
    acc: last?.acc ?? null,
    ...(final ? { val_loss: final.loss, val_acc: final.acc } : {}),
    lr,
    seconds_per_epoch: epochSeconds.length ? Math.round((epochSeconds.reduce((a, b) => a + b, 0) / epochSeconds.length) * 1000) / 1000 : null,
    ...passMetrics(sources),
    train_engine: stepper ? 'onnxruntime' : 'tfjs',
    trainable_params: summarizeModel(trainee).trainableParams,
    params: summary.params,
    ...(resumed ? { resumed_from_epoch: resumed.startEpoch } : {}),
  };
}

/** What `pausedMetrics` can report (`StageDefinition.budgetMetrics` of train-head and fine-tune). */
export const RUNG_METRICS = ['epochs_run', 'budget', 'loss', 'acc', 'val_loss', 'val_acc', 'best_epoch', 'lr', 'stopped'] as const;

/**
 * A run stopped at `ctx.budget` (a rung of a halved sweep): its entry holds the checkpoint to go
 * on from and the history; no model (nothing downstream reads a rung). Its metrics are those of
 * its last epoch, val included.
 */
async function pausedMetrics(ctx: StageContext<any>, history: EpochLogs[], lr: number, best: { epoch: number } | undefined, epochs: number): Promise<Metrics> {
  await copyCheckpoint(ctx.workDir, ctx.outDir);
  await writeFile(path.join(ctx.outDir, 'history.json'), historyFile(history));
  const last = history.at(-1);
  return {
    epochs_run: history.length,
    budget: ctx.budget!,
    loss: last?.loss ?? null,
    acc: last?.acc ?? null,
    ...(last?.valAcc !== undefined ? { val_loss: last.valLoss ?? null, val_acc: last.valAcc } : {}),
    // After the val metrics: a pruned branch's line (the first 6 metrics) shows what it was ranked by.
    ...(best ? { best_epoch: best.epoch + 1 } : {}),
    lr,
    // Early stopping ended it before the rung's end: it is done (StageDefinition.budgetMetrics).
    ...(history.length < Math.min(ctx.budget!, epochs) ? { stopped: true } : {}),
  };
}

async function classWeightsFor(spec: TrainingParams['class_weights'], dataset: ShardDataset, numClasses: number): Promise<number[] | undefined> {
  if (spec === 'none') return undefined;
  if (Array.isArray(spec)) {
    if (spec.length !== numClasses) throw new StageError('bad_class_weights', `class_weights has ${spec.length} entries but the data has ${numClasses} classes (${dataset.classes.join(', ')})`);
    return spec;
  }
  const counts = dataset.splits.train.classCounts;
  const total = counts.reduce((a, b) => a + b, 0);
  // Keras/sklearn "balanced": n_samples / (n_classes * count_c).
  return counts.map((c) => (c > 0 ? total / (numClasses * c) : 0));
}
