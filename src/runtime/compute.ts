/**
 * Computes one stage into the store: builds its context (inputs, out dir, work dir, memo,
 * logger, progress), runs it and commits its entry. The one code path that computes a stage,
 * for the local executor (`execute.ts`) and for a BullMQ worker (`src/distributed/processor.ts`).
 * The caller holds the key's lock and decides what a failure means.
 */
import { mkdir, rm } from 'node:fs/promises';
import type { Logger } from 'pino';
import { AbortedError, StageError } from './errors.js';
import { canonicalJson, sha256 } from './hash.js';
import { createTracker } from './progress.js';
import type { ResolvedStage } from './load.js';
import { seedFor } from './seed.js';
import type { EntryMeta } from './cache.js';
import { lookUp } from './plan.js';
import type { ArtifactStore } from './store.js';
import type { BranchInput, DownstreamHint, FailedBranch, ProgressEvent, PrunedBranch, StageContext, StageInput } from './types.js';

/** What computing a stage needs besides the stage itself. */
export interface ComputeOptions {
  store: ArtifactStore;
  /** The stage's final cache key (`ctx.key`). */
  key: string;
  /**
   * Commit under this key instead (a rung of a halved sweep: the stage run with `budget`, keyed
   * apart from its final entry); the work dir is this key's. Default `key`.
   */
  entryKey?: string;
  /** `StageContext.budget`: stop after this many units of the stage's budget param. */
  budget?: number;
  /** `StageContext.resumeFrom`: the entry of an earlier, shorter run of this stage to go on from. */
  resumeFrom?: string;
  /** For a halving join: the branches it stopped early (`StageContext.prunedBranches`); default none. */
  prunedBranches?: PrunedBranch[];
  /** Upstream artifacts (direct `needs` first, then their ancestors). */
  inputs: StageInput[];
  /** Hints of the stages downstream (`StageContext.downstream`). */
  downstream: DownstreamHint[];
  /** For a joining stage: the branches in its needs that failed (`StageContext.failedBranches`); default none. */
  failedBranches?: FailedBranch[];
  /** The pipeline's seed and folder, and its stages (a joining stage's branches are read from them). */
  pipeline: { seed: number; baseDir: string; stages?: readonly ResolvedStage[] };
  /** Names the run in lock purposes. */
  runId: string;
  /** The stage's logger (bound to run, stage and kind). */
  log: Logger;
  signal: AbortSignal;
  progress(event: ProgressEvent): void;
  /** Called with each memo key before it is used (the run's plan lists it for gc). */
  onKey?(key: string): Promise<void>;
  /** Called after each commit (the stage's entry and its memos): sends it to the remote cache, never throws. */
  push?(key: string): Promise<void>;
}

/**
 * Runs the stage and commits its entry; returns the entry. On failure the temp dir is removed
 * and the error is thrown (with `outDir` attached for messages that name no path); the work
 * dir (checkpoints) is kept for a resume.
 */
