/**
 * `prune`: makes a trained model smaller and measures what that costs.
 *
 * - `magnitude`: the smallest kernel scalars of conv/depthwise/dense layers are zeroed behind
 *   masks (per layer or globally), gradually on TF-MOT's polynomial schedule during recovery or
 *   at once; the masks are re-applied after every optimizer step, and the model is saved in the
 *   sparse weights encoding (src/ml/prune/sparse-format.ts), which evaluate, export, predict and
 *   load-base read back through `loadModel`.
 * - `structured`: whole filters/units are removed by L1 norm or BN scale, keeping channels in
 *   step across residual adds and concatenations; the result is an ordinary smaller model.
 *
 * Then a short recovery fine-tuning at a small learning rate, and a report of params, bytes on
 * disk, MACs, latency (same backend, same batch) and validation accuracy before and after. A
 * `max_accuracy_drop` bound turns too large a loss into a `GateError` (exit 1).
 */
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import paramsSchema from '../../schemas/stages/prune.schema.json' with { type: 'json' };
import { openDataset, type ShardDataset } from '../data/shards.js';
import { GateError, StageError } from '../runtime/errors.js';
import type { Json, Metrics, StageContext, StageDefinition } from '../runtime/types.js';
import { readModelArtifact, writeModelArtifact, type ModelInfo } from '../ml/artifact.js';
import { useTf, type Tf } from '../ml/backend.js';
import { WEIGHTS_FILE } from '../ml/io.js';
import { findPrunableKernels, hasPrunableKernel, measureKernelSparsity, startMaskedPruning, type PolynomialSchedule } from '../ml/prune/magnitude.js';
import { countMacs, countParams, measureLatency } from '../ml/prune/measure.js';
import { runRecovery } from '../ml/prune/recover.js';
import { historyFile, type EpochLogs } from '../ml/train.js';
import { scoreValidation, searchSparsity } from '../ml/prune/search.js';
import { passMetrics, prepareSources, type TrainingSources } from '../ml/sources.js';
import { markSparse } from '../ml/prune/sparse-format.js';
import { analyzeChannels, chooseChannels, prunableGroups, rebuildPruned, scoreChannels } from '../ml/prune/structured.js';
import { allLayers, closestNames } from '../ml/surgery.js';
import { requireHead, requireInputShape, requireSameClasses } from './guards.js';

/** `schedule:` as written in the pipeline file. */
export type ScheduleParam = 'constant' | { initial_sparsity?: number; power?: number; end_fraction?: number; frequency?: number };

/** `with:` of a `prune` stage (see schemas/stages/prune.schema.json for meanings and defaults). */
export interface PruneParams {
  /** magnitude (unstructured masks) or structured (channels removed). Default magnitude. */
  method: 'magnitude' | 'structured';
  /**
   * Fraction of kernel scalars (magnitude) or channels (structured) removed, in [0, 1), or
   * `auto`: the highest sparsity whose accuracy drop stays within `max_accuracy_drop`. Default 0.5.
   */
  sparsity: number | 'auto';
  /** One fraction per kernel/group, or one ranking across all. Default per-layer. */
  scope: 'global' | 'per-layer';
  /** Prune trainable layers only, or all conv/dense layers. Default trainable. */
  layers: 'trainable' | 'all';
  /** Layer names never pruned. Default []. */
  exclude: string[];
  /** Structured channel importance. Default l1. */
  importance: 'l1' | 'bn';
  /** Magnitude schedule: constant, or polynomial decay fields. Default `{ initial_sparsity: 0, power: 3, end_fraction: 0.75, frequency: 4 }` (polynomial, 0 → target). */
  schedule: ScheduleParam;
  /** Recovery epochs. Default 2. */
  epochs: number;
  /** Recovery learning rate; default head lr / lr_divisor, else 1e-4. */
  lr?: number;
  /** Default 100. */
  lr_divisor: number;
  /** Default 32. */
  batch: number;
  /** Default 1. */
  augment_views: number;
  /** Largest allowed drop of validation accuracy (0..1); 1 never fails. Default 0.02. */
  max_accuracy_drop: number;
  /** Batch of the latency measurement. Default 1. */
  latency_batch: number;
  /** Timed runs of the latency measurement. Default 7. */
  latency_runs: number;
}

