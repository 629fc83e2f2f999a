/**
 * The training loop every training stage shares (train-head, fine-tune, prune recovery).
 *
 * A custom loop rather than `model.fit`: `fit` shuffles with unseeded `Math.random`, cannot
 * resume mid-run, and checks nothing between batches. Here each step is one
 * `optimizer.minimize` inside `tf.tidy`, batches come from a seeded `BatchSource`, and
 * everything around the step (NaN guard, early stopping, checkpoints, progress) is a hook:
 * an object of optional async methods run in the order given (fastai's callbacks, tfjs's
 * `BaseCallback`, vitest's reporters).
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { deriveSeed, mulberry32 } from '../data/random.js';
import { AbortedError, StageError } from '../runtime/errors.js';
import type { ProgressTracker } from '../runtime/types.js';
import type { Tf } from './backend.js';
import { batchInputs, crossEntropy, evaluateSource, evaluateStepper, throwIfAborted } from './evaluation.js';
import { supplyNormalizationConstants } from './surgery.js';

export { batchInputs, crossEntropy, evaluateSource, type EvaluateOptions } from './evaluation.js';

/** One batch of inputs (any rank) and integer labels. */
export interface TrainBatch {
  x: Float32Array;
  /** Shape of `x`, batch dimension first. */
  shape: number[];
  y: Int32Array;
  count: number;
  /** Further inputs of a multi-input model (cached activations of several frontier tensors). */
  more?: { x: Float32Array; shape: number[] }[];
}

/** Where batches come from; `epoch` changes the seeded order (and augmentation). */
export interface BatchSource {
  /** Records in the split. */
  count: number;
  /** Records per batch (the last batch may be smaller), when fixed; progress counts batches with it. */
  batchSize?: number;
  /**
   * The batches of one pass. The same epoch and options give the same records every call
   * (`evaluateSource` reuses its result for the same source object and weights).
   */
  batches(epoch: number, options: { shuffle: boolean }): AsyncIterable<TrainBatch>;
}

/** Optimizer choice, as written in the pipeline file. */
export interface OptimizerSpec {
  name: 'adam' | 'sgd' | 'rmsprop';
  /** Peak learning rate. */
  lr: number;
  /** SGD/RMSprop momentum. Default 0.9 for sgd, 0 for rmsprop. */
  momentum?: number;
}

/** Learning-rate schedule over epochs: linear warmup, then constant or cosine decay to ~0. */
export interface ScheduleSpec {
  /** Epochs of linear warmup from lr/10 to lr. Default 0. */
  warmup: number;
  /** Cosine decay after warmup. Default false. */
  cosine: boolean;
}

export interface EpochLogs {
  epoch: number;
  loss: number;
  acc: number;
  valLoss?: number;
  valAcc?: number;
  lr: number;
  seconds: number;
}

/**
 * `history.json` of a training stage (train-head, fine-tune, prune's recovery): the epochs
 * without their wall-clock `seconds`, so that the same training writes the same bytes. A
 * stage's output digest keys its dependents: with timings in it, every recomputation (another
 * machine, a `--force`, a BullMQ worker) would re-key everything downstream and miss the
 * shared remote cache. Epoch times stay in the log and in `seconds_per_epoch`.
 */
export function historyFile(history: readonly EpochLogs[]): string {
  return JSON.stringify(history.map(({ seconds: _seconds, ...epoch }) => epoch), null, 1) + '\n';
}

/** Mutable state hooks can read and steer. */
export interface TrainState {
  tf: Tf;
  model: LayersModel;
  optimizer: TfCore.Optimizer;
  /** 0-based epoch being run. */
  epoch: number;
  epochs: number;
  /** Batches per epoch of the training source, when its batch size is known. */
  batches?: number;
  history: EpochLogs[];
  /** A hook sets it to stop after this epoch. */
  stop: boolean;
  /**
   * How the run ended, for `onTrainEnd`: `completed` (all epochs, or stopped by a hook),
   * `aborted` (the signal), `failed` (an error, a hook's included). `running` until then.
   */
  outcome: 'running' | 'completed' | 'aborted' | 'failed';
}

/** Optional async methods, run in the order the hooks are given. */
export interface TrainHook {
  onTrainStart?(state: TrainState): Promise<void> | void;
  /** Before the first batch of `state.epoch`. */
  onEpochStart?(state: TrainState): Promise<void> | void;
  onBatchEnd?(state: TrainState, batch: { index: number; loss: number }): Promise<void> | void;
  onEpochEnd?(state: TrainState, logs: EpochLogs): Promise<void> | void;
  /** Runs however training ends (see `TrainState.outcome`), also after an abort or an error. */
  onTrainEnd?(state: TrainState): Promise<void> | void;
  /** The hook writes the model's weights in `onBatchEnd` (pruning masks): a stepper re-reads them. */
  changesWeights?: boolean;
}

