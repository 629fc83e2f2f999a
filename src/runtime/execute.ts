/**
 * `Plan` -> execution -> `RunSummary`. Independent stages run concurrently on a p-queue (`io`
 * stages up to `jobs`, `tf` stages one at a time); a failed stage marks its dependents
 * `skipped` while the others finish, except a joining stage, which runs on the branches that
 * succeeded when at least one did (`join.ts`; the run still fails); an abort (SIGINT/SIGTERM)
 * lets running stages stop at their next check and keeps every finished one.
 */
import PQueue from 'p-queue';
import type { Logger } from 'pino';
import { describeError, GateError, StageError } from './errors.js';
import { ComputeFailure, computeStage } from './compute.js';
import { collectEngines, parallelBranches, Slot, type OffloadRequest, type StageDispatcher, type StageOffloader } from './executors.js';
import { entryDigest, type ArtifactCache, type EntryMeta } from './cache.js';
import type { ArtifactStore } from './store.js';
import type { ResolvedPipeline } from './load.js';
import { describeFailedBranches, joinUpstream, settleJoin } from './join.js';
import { budgetOf, computeRung, halvingGroups, type PrunedInfo } from './halving.js';
import { describeMatrix } from './matrix.js';
import { rekeyStage, type Plan, type PlannedStage } from './plan.js';
import type { FailedBranch, Json, Metrics, ProgressEvent, PrunedBranch, StageInput } from './types.js';

/** `pruned`: a branch a halving join stopped early (not a failure; see `halving.ts`). */
export type StageStatus = 'ran' | 'cached' | 'failed' | 'skipped' | 'pruned';

export interface StageSummary {
  id: string;
  uses: string;
  status: StageStatus;
  key: string;
  seconds: number;
  metrics: Metrics;
  /** Why it ran (or `inputs unchanged`). */
  reasons?: string[];
  /** A branch of a sweep: the stage id in the file it came from and its matrix coordinates. */
  branch?: { template: string; coords: Record<string, Json> };
  error?: { code: string; message: string; details?: Record<string, unknown> };
  /**
   * Numeric metrics that differ from the previous run of the same pipeline:
   * `{ accuracy: { before: 0.91, after: 0.93 } }`, with that run's id in `RunSummary.previous`.
   */
  changes?: Record<string, { before: number; after: number }>;
  /** A branch of a halving join: the keys of the rungs it ran or reused (gc keeps them with the run). */
  rungs?: string[];
}

export interface RunSummary {
  pipeline: string;
  run: string;
  status: 'succeeded' | 'failed' | 'interrupted';
  backend: string;
  started: string;
  seconds: number;
  stages: StageSummary[];
  /**
   * Which engine computed what, per stage: every string metric named `<part>_engine`
   * (`frozen_engine: onnxruntime`, `train_engine: tfjs`), so a run says where its time went.
   */
  engines?: Record<string, Record<string, string>>;
  /**
   * What the stages warn about (a stage's `warnings` metric: a list of strings), in stage
   * order; cached stages repeat theirs. Absent when there are none.
   */
  warnings?: { stage: string; message: string }[];
  /** The previous run of the same pipeline that `changes` compare against. */
  previous?: string;
  /**
   * The sweeps of the pipeline: each swept param (`stage`, `param`, its `label` in branch ids and
   * coordinates, `values`) and, per stage of the file that was expanded, its branches' ids.
   */
  matrix?: { axes: { stage: string; param: string; label: string; values: Json[] }[]; branches: Record<string, string[]> };
}

/** Hooks the CLI uses to show progress; all optional. */
export interface ExecutionObserver {
  stageStarted?(planned: PlannedStage): void;
  stageFinished?(summary: StageSummary): void;
  progress?(stageId: string, event: ProgressEvent): void;
}

export interface ExecuteOptions {
  store: ArtifactStore;
  runId: string;
  log: Logger;
  /** Concurrency for `io` stages. */
  jobs: number;
  signal: AbortSignal;
  observer?: ExecutionObserver;
  /** Name of the backend, resolved when the run ends (it may be chosen lazily). */
  backend: () => string;
  /** Called with each key the run comes to use beyond its plan (re-keyed stages, memo entries), before it is used. */
  onKey?(key: string): Promise<void>;
  /** Computes the stages that must run elsewhere (BullMQ workers) instead of in this process. */
  dispatcher?: StageDispatcher;
  /** When the run began (`Date.now()`), before its plan hashed inputs and pulled from a remote; default: now. */
  startedAt?: number;
  /**
   * Computes `tf` stages in other processes of this machine while one runs here, so that
   * independent ones (a sweep's branches) use more than one core. Absent: one at a time here.
   */
  offload?: StageOffloader;
}