/** The polynomial schedule with defaults applied, or null for `constant`. */
export function resolveSchedule(schedule: ScheduleParam): PolynomialSchedule | null {
  if (schedule === 'constant') return null;
  return { initialSparsity: schedule.initial_sparsity ?? 0, power: schedule.power ?? 3, endFraction: schedule.end_fraction ?? 0.75, frequency: schedule.frequency ?? 4 };
}

/** Throws the `max_accuracy_drop` GateError when `after` is more than `maxDrop` below `before`. */
export function checkAccuracyDrop(before: number | null, after: number | null, maxDrop: number, metrics: Metrics): void {
  if (before === null || after === null || maxDrop >= 1) return;
  const drop = before - after;
  // A tiny epsilon so that 0.8 - 0.75 = 0.05000000000000004 passes a 0.05 bound.
  if (drop > maxDrop + 1e-9) {
    throw new GateError('accuracy_drop', `pruning lost ${round(drop * 100, 2)} points of validation accuracy (${round(before, 4)} → ${round(after, 4)}), more than max_accuracy_drop ${maxDrop}; lower the sparsity, add recovery epochs or raise the lr`, {
      metrics,
      before,
      after,
      drop,
      max_accuracy_drop: maxDrop,
    });
  }
}

function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Before/after measurements of one model. */
interface Measurement {
  params: number;
  nonzeroParams: number;
  macs: number;
  nonzeroMacs: number;
  latencyMs: number;
  valAcc: number | null;
  valLoss: number | null;
}

async function measure(tf: Tf, model: LayersModel, sources: TrainingSources, params: PruneParams, seed: number): Promise<Measurement> {
  const counts = await countParams(tf, model);
  const macs = await countMacs(model);
  const latencyMs = await measureLatency(tf, model, { batch: params.latency_batch, runs: params.latency_runs, seed });
  const val = await scoreValidation(tf, sources, model.outputs[0].shape.at(-1) as number);
  return { params: counts.params, nonzeroParams: counts.nonzero, macs: macs.dense, nonzeroMacs: macs.nonzero, latencyMs, valAcc: val?.acc ?? null, valLoss: val?.loss ?? null };
}

function checkExcluded(model: LayersModel, exclude: string[]): void {
  const names = allLayers(model).map((l) => l.name);
  for (const name of exclude) {
    if (names.includes(name)) continue;
    const suggestions = closestNames(name, names);
    throw new StageError('layer_not_found', `exclude names "${name}", which model "${model.name}" does not have${suggestions.length ? `; did you mean ${suggestions.map((s) => `"${s}"`).join(', ')}?` : ''}`, { layer: name, suggestions });
  }
}