export interface FitOptions {
  epochs: number;
  optimizer: OptimizerSpec;
  schedule?: ScheduleSpec;
  /** Per-class loss weights (index = label); default all 1. */
  classWeights?: number[];
  numClasses: number;
  hooks?: TrainHook[];
  signal?: AbortSignal;
  /** First epoch to run (after resuming from a checkpoint). Default 0. */
  startEpoch?: number;
  /**
   * Stop after this many epochs (of `epochs`), as an interrupted run would: the schedule is
   * still that of `epochs`, so a run resumed from here trains exactly as one that never
   * stopped. Default `epochs`.
   */
  until?: number;
  /** History of the epochs before `startEpoch` (resume). */
  history?: EpochLogs[];
  /** An optimizer to continue with (resume); otherwise one is made from `optimizer`. */
  existingOptimizer?: TfCore.Optimizer;
  /** Seeds TF.js's own randomness (Dropout masks) per step. Default 0. */
  seed?: number;
  /**
   * Computes each step's gradients elsewhere (the onnxruntime training graph) and applies them
   * with `optimizer`, instead of TF.js autodiff. Default: `optimizer.minimize`.
   */
  stepper?: TrainStepper;
}

/** A replacement for `optimizer.minimize` (see `src/ml/onnx/trainer.ts`). */
export interface TrainStepper {
  /** One step on a batch; `seed` seeds the step's dropout masks. Returns the loss before the update and the hits. */
  step(batch: TrainBatch & { seed: number }, optimizer: TfCore.Optimizer): Promise<{ loss: number; correct: number }>;
  /** Loss and hits in inference mode. */
  evaluate(batch: TrainBatch): Promise<{ loss: number; correct: number }>;
  /** Re-reads the weights after something other than `step` changed them. */
  refresh(): Promise<void>;
}

export function createOptimizer(tf: Tf, spec: OptimizerSpec): TfCore.Optimizer {
  switch (spec.name) {
    case 'sgd':
      return tf.train.momentum(spec.lr, spec.momentum ?? 0.9);
    case 'rmsprop':
      return tf.train.rmsprop(spec.lr, 0.9, spec.momentum ?? 0);
    default:
      return tf.train.adam(spec.lr);
  }
}

/**
 * Sets an optimizer's learning rate for the next steps. SGD/momentum bake it into a constant
 * (`setLearningRate` rebuilds it); Adam and RMSprop read the plain field on every step.
 */
export function setLearningRate(optimizer: TfCore.Optimizer, lr: number): void {
  const target = optimizer as unknown as { learningRate: number; setLearningRate?(lr: number): void };
  if (typeof target.setLearningRate === 'function') target.setLearningRate(lr);
  else target.learningRate = lr;
}

/** Learning rate for an epoch under the schedule: warmup from lr/10 rising linearly to lr. */
export function learningRateAt(epoch: number, epochs: number, lr: number, schedule?: ScheduleSpec): number {
  const warmup = schedule?.warmup ?? 0;
  if (epoch < warmup) return lr * (0.1 + (0.9 * epoch) / warmup);
  if (!schedule?.cosine) return lr;
  const span = Math.max(1, epochs - warmup);
  return lr * 0.5 * (1 + Math.cos((Math.PI * (epoch - warmup)) / span));
}

/**
 * Trains `model` on `train`, evaluating on `val` each epoch; returns the full history.
 *
 * It always ends the same way: every hook's `onTrainEnd` runs (with `state.outcome` saying
 * why), the optimizer it made and its other tensors are disposed, and the model's layers are
 * as they were. An abort of `options.signal`, noticed before every batch (validation
 * included) and before the epoch-end hooks, throws `AbortedError`: callers score and save
 * nothing, and no checkpoint is written for the interrupted epoch. A hook's error (the NaN
 * guard's, say) is thrown as it is; an error in `onTrainEnd` only when training itself
 * succeeded.
 */