export async function computeStage(stage: ResolvedStage, options: ComputeOptions): Promise<EntryMeta> {
  const { store, key, inputs, log, signal } = options;
  const entryKey = options.entryKey ?? key;
  // Entries go through the cache interface (local, or backed by a remote); the store gives locks.
  const cache = store.cache;
  const outDir = await cache.createTempDir(entryKey);
  const workDir = cache.workDir(entryKey);
  await mkdir(workDir, { recursive: true });
  const memoKeys: string[] = [];
  const ctx: StageContext = {
    id: stage.id,
    kind: stage.kind,
    params: stage.params,
    key,
    seed: seedFor(options.pipeline.seed, stage.template ?? stage.id),
    baseDir: options.pipeline.baseDir,
    outDir,
    workDir,
    inputs,
    input(type) {
      const found = inputs.find((i) => i.provides.includes(type));
      if (!found) throw new StageError('missing_input', `stage '${stage.id}' found no upstream artifact of type '${type}'`);
      return found;
    },
    downstream: options.downstream,
    ...(stage.definition.join ? { branches: branchesOf(stage, inputs, options.pipeline.stages ?? []), failedBranches: options.failedBranches ?? [], prunedBranches: options.prunedBranches ?? [] } : {}),
    ...(options.budget !== undefined ? { budget: options.budget } : {}),
    ...(options.resumeFrom !== undefined ? { resumeFrom: options.resumeFrom } : {}),
    async memo(name, parts, compute, memoOptions) {
      const memoKey = sha256(canonicalJson(memoOptions?.shared ? { memo: name, shared: true, parts } : { memo: name, kind: stage.kind, version: stage.definition.version, parts }));
      memoKeys.push(memoKey);
      await options.onKey?.(memoKey);
      const claim = await store.claimKey(memoKey, { signal, purpose: `run ${options.runId} stage ${stage.id} memo ${name}` });
      try {
        const found = await lookUp(cache, memoKey);
        if (found.check.state === 'ok') {
          log.info({ memo: name, key: memoKey, ...(found.pulled ? { remote: found.pulled } : {}) }, 'memo cached');
          return cache.materialize(memoKey);
        }
        if (found.check.state === 'corrupt') {
          log.warn({ memo: name, key: memoKey, reason: found.check.reason }, 'memo entry corrupt; recomputing');
          await cache.discard(memoKey);
        }
        for (const note of found.notes) log.warn({ memo: name, key: memoKey }, note);
        const t = performance.now();
        const dir = await cache.createTempDir(memoKey);
        try {
          await compute(dir);
        } catch (error) {
          await rm(dir, { recursive: true, force: true });
          throw error;
        }
        await cache.commit(dir, { key: memoKey, kind: `${stage.kind}:${name}`, stage: stage.id, provides: [], metrics: {} });
        log.info({ memo: name, key: memoKey, seconds: Math.round(performance.now() - t) / 1000 }, 'memo computed');
        await options.push?.(memoKey);
        return cache.materialize(memoKey);
      } finally {
        await claim.release();
      }
    },
    log,
    progress: options.progress,
    track: (label, total) => createTracker(options.progress, label, total),
    signal,
  };
  try {
    const result = await stage.definition.run(ctx, stage.params);
    if (signal.aborted) throw new AbortedError();
    const metrics = result.metrics ?? {};
    // A rung's entry is no artifact of the stage's type: nothing downstream reads it as one.
    const provides = entryKey === key ? stage.definition.provides : [];
    const kind = entryKey === key ? stage.kind : `${stage.kind}:rung`;
    const entry = await cache.commit(outDir, { key: entryKey, kind, stage: stage.id, provides, metrics, ...(memoKeys.length ? { memo: memoKeys } : {}) });
    await rm(workDir, { recursive: true, force: true });
    await options.push?.(entryKey);
    return entry;
  } catch (error) {
    await rm(outDir, { recursive: true, force: true });
    throw new ComputeFailure(error, outDir);
  }
}

/** A failed `computeStage`: the stage's own error, and the temp dir it wrote to (for messages). */
export class ComputeFailure extends Error {
  readonly error: unknown;
  readonly outDir: string;
  constructor(error: unknown, outDir: string) {
    super(error instanceof Error ? error.message : String(error), { cause: error });
    this.error = error;
    this.outDir = outDir;
  }
}

/**
 * What a joining stage reads of each stage in its needs that succeeded (a failed one has no
 * artifact among the inputs): its artifact, its matrix coordinates and its own upstream
 * artifacts (all among the joining stage's inputs: they are its ancestors).
 */
function branchesOf(stage: ResolvedStage, inputs: StageInput[], stages: readonly ResolvedStage[]): BranchInput[] {
  const byId = new Map(stages.map((s) => [s.id, s]));
  const output = new Map(inputs.map((input) => [input.id, input]));
  return stage.needs.filter((id) => output.has(id)).map((id) => {
    const need = byId.get(id);
    return {
      input: output.get(id)!,
      template: need?.template ?? id,
      coords: need?.coords ?? {},
      upstream: (need?.ancestors ?? []).map((a) => output.get(a)).filter((input): input is StageInput => input !== undefined),
    };
  });
}