export const prune: StageDefinition<PruneParams> = {
  kind: 'prune',
  version: 4, // 4: history.json without wall-clock seconds
  lookahead: true,
  description: 'Prune a trained model (magnitude masks stored sparsely, or structured channel removal), recover by fine-tuning, and report bytes, MACs, latency and accuracy before/after',
  paramsSchema,
  consumes: ['shards', 'model'],
  provides: ['model'],
  resource: 'tf',
  async run(ctx, params) {
    const tf = await useTf(ctx.log);
    const modelInput = ctx.input('model');
    const { model, info } = await readModelArtifact(modelInput.dir);
    requireHead(info.classes, 'put prune after train-head or fine-tune');
    const dataset = await openDataset(ctx.input('shards').dir);
    const owned: LayersModel[] = [model];
    try {
      requireInputShape(model, dataset.recordShape, 'the shards hold records of', 'preprocess to the size train-head used');
      requireSameClasses(info.classes, dataset.classes);
      checkExcluded(model, params.exclude);
      const lr = params.lr ?? (info.headLr !== undefined ? info.headLr / params.lr_divisor : 1e-4);
      const bytesBefore = (await stat(path.join(modelInput.dir, WEIGHTS_FILE))).size;
      const sources = await prepareSources(tf, ctx, model, dataset, { batch: params.batch, augmentViews: params.augment_views, frozenFrom: info.frozenFrom });
      const before = await measure(tf, model, sources, params, ctx.seed);
      ctx.log.info({ ...before, bytes: bytesBefore }, 'measured before pruning');
      const once = async (sparsity: number) => {
        const trial = { ...params, sparsity };
        const result = params.method === 'magnitude' ? await pruneByMagnitude(tf, ctx, model, dataset, trial, lr, info.frozenFrom) : await pruneStructured(tf, ctx, model, dataset, trial, lr, info.frozenFrom);
        if (result.model !== model) owned.push(result.model);
        return result;
      };
      const search = params.sparsity === 'auto' ? await searchSparsity(tf, model, before.valAcc, params.max_accuracy_drop, once, (r) => scoreValidation(tf, r.sources, dataset.classes.length), ctx.log) : null;
      const run = search ? search.best : await once(params.sparsity as number);
      const after = await measure(tf, run.model, run.sources, params, ctx.seed);
      const target = run.target;
      const notes: Record<string, Json> = { ...(info.notes ?? {}), pruning: { method: params.method, target, scope: params.scope, ...run.facts } };
      const pruned: ModelInfo = { ...info, notes, lineage: [...info.lineage, 'prune'] };
      const written = await writeModelArtifact(ctx.outDir, run.model, pruned);
      // The recovery curve for `pipeline report`, in train-head's and fine-tune's format.
      await writeFile(path.join(ctx.outDir, 'history.json'), historyFile(run.history));
      const metrics: Metrics = {
        method: params.method,
        scope: params.scope,
        target_sparsity: target,
        ...(search ? { sparsity_search: search.tried as unknown as Json } : {}),
        ...run.facts,
        params_before: before.params,
        params_after: after.params,
        nonzero_params_after: after.nonzeroParams,
        bytes_before: bytesBefore,
        bytes_after: written.weightBytes,
        macs_before: before.macs,
        macs_after: after.macs,
        nonzero_macs_after: after.nonzeroMacs,
        latency_ms_before: round(before.latencyMs, 3),
        latency_ms_after: round(after.latencyMs, 3),
        latency_batch: params.latency_batch,
        val_acc_before: before.valAcc,
        val_acc_after: after.valAcc,
        val_loss_before: before.valLoss,
        val_loss_after: after.valLoss,
        accuracy_drop: before.valAcc !== null && after.valAcc !== null ? round(before.valAcc - after.valAcc, 6) : null,
        epochs_run: run.epochsRun,
        lr,
        ...passMetrics(run.sources),
      };
      ctx.log.info({ metrics }, 'pruned');
      checkAccuracyDrop(before.valAcc, after.valAcc, params.max_accuracy_drop, metrics);
      return { metrics };
    } finally {
      await dataset.close();
      for (const m of new Set(owned)) m.dispose();
    }
  },
};

/** What a pruning method hands back to the stage. */
interface PruneRun {
  model: LayersModel;
  /** Method-specific metrics (sparsity reached, kept-channel ratio, ...), also saved in the model's notes. */
  facts: Record<string, Json>;
  epochsRun: number;
  /** The recovery epochs (loss, accuracy, validation), written as `history.json` like train-head's. */
  history: EpochLogs[];
  /** What recovery trained and scored on (cached activations when the bottom was kept). */
  sources: TrainingSources;
  /** The sparsity this run aimed at. */
  target: number;
}

function stepsPerEpoch(dataset: ShardDataset, batch: number): number {
  return Math.ceil((dataset.splits.train?.count ?? 0) / batch);
}