export async function fitModel(tf: Tf, model: LayersModel, train: BatchSource, val: BatchSource | undefined, options: FitOptions): Promise<EpochLogs[]> {
  // First: it throws, before anything is allocated, for a layer TF.js cannot differentiate.
  const restoreNormalization = supplyNormalizationConstants(tf, model);
  const optimizer = options.existingOptimizer ?? createOptimizer(tf, options.optimizer);
  const state: TrainState = { tf, model, optimizer, epoch: options.startEpoch ?? 0, epochs: options.epochs, batches: train.batchSize ? Math.ceil(train.count / train.batchSize) : undefined, history: [...(options.history ?? [])], stop: false, outcome: 'running' };
  const hooks = options.hooks ?? [];
  const weights = options.classWeights ? tf.tensor1d(options.classWeights) : undefined;
  try {
    let failure: { error: unknown } | undefined;
    try {
      await runEpochs(tf, state, train, val, options, weights);
      state.outcome = 'completed';
    } catch (error) {
      failure = { error };
      state.outcome = error instanceof AbortedError ? 'aborted' : 'failed';
    }
    let endFailure: { error: unknown } | undefined;
    for (const hook of hooks) {
      try {
        await hook.onTrainEnd?.(state);
      } catch (error) {
        endFailure ??= { error };
      }
    }
    if (failure) throw failure.error;
    if (endFailure) throw endFailure.error;
    return state.history;
  } finally {
    restoreNormalization();
    weights?.dispose();
    if (!options.existingOptimizer) optimizer.dispose();
  }
}

async function runEpochs(tf: Tf, state: TrainState, train: BatchSource, val: BatchSource | undefined, options: FitOptions, weights: TfCore.Tensor1D | undefined): Promise<void> {
  const { model, optimizer } = state;
  const hooks = options.hooks ?? [];
  const signal = options.signal;
  const variables = () => model.trainableWeights.map((w) => (w as unknown as { read(): TfCore.Variable }).read());
  throwIfAborted(signal);
  for (const hook of hooks) await hook.onTrainStart?.(state);
  for (let epoch = state.epoch; epoch < Math.min(options.epochs, options.until ?? Infinity) && !state.stop; epoch++) {
    throwIfAborted(signal);
    state.epoch = epoch;
    const t0 = performance.now();
    const lr = learningRateAt(epoch, options.epochs, options.optimizer.lr, options.schedule);
    setLearningRate(optimizer, lr);
    let lossSum = 0;
    let correct = 0;
    let seen = 0;
    let index = 0;
    const vars = variables();
    if (!vars.length) throw new StageError('nothing_trainable', 'the model has no trainable weights: unfreeze some layers or add a head');
    for (const hook of hooks) await hook.onEpochStart?.(state);
    for await (const batch of train.batches(epoch, { shuffle: true })) {
      throwIfAborted(signal);
      if (options.stepper) {
        const result = await options.stepper.step({ ...batch, seed: deriveSeed(options.seed ?? 0, 'step', epoch, index) }, optimizer);
        correct += result.correct;
        lossSum += result.loss * batch.count;
        seen += batch.count;
        for (const hook of hooks) await hook.onBatchEnd?.(state, { index, loss: result.loss });
        if (hooks.some((h) => h.changesWeights)) await options.stepper.refresh();
        index++;
        continue;
      }
      const [cost, hits] = withSeededRandom(deriveSeed(options.seed ?? 0, 'step', epoch, index), () => tf.tidy(() => {
        const x = batchInputs(tf, batch);
        const y = tf.tensor1d(batch.y, 'int32');
        let accuracy: TfCore.Scalar | undefined;
        try {
          const loss = optimizer.minimize(
            () => {
              const probs = model.apply(x, { training: true }) as TfCore.Tensor;
              // Kept: minimize computes the loss in a scope of its own that frees everything else.
              accuracy = tf.keep(tf.sum(tf.cast(tf.equal(tf.cast(tf.argMax(probs, -1), 'int32'), y), 'int32'))) as TfCore.Scalar;
              return crossEntropy(tf, probs, y, options.numClasses, weights);
            },
            true,
            vars,
          )!;
          return [loss, accuracy!] as const;
        } catch (error) {
          accuracy?.dispose(); // kept tensors outlive the tidy
          throw error;
        }
      }));
      let loss: number;
      try {
        loss = (await cost.data())[0];
        correct += (await hits.data())[0];
      } finally {
        cost.dispose();
        hits.dispose();
      }
      lossSum += loss * batch.count;
      seen += batch.count;
      for (const hook of hooks) await hook.onBatchEnd?.(state, { index, loss });
      index++;
    }
    const logs: EpochLogs = { epoch, loss: lossSum / Math.max(1, seen), acc: correct / Math.max(1, seen), lr, seconds: 0 };
    if (val && val.count) {
      const result = options.stepper ? await evaluateStepper(options.stepper, val, signal) : await evaluateSource(tf, model, val, options.numClasses, { signal });
      logs.valLoss = result.loss;
      logs.valAcc = result.acc;
    }
    logs.seconds = Math.round(performance.now() - t0) / 1000;
    // Before the epoch-end hooks: an interrupted run writes no checkpoint and logs no epoch.
    throwIfAborted(signal);
    state.history.push(logs);
    for (const hook of hooks) await hook.onEpochEnd?.(state, logs);
  }
}

