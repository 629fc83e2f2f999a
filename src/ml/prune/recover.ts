/**
 * Recovery fine-tuning after pruning, on the shared training loop (`fitModel`) and the shared
 * frozen pass (`prepareSources`): when pruning leaves the frozen bottom as it was, recovery
 * trains the top on the activations the earlier stages cached (the pass is keyed by a digest of
 * the bottom's layers and weights, so a pruned bottom never reuses an unpruned one's).
 */
import { AbortedError, StageError } from '../../runtime/errors.js';
import type { StageContext } from '../../runtime/types.js';
import type { Tf } from '../backend.js';
import type { TrainingSources } from '../sources.js';
import { createTrainStepper } from '../engine.js';
import { batchProgressHook, fitModel, nanGuard, progressHook, type EpochLogs, type TrainHook, type TrainStepper } from '../train.js';

/** Options of `runRecovery`. */
export interface RunRecoveryOptions {
  epochs: number;
  lr: number;
  numClasses: number;
  /** Pruning hooks (mask re-application); run right after each step, before the others. */
  hooks: TrainHook[];
}

/** Trains the sources' trainee with Adam at `lr`; returns the history (empty for 0 epochs). */
export async function runRecovery(tf: Tf, ctx: StageContext<unknown>, sources: TrainingSources, options: RunRecoveryOptions): Promise<EpochLogs[]> {
  if (options.epochs <= 0) return [];
  if (!sources.trainee.trainableWeights.length) {
    throw new StageError('nothing_trainable', 'recovery fine-tuning needs trainable layers, but the model has none; unfreeze some layers first or set epochs: 0', {});
  }
  const stepper = await createTrainStepper(tf, sources.trainee, { numClasses: options.numClasses, log: ctx.log });
  try {
    return await recover(tf, ctx, sources, options, stepper ?? undefined);
  } finally {
    await stepper?.dispose();
  }
}

async function recover(tf: Tf, ctx: StageContext<unknown>, sources: TrainingSources, options: RunRecoveryOptions, stepper: TrainStepper | undefined): Promise<EpochLogs[]> {
  const history = await fitModel(tf, sources.trainee, sources.train!, sources.val, {
    stepper,
    epochs: options.epochs,
    optimizer: { name: 'adam', lr: options.lr },
    numClasses: options.numClasses,
    signal: ctx.signal,
    seed: ctx.seed,
    hooks: [
      ...options.hooks,
      nanGuard(),
      batchProgressHook((label, total) => ctx.track(label, total)),
      progressHook((logs, epochs) => {
        ctx.log.info({ ...logs }, 'recovery epoch done');
        ctx.progress({ unit: 'epoch', done: logs.epoch + 1, total: epochs, info: { loss: logs.loss, acc: logs.acc, ...(logs.valAcc !== undefined ? { val_acc: logs.valAcc } : {}) } });
      }),
    ],
  });
  if (ctx.signal.aborted) throw new AbortedError();
  return history;
}
