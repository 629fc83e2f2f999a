/**
 * `sparsity: auto`: the highest sparsity whose validation accuracy, after recovery, stays within
 * `max_accuracy_drop` of the unpruned model's. A bisection over a 0.05 grid from 0.10 to 0.95
 * (accuracy falls with sparsity, so 4-5 trials decide it); each trial prunes the *original*
 * weights and recovers on the cached frozen activations, so a trial costs only the top's epochs.
 */
import type * as TfCore from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { Logger } from 'pino';
import { StageError } from '../../runtime/errors.js';
import type { Tf } from '../backend.js';
import type { TrainingSources } from '../sources.js';
import { evaluateSource } from '../train.js';

/** Sparsities `auto` chooses from. */
export const SPARSITY_GRID = Array.from({ length: 18 }, (_, i) => Math.round((0.1 + i * 0.05) * 100) / 100);

/** One trial of the search, as reported in the stage's metrics. */
export interface SparsityTrial {
  sparsity: number;
  val_acc: number;
  drop: number;
  within: boolean;
}

/** Loss and accuracy of the sources' trainee on their val split; null without one. */
export async function scoreValidation(tf: Tf, sources: TrainingSources, numClasses: number): Promise<{ acc: number; loss: number } | null> {
  return sources.val?.count ? evaluateSource(tf, sources.trainee, sources.val, numClasses) : null;
}

/**
 * Runs `once(sparsity)` on grid points, bisecting for the highest one within `maxDrop`; returns
 * that run (or the lowest tried, which then fails the stage's gate) and every trial. `once` may
 * change `model`'s weights in place (magnitude masks): they are reset before each trial and the
 * best trial's weights are put back at the end.
 */
export async function searchSparsity<R extends { model: LayersModel }>(
  tf: Tf,
  model: LayersModel,
  before: number | null,
  maxDrop: number,
  once: (sparsity: number) => Promise<R>,
  score: (run: R) => Promise<{ acc: number } | null>,
  log: Logger,
): Promise<{ best: R; tried: SparsityTrial[] }> {
  if (before === null) throw new StageError('auto_sparsity_needs_val', 'sparsity: auto compares validation accuracy before and after pruning, but the shards have no val split; give a number, or add a val split to ingest');
  if (maxDrop >= 1) throw new StageError('auto_sparsity_needs_bound', 'sparsity: auto picks the highest sparsity within max_accuracy_drop, which is 1 (no bound); set max_accuracy_drop (e.g. 0.02)');
  const original = model.getWeights().map((w) => tf.keep(w.clone()));
  const tried: SparsityTrial[] = [];
  let best: { run: R; weights?: TfCore.Tensor[] } | undefined;
  let lowest: { run: R; weights?: TfCore.Tensor[]; sparsity: number } | undefined;
  let lo = -1;
  let hi = SPARSITY_GRID.length;
  try {
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      const sparsity = SPARSITY_GRID[mid];
      model.setWeights(original);
      const run = await once(sparsity);
      const acc = (await score(run))?.acc ?? 0;
      const drop = before - acc;
      const within = drop <= maxDrop + 1e-9;
      tried.push({ sparsity, val_acc: acc, drop: Math.round(drop * 1e6) / 1e6, within });
      log.info({ sparsity, val_acc: acc, drop, within }, 'sparsity trial');
      const weights = run.model === model ? model.getWeights().map((w) => tf.keep(w.clone())) : undefined;
      if (within) {
        best?.weights?.forEach((w) => w.dispose());
        best = { run, weights };
        lo = mid;
      } else {
        if (!lowest || sparsity < lowest.sparsity) {
          lowest?.weights?.forEach((w) => w.dispose());
          lowest = { run, weights, sparsity };
        } else weights?.forEach((w) => w.dispose());
        hi = mid;
      }
    }
    const chosen = best ?? lowest!;
    if (chosen.weights) model.setWeights(chosen.weights);
    return { best: chosen.run, tried };
  } finally {
    original.forEach((w) => w.dispose());
    best?.weights?.forEach((w) => w.dispose());
    lowest?.weights?.forEach((w) => w.dispose());
  }
}