/**
 * Runs `fn` with `Math.random` replaced by a generator seeded from `seed`. TF.js draws the seed
 * of every unseeded random op (Dropout's mask) from `Math.random`; a fixed `seed` on the
 * Dropout layer would instead repeat the same mask on every step. This keeps masks different
 * per step and still reproducible.
 */
export function withSeededRandom<T>(seed: number, fn: () => T): T {
  const original = Math.random;
  Math.random = mulberry32(seed);
  try {
    return fn();
  } finally {
    Math.random = original;
  }
}

/** Fails the stage on a NaN or infinite loss, naming the epoch and batch. */
export function nanGuard(): TrainHook {
  return {
    onEpochEnd(_state, logs) {
      // The batch losses are computed before each update: the last update, or the validation
      // pass, can still produce NaN weights or outputs.
      for (const [name, value] of [['loss', logs.loss], ['validation loss', logs.valLoss]] as const)
        if (value !== undefined && !Number.isFinite(value))
          throw new StageError('nan_loss', `the ${name} became ${value} at the end of epoch ${logs.epoch + 1}; lower the learning rate or check the data (the last good checkpoint is kept)`, { epoch: logs.epoch + 1 });
    },
    onBatchEnd(state, batch) {
      if (!Number.isFinite(batch.loss))
        throw new StageError('nan_loss', `the loss became ${batch.loss} at epoch ${state.epoch + 1}, batch ${batch.index + 1}; lower the learning rate or check the data (the last good checkpoint is kept)`, {
          epoch: state.epoch + 1,
          batch: batch.index + 1,
        });
    },
  };
}

/**
 * Stops when `monitor` (val loss, else train loss) has not improved by `minDelta` for
 * `patience` epochs, and restores the best weights at the end.
 */
export interface EarlyStopping extends TrainHook {
  /** The best epoch (0-based) and its monitored value so far. */
  best(): { epoch: number; value: number } | undefined;
  /** The best epoch with its weights, for a checkpoint (the tensors stay owned by the hook). */
  snapshot(): { epoch: number; value: number; weights?: TfCore.Tensor[] } | undefined;
  /** Continues from a checkpoint's snapshot (takes ownership of `weights`). */
  resume(best: { epoch: number; value: number; weights?: TfCore.Tensor[] }): void;
}

export function earlyStopping(options: { patience: number; minDelta?: number; restoreBest?: boolean }): EarlyStopping {
  let best: { epoch: number; value: number; weights?: TfCore.Tensor[] } | undefined;
  return {
    best: () => (best ? { epoch: best.epoch, value: best.value } : undefined),
    snapshot: () => best,
    resume(snapshot) {
      best?.weights?.forEach((w) => w.dispose());
      best = snapshot;
    },
    onEpochEnd(state, logs) {
      const value = logs.valLoss ?? logs.loss;
      if (!best || value < best.value - (options.minDelta ?? 0) || (!Number.isFinite(best.value) && Number.isFinite(value))) {
        best?.weights?.forEach((w) => w.dispose());
        best = { epoch: logs.epoch, value, weights: options.restoreBest === false ? undefined : state.model.getWeights().map((w) => state.tf.keep(w.clone())) };
      } else if (logs.epoch - best.epoch >= options.patience) {
        state.stop = true;
      }
    },
    onTrainEnd(state) {
      // Only a finished run is scored and saved; after an abort or a failure the snapshot is just freed.
      if (state.outcome === 'completed' && best?.weights && best.epoch !== state.history.at(-1)?.epoch) state.model.setWeights(best.weights);
      best?.weights?.forEach((w) => w.dispose());
      if (best) best.weights = undefined;
    },
  };
}

/**
 * Counts each epoch's batches on a tracker (`StageContext.track`, a bar with rate and ETA):
 * one step per epoch, labelled `epoch 3/15`, ended when the epoch ends or training stops.
 */
export function batchProgressHook(track: (label: string, total?: number) => ProgressTracker): TrainHook {
  let current: ProgressTracker | undefined;
  const end = () => {
    current?.done();
    current = undefined;
  };
  return {
    onEpochStart(state) {
      end();
      current = track(`epoch ${state.epoch + 1}/${state.epochs}`, state.batches);
    },
    onBatchEnd(_state, batch) {
      current?.tick(1, { loss: batch.loss });
    },
    onEpochEnd: end,
    onTrainEnd: end,
  };
}

/** Reports each epoch through the stage's progress and log. */
export function progressHook(report: (logs: EpochLogs, epochs: number) => void): TrainHook {
  return { onEpochEnd: (state, logs) => report(logs, state.epochs) };
}