export type { DispatchRequest, OffloadRequest, StageDispatcher, StageOffloader } from './executors.js';

/** Runs the plan and returns its summary; never throws for a stage failure. */
export async function executePlan(plan: Plan, options: ExecuteOptions): Promise<RunSummary> {
  const { store, log, signal } = options;
  // Entries go through the cache interface; the store gives records and locks.
  const cache: ArtifactCache = store.cache;
  const started = options.startedAt ?? Date.now();
  const ioQueue = new PQueue({ concurrency: Math.max(1, options.jobs) });
  const tfQueue = new PQueue({ concurrency: 1 + (options.offload?.slots ?? 0) });
  /** The `tf` stage computing in this process (one at a time). */
  const tfHere = new Slot();
  const results = new Map<string, Promise<StageSummary>>();
  const outputs = new Map<string, StageInput>();
  /** Output digest of each stage that ran or was reused: its dependents are keyed by it. */
  const digests = new Map<string, string>();
  /** Each finished stage's summary (a join reads why its failed branches failed). */
  const settled = new Map<string, StageSummary>();
  const stageById = new Map(plan.pipeline.stages.map((s) => [s.id, s]));
  /** The branches each joining stage goes without. */
  const failedOf = new Map<string, FailedBranch[]>();
  /** The branches a halving join stopped early, by id (the join reads and is keyed by them). */
  const prunedOf = new Map<string, PrunedInfo>();
  /** Warnings of the run itself (a failed push, a halving not done), for its summary; before `groupOf`, which may warn. */
  const pushWarnings: { stage: string; message: string }[] = [];
  /** Stages the observer was told started: a halved branch starts once, at its first rung, not again when it goes on. */
  const startedStages = new Set<string>();
  const startStage = (planned: PlannedStage) => {
    if (startedStages.has(planned.stage.id)) return;
    startedStages.add(planned.stage.id);
    options.observer?.stageStarted?.(planned);
  };
  /** The halving group of each branch a halving join reads. */
  const groupOf = halvingGroups(plan, !!options.dispatcher, {
    rung: (member, key, budget, resumeFrom) =>
      computeRung({ store, log, signal, runId: options.runId, onKey: options.onKey, queue: tfQueue, started: startStage, compute: (planned, stageLog, extra) => computeSomewhere(planned, { ...requestOf(planned, stageLog), ...extra }) }, member, key, budget, resumeFrom),
    finish: (member, resumeFrom) => finishOf(member.planned, member.base, resumeFrom),
    decided: (info, message) => log.info(info, message),
    warn(stage, message) {
      log.warn({ stage }, message);
      pushWarnings.push({ stage, message });
    },
  });

  /**
   * Sends a committed entry to the cache's remote, if it has one. A failed push never fails the
   * stage (its result is here and sound): it is logged and listed in the summary's warnings.
   */
  const pushQuietly = async (key: string, stageId: string, stageLog: Logger): Promise<void> => {
    if (!cache.push) return;
    try {
      const pushed = await cache.push(key);
      stageLog.info({ key, remote: pushed.to, uploaded: pushed.uploaded, present: pushed.present, bytes: pushed.bytesUploaded, manifest: pushed.manifest }, 'pushed');
    } catch (error) {
      const described = describeError(error);
      stageLog.warn({ err: error, key, code: described.code }, 'remote push failed');
      pushWarnings.push({ stage: stageId, message: `push of ${key} to ${cache.remote} failed (${described.code}): ${described.message}` });
    }
  };

  /**
   * The output digests a stage is keyed by, once every need it reads has one (a join's failed
   * branches stand in as `failed:<id>:<code>`); undefined while one is not known.
   */
  const upstreamOf = (planned: PlannedStage, failed: FailedBranch[]): Record<string, string> | undefined => {
    const { needs } = planned.stage;
    const pruned = new Map(needs.filter((d) => prunedOf.has(d)).map((d) => [d, prunedOf.get(d)!.digest]));
    if (failed.length || pruned.size) return joinUpstream(needs, (d) => digests.get(d) ?? planned.record.upstream[d], failed, pruned);
    return needs.every((d) => digests.has(d)) ? Object.fromEntries(needs.map((d) => [d, digests.get(d)!])) : undefined;
  };

  const runOne = async (plannedFirst: PlannedStage): Promise<StageSummary> => {
    const { needs } = plannedFirst.stage;
    const deps = await Promise.all(needs.filter((d) => results.has(d)).map((d) => results.get(d)!));
    // A join goes without the branches that failed, when others succeeded; any other stage is skipped.
    const join = plannedFirst.stage.definition.join ? settleJoin(plannedFirst.stage, deps, (id) => stageById.get(id), (id) => settled.get(id), signal.aborted) : undefined;
    const down = deps.find((d) => d.status === 'failed' || d.status === 'skipped');
    const blocked = join ? join.blocked : down && { id: down.id, message: `'${down.id}' ${down.status}` };
    // Now that the upstream outputs are known, the final key (a forced upstream that produced the same bytes keeps this stage cached).
    const upstream = blocked ? undefined : upstreamOf(plannedFirst, join?.failed ?? []);
    let planned = upstream ? await rekeyStage(plannedFirst, upstream, cache) : plannedFirst;
    if (planned.key !== plannedFirst.key) await options.onKey?.(planned.key);
    if (!blocked && join?.failed.length) {
      failedOf.set(planned.stage.id, join.failed);
      planned = { ...planned, reasons: [...planned.reasons, describeFailedBranches(join.failed, needs.length)] };
    }
    const { stage, key } = planned;
    const base = { id: stage.id, uses: stage.kind, key, reasons: planned.reasons, ...(stage.template ? { branch: { template: stage.template, coords: stage.coords ?? {} } } : {}) };
    const group = groupOf.get(stage.id);
    if (blocked) {
      group?.leave(stage.id);
      log.warn({ stage: stage.id, because: blocked.id }, 'stage skipped');
      return { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'dependency_failed', message: blocked.message } };
    }
    if (group) {
      const outcome = await group.run({ planned, base, full: budgetOf(planned) });
      if (outcome.pruned) prunedOf.set(stage.id, outcome.pruned);
      return outcome.summary;
    }
    if (join?.failed.length) log.warn({ stage: stage.id, failed: join.failed.map((f) => f.id), branches: needs.length }, 'joining the branches that succeeded');
    return finishOf(planned, base);
  };

  /** A stage whose upstream is settled: reused, dispatched or computed here (going on from `resumeFrom`, a rung's entry). */
  const finishOf = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, resumeFrom?: string): Promise<StageSummary> => {
    if (planned.action === 'cached' && planned.entry) return reuse(planned, base, planned.entry);
    if (signal.aborted) return { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'aborted', message: 'interrupted before it started' } };
    if (options.dispatcher) return dispatchOne(planned, base, options.dispatcher);
    const queue = planned.stage.definition.resource === 'tf' ? tfQueue : ioQueue;
    // No `signal` for p-queue: it would reject a *running* task's promise on abort while the
    // stage still runs; a queued task checks the signal itself when it starts.
    return (await queue.add(async (): Promise<StageSummary> =>
      signal.aborted ? { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'aborted', message: 'interrupted before it started' } } : execute(planned, base, resumeFrom),
    )) as StageSummary;
  };

  /** A cached result: its dir becomes the stage's output; a stage's checkout restores its side effects. */
  const reuse = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, entry: EntryMeta): Promise<StageSummary> => {
    const { stage, key } = planned;
    outputs.set(stage.id, toInput(planned, await cache.materialize(key), entry.metrics));
    digests.set(stage.id, entryDigest(entry));
    // The record says what the latest run used, so `plan` explains changes against it.
    await store.writeRecord(plan.pipeline.name, stage.id, planned.record);
    const failed = await checkoutOf(planned, base, entry, false);
    if (failed) return failed;
    log.info({ stage: stage.id, kind: stage.kind, key }, 'stage cached');
    return { ...base, status: 'cached', seconds: 0, metrics: entry.metrics };
  };

  /**
   * Computes a stage holding its key's lock: a run that needs the same key waits, then finds
   * the entry this one committed and reuses it (each key is computed once).
   */
  const execute = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, resumeFrom?: string): Promise<StageSummary> => {
    const { stage, key } = planned;
    let claim;
    try {
      claim = await store.claimKey(key, {
        signal,
        purpose: `run ${options.runId} stage ${stage.id}`,
        onWait: (holder) => log.info({ stage: stage.id, key, holder: holder.purpose ?? holder.pid }, 'waiting for another run computing this key'),
      });
    } catch (error) {
      if (signal.aborted) return { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'aborted', message: 'interrupted while waiting for another run' } };
      // A lock that cannot be taken (a damaged lock path, a full disk) fails this stage only.
      const described = describeError(error, store.root);
      log.error({ stage: stage.id, key, code: described.code }, `stage failed: ${described.message}`);
      return { ...base, status: 'failed', seconds: 0, metrics: {}, error: described };
    }
    try {
      const now = await cache.check(key);
      // Committed since we planned (by the run we waited for): reuse it, even under --force.
      if (now.state === 'ok' && now.meta.created !== planned.entry?.created) return await reuse(planned, { ...base, reasons: [...(base.reasons ?? []), 'computed by a concurrent run'] }, now.meta);
      return await executeClaimed(planned, base, resumeFrom);
    } finally {
      await claim.release();
    }
  };

  /** What computing `planned` is given, here or in another process. */
  const requestOf = (planned: PlannedStage, stageLog: Logger): OffloadRequest => {
    const { stage } = planned;
    const pruned = stage.needs.filter((id) => prunedOf.has(id)).map((id): PrunedBranch => {
      const { budget, of, metrics } = prunedOf.get(id)!;
      const branch = stageById.get(id)!;
      return { id, template: branch.template ?? id, coords: branch.coords ?? {}, budget, of, metrics };
    });
    return {
      inputs: inputsOf(planned),
      downstream: planned.downstream,
      failedBranches: failedOf.get(stage.id),
      ...(pruned.length ? { prunedBranches: pruned } : {}),
      runId: options.runId,
      log: stageLog,
      signal,
      onKey: options.onKey,
      push: (entryKey) => pushQuietly(entryKey, stage.id, stageLog),
      progress(event) {
        // Ticks are many (one per batch): only the start and end of a tracked step go to the log.
        if (event.phase !== 'tick') stageLog.debug({ progress: event }, 'progress');
        options.observer?.progress?.(stage.id, event);
      },
    };
  };

  /**
   * Computes the stage's entry. One `tf` stage at a time computes here (TF.js keeps global
   * state); while one does, the others go to the offloader, except light ones (model surgery),
   * which wait their turn.
   */
  const computeSomewhere = async (planned: PlannedStage, request: OffloadRequest): Promise<EntryMeta> => {
    const { stage, key } = planned;
    const tf = stage.definition.resource === 'tf';
    const here = !tf || !options.offload || stage.definition.light === true || !tfHere.busy;
    if (tf && here) await tfHere.take();
    try {
      return here ? await computeStage(stage, { ...request, store, key, pipeline: plan.pipeline }) : await options.offload!.compute(planned, request);
    } finally {
      if (tf && here) tfHere.release();
    }
  };

  const executeClaimed = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, resumeFrom?: string): Promise<StageSummary> => {
    const { stage, key } = planned;
    const stageLog = log.child({ stage: stage.id, kind: stage.kind });
    const t0 = performance.now();
    startStage(planned);
    stageLog.info({ key, reasons: planned.reasons, ...(resumeFrom ? { resumeFrom } : {}) }, 'stage start');
    try {
      const entry = await computeSomewhere(planned, { ...requestOf(planned, stageLog), ...(resumeFrom ? { resumeFrom } : {}) });
      const seconds = round((performance.now() - t0) / 1000);
      stageLog.info({ key, seconds, metrics: entry.metrics }, 'stage done');
      return await finished(planned, base, entry, seconds);
    } catch (failure) {
      const { error, outDir } = failure instanceof ComputeFailure ? failure : { error: failure, outDir: undefined };
      const seconds = round((performance.now() - t0) / 1000);
      const described = signal.aborted ? { code: 'aborted', message: 'interrupted' } : describeError(error, outDir);
      const details = error instanceof StageError ? error.details : undefined;
      const metrics = error instanceof GateError ? ((error.details.metrics as Metrics) ?? {}) : {};
      if (error instanceof StageError || signal.aborted) stageLog.error({ code: described.code, details, seconds }, `stage failed: ${described.message}`);
      else stageLog.error({ err: error, code: described.code, dir: outDir, seconds }, 'stage failed');
      return { ...base, status: 'failed', seconds, metrics, error: { ...described, ...(details ? { details } : {}) } };
    }
  };

  /** The upstream artifacts of a stage: direct `needs` first, then their ancestors. */
  const inputsOf = (planned: PlannedStage): StageInput[] => {
    const { stage } = planned;
    return [...stage.needs, ...stage.ancestors.filter((a) => !stage.needs.includes(a))].map((id) => outputs.get(id)!).filter(Boolean);
  };

  /** A stage's entry was committed (here or by a worker): it becomes its dependents' input. */
  const finished = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, entry: EntryMeta, seconds: number): Promise<StageSummary> => {
    digests.set(planned.stage.id, entryDigest(entry));
    await store.writeRecord(plan.pipeline.name, planned.stage.id, planned.record);
    outputs.set(planned.stage.id, toInput(planned, await cache.materialize(planned.key), entry.metrics));
    return { ...base, status: 'ran', seconds, metrics: entry.metrics };
  };

  /** Hands the stage to the dispatcher (BullMQ workers); its entry is committed there. */
  const dispatchOne = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, dispatcher: StageDispatcher): Promise<StageSummary> => {
    const { stage, key } = planned;
    const stageLog = log.child({ stage: stage.id, kind: stage.kind });
    const t0 = performance.now();
    startStage(planned);
    stageLog.info({ key, reasons: planned.reasons }, 'stage dispatched');
    try {
      const upstream = Object.fromEntries(inputsOf(planned).map((input) => [input.id, input.key]));
      const failedBranches = failedOf.get(stage.id);
      const entry = await dispatcher.compute(planned, { pipeline: plan.pipeline, runId: options.runId, upstream, log: stageLog, signal, progress: (event) => options.observer?.progress?.(stage.id, event), ...(failedBranches ? { failedBranches } : {}) });
      const seconds = round((performance.now() - t0) / 1000);
      stageLog.info({ key, seconds, metrics: entry.metrics }, 'stage done');
      const summary = await finished(planned, base, entry, seconds);
      // What the stage writes outside the store (export's copy) is restored here too.
      const failed = await checkoutOf(planned, base, entry, true);
      return failed ?? summary;
    } catch (error) {
      const seconds = round((performance.now() - t0) / 1000);
      const described = signal.aborted ? { code: 'aborted', message: 'interrupted while workers ran it' } : describeError(error);
      stageLog.error({ code: described.code, seconds }, `stage failed: ${described.message}`);
      return { ...base, status: 'failed', seconds, metrics: {}, error: described };
    }
  };

  /**
   * Runs the stage's checkout on its entry (side effects outside the store); a failure is the
   * stage's. `remote`: a worker committed the entry, which may live in another machine's store.
   */
  const checkoutOf = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, entry: EntryMeta, remote: boolean): Promise<StageSummary | undefined> => {
    const { stage, key } = planned;
    if (!stage.definition.checkout) return undefined;
    const stageLog = log.child({ stage: stage.id, kind: stage.kind });
    if (remote && (await cache.check(key)).state !== 'ok') {
      stageLog.warn({ key }, 'checkout skipped: the entry is not in the local store (the worker keeps it, or pushed it to the remote)');
      return undefined;
    }
    try {
      await stage.definition.checkout({ dir: cache.entryDir(key), baseDir: plan.pipeline.baseDir, log: stageLog }, stage.params);
      return undefined;
    } catch (error) {
      const described = describeError(error);
      log.error({ stage: stage.id, code: described.code }, `checkout failed: ${described.message}`);
      return { ...base, status: 'failed', seconds: 0, metrics: entry.metrics, error: described };
    }
  };

  options.offload?.warm?.(parallelBranches(plan) - 1);
  for (const planned of plan.stages) {
    const promise = runOne(planned).then((summary) => {
      settled.set(summary.id, summary);
      options.observer?.stageFinished?.(summary);
      return summary;
    });
    results.set(planned.stage.id, promise);
  }
  const stages = await Promise.all(plan.stages.map((p) => results.get(p.stage.id)!));
  await options.offload?.close?.();
  const failed = stages.some((s) => s.status === 'failed' || s.status === 'skipped');
  const summary: RunSummary = {
    pipeline: plan.pipeline.name,
    run: options.runId,
    status: signal.aborted ? 'interrupted' : failed ? 'failed' : 'succeeded',
    backend: options.backend(),
    started: new Date(started).toISOString(),
    seconds: round((Date.now() - started) / 1000),
    stages,
  };
  await cache.flush?.();
  const engines = collectEngines(stages);
  if (Object.keys(engines).length) summary.engines = engines;
  const stageWarnings = stages.flatMap((s) => (Array.isArray(s.metrics?.warnings) ? s.metrics.warnings.filter((w): w is string => typeof w === 'string').map((message) => ({ stage: s.id, message })) : []));
  const warnings = [...stageWarnings, ...pushWarnings];
  if (warnings.length) summary.warnings = warnings;
  const matrix = plan.pipeline.matrix;
  if (matrix) summary.matrix = describeMatrix(matrix);
  return summary;
}

function toInput(planned: PlannedStage, dir: string, metrics: Metrics): StageInput {
  return { id: planned.stage.id, kind: planned.stage.kind, key: planned.key, dir, provides: planned.stage.definition.provides, metrics };
}

function round(seconds: number): number {
  return Math.round(seconds * 1000) / 1000;
}
