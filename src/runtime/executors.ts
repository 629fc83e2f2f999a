/**
 * The seams where the executor has stages computed somewhere else than in its own process: a
 * `StageDispatcher` computes every stage (BullMQ workers, `--executor bullmq`), a
 * `StageOffloader` the `tf` stages beyond the one computing here (child processes, `--tf-jobs`);
 * and the small pieces of scheduling `executePlan` uses around them.
 */
import type { Logger } from 'pino';
import type { EntryMeta } from './cache.js';
import type { ComputeOptions } from './compute.js';
import type { StageSummary } from './execute.js';
import type { ResolvedPipeline } from './load.js';
import type { Plan, PlannedStage } from './plan.js';
import type { FailedBranch, ProgressEvent } from './types.js';

/**
 * Where a `tf` stage is computed when this process is already computing one: another process
 * on this machine, on the same store. The executor still holds the key's lock, re-keys and
 * records; the offloader only computes and commits the entry (as `computeStage` would here).
 */
export interface StageOffloader {
  /** Stages it computes at once (besides the one in this process). */
  readonly slots: number;
  /**
   * Computes `planned` into the store and resolves to its entry, or rejects with a
   * `ComputeFailure` (the stage's error) like `computeStage`.
   */
  compute(planned: PlannedStage, request: OffloadRequest): Promise<EntryMeta>;
  /** Told at the start how many stages it will likely get at once (a sweep's branches beyond one). */
  warm?(count: number): void;
  /** The run is over: resolves once its processes have exited. */
  close?(): Promise<void>;
}

/** What an offloaded stage is given besides the stage: what `computeStage` gets here. */
export type OffloadRequest = Pick<ComputeOptions, 'inputs' | 'downstream' | 'failedBranches' | 'prunedBranches' | 'entryKey' | 'budget' | 'resumeFrom' | 'runId' | 'log' | 'signal' | 'progress' | 'onKey' | 'push'>;

/**
 * The executor seam: where a stage that must be computed is computed. The DAG (order, re-keying,
 * skipping dependents of a failure) stays in `executePlan`; a dispatcher only computes one key.
 */
export interface StageDispatcher {
  /**
   * Computes `planned` (its final key) and resolves to the committed entry's record, or rejects
   * with a `PipelineError` that says why. `upstream` maps each input stage id to its key.
   */
  compute(planned: PlannedStage, request: DispatchRequest): Promise<EntryMeta>;
}

/** What a dispatcher is told besides the stage. */
export interface DispatchRequest {
  pipeline: ResolvedPipeline;
  runId: string;
  /** Input stage id -> its cache key (direct `needs` first, then their ancestors). */
  upstream: Record<string, string>;
  /** The stage's child of the run log: the worker's lines are written to it. */
  log: Logger;
  signal: AbortSignal;
  progress(event: ProgressEvent): void;
  /** For a joining stage: the branches in its needs that failed (`StageContext.failedBranches`); absent when none did. */
  failedBranches?: FailedBranch[];
}

/** The most `tf` stages to compute of one swept stage (its branches, which can run at once). */
export function parallelBranches(plan: Plan): number {
  const count = new Map<string, number>();
  for (const { stage, action } of plan.stages) {
    if (action !== 'run' || !stage.template || stage.definition.resource !== 'tf' || stage.definition.light) continue;
    count.set(stage.template, (count.get(stage.template) ?? 0) + 1);
  }
  return Math.max(0, ...count.values());
}

export function collectEngines(stages: StageSummary[]): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const stage of stages) {
    for (const [key, value] of Object.entries(stage.metrics ?? {})) {
      if (!key.endsWith('_engine') || typeof value !== 'string') continue;
      (out[stage.id] ??= {})[key.slice(0, -'_engine'.length)] = value;
    }
  }
  return out;
}

/** A lock with no owner: `take` waits until it is free. */
export class Slot {
  busy = false;
  private readonly waiting: (() => void)[] = [];
  async take(): Promise<void> {
    while (this.busy) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.busy = true;
  }
  release(): void {
    this.busy = false;
    this.waiting.shift()?.();
  }
}