async function pruneByMagnitude(tf: Tf, ctx: StageContext<PruneParams>, model: LayersModel, dataset: ShardDataset, params: PruneParams & { sparsity: number }, lr: number, frozenFrom: string | undefined): Promise<PruneRun> {
  const kernels = findPrunableKernels(model, { layers: params.layers, exclude: params.exclude });
  if (!kernels.length) throw new StageError('nothing_to_prune', `no ${params.layers === 'trainable' ? 'trainable ' : ''}conv or dense kernels to prune${params.layers === 'trainable' ? '; set layers: all to prune frozen layers too' : ''}`, { layers: params.layers, exclude: params.exclude });
  const schedule = params.epochs > 0 ? resolveSchedule(params.schedule) : null;
  // Frozen kernels whose masks grow on a schedule change the frozen part's outputs step by step,
  // so its features cannot be cached; one-shot masks are applied before the features are made.
  const allowFeatureCache = schedule === null || kernels.every((k) => k.trainable);
  const pruning = await startMaskedPruning({
    tf,
    kernels,
    target: params.sparsity,
    scope: params.scope,
    schedule,
    totalSteps: params.epochs * stepsPerEpoch(dataset, params.batch),
    onUpdate: (step, sparsity) => ctx.log.debug({ step, sparsity }, 'masks updated'),
  });
  try {
    const sources = await prepareSources(tf, ctx, model, dataset, { batch: params.batch, augmentViews: params.augment_views, allowCache: allowFeatureCache, frozenFrom });
    const history = await runRecovery(tf, ctx, sources, { epochs: params.epochs, lr, numClasses: dataset.classes.length, hooks: [pruning.hook] });
    await pruning.finish();
    const reached = await measureKernelSparsity(kernels);
    markSparse(model);
    return {
      model,
      facts: {
        sparsity: reached.sparsity,
        pruned_kernels: kernels.length,
        pruned_scalars: reached.zeros,
        kernel_scalars: reached.total,
        recovery_steps: pruning.steps(),
        schedule: schedule ? 'polynomial' : 'constant',
      },
      epochsRun: history.length,
      history,
      sources,
      target: params.sparsity,
    };
  } finally {
    pruning.dispose();
  }
}

async function pruneStructured(tf: Tf, ctx: StageContext<PruneParams>, model: LayersModel, dataset: ShardDataset, params: PruneParams & { sparsity: number }, lr: number, frozenFrom: string | undefined): Promise<PruneRun> {
  const plan = analyzeChannels(model, { layers: params.layers, exclude: params.exclude });
  const groups = prunableGroups(plan);
  if (!groups.length) {
    const producers = allLayers(model).filter(hasPrunableKernel).length;
    throw new StageError('nothing_to_prune', `no channel group can be pruned (${producers} conv/dense layers; ${plan.leftAlone.length} layers left alone: ${plan.leftAlone.slice(0, 5).join(', ') || 'none'})${params.layers === 'trainable' ? '; set layers: all to prune frozen layers too' : ''}`, {
      leftAlone: plan.leftAlone,
    });
  }
  const scores = await scoreChannels(model, plan, params.importance);
  const kept = chooseChannels(plan, scores, params.sparsity, params.scope);
  const total = groups.reduce((sum, g) => sum + g.size, 0);
  const keptCount = groups.reduce((sum, g) => sum + (kept.get(g.id)?.length ?? g.size), 0);
  if (plan.leftAlone.length) ctx.log.info({ leftAlone: plan.leftAlone }, 'layers whose channels are left alone');
  if (scores.l1Fallbacks) ctx.log.info({ groups: scores.l1Fallbacks }, 'groups without a BatchNorm scale scored by l1');
  const pruned = await rebuildPruned(tf, model, plan, kept);
  try {
    const sources = await prepareSources(tf, ctx, pruned, dataset, { batch: params.batch, augmentViews: params.augment_views, frozenFrom });
    const history = await runRecovery(tf, ctx, sources, { epochs: params.epochs, lr, numClasses: dataset.classes.length, hooks: [] });
    return {
      model: pruned,
      facts: {
        kept_channel_ratio: keptCount / total,
        channels_before: total,
        channels_after: keptCount,
        channel_groups: groups.length,
        fixed_groups: plan.groups.filter((g) => g.producers.length > 0 && g.fixedBy.length > 0).length,
        left_alone: plan.leftAlone,
        importance: params.importance,
        l1_fallback_groups: scores.l1Fallbacks,
      },
      epochsRun: history.length,
      history,
      sources,
      target: params.sparsity,
    };
  } catch (error) {
    pruned.dispose();
    throw error;
  }
}
