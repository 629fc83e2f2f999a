/**
 * `Plan` -> execution -> `RunSummary`. Independent stages run concurrently on a p-queue (`io`
 * stages up to `jobs`, `tf` stages one at a time); a failed stage marks its dependents
 * `skipped` while the others finish; an abort (SIGINT/SIGTERM) lets running stages stop at
 * their next check and keeps every finished one.
 */
import { mkdir, rm } from 'node:fs/promises';
import PQueue from 'p-queue';
import type { Logger } from 'pino';
import { AbortedError, describeError, GateError, StageError } from './errors.js';
import { canonicalJson, sha256 } from './hash.js';
import { seedFor } from './seed.js';
import { entryDigest, type ArtifactStore, type EntryMeta } from './store.js';
import { describeMatrix } from './matrix.js';
import { rekeyStage, type Plan, type PlannedStage } from './plan.js';
import type { BranchInput, Json, Metrics, ProgressEvent, StageContext, StageInput } from './types.js';

export type StageStatus = 'ran' | 'cached' | 'failed' | 'skipped';

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
}

/** Runs the plan and returns its summary; never throws for a stage failure. */
export async function executePlan(plan: Plan, options: ExecuteOptions): Promise<RunSummary> {
  const { store, log, signal } = options;
  const started = Date.now();
  const ioQueue = new PQueue({ concurrency: Math.max(1, options.jobs) });
  const tfQueue = new PQueue({ concurrency: 1 });
  const results = new Map<string, Promise<StageSummary>>();
  const outputs = new Map<string, StageInput>();
  /** Output digest of each stage that ran or was reused: its dependents are keyed by it. */
  const digests = new Map<string, string>();

  const runOne = async (plannedFirst: PlannedStage): Promise<StageSummary> => {
    const deps = await Promise.all(plannedFirst.stage.needs.filter((d) => results.has(d)).map((d) => results.get(d)!));
    // Now that the upstream outputs are known, the final key (a forced upstream that produced the same bytes keeps this stage cached).
    const known = plannedFirst.stage.needs.every((d) => digests.has(d));
    const planned = known ? await rekeyStage(plannedFirst, Object.fromEntries(plannedFirst.stage.needs.map((d) => [d, digests.get(d)!])), store) : plannedFirst;
    if (planned.key !== plannedFirst.key) await options.onKey?.(planned.key);
    const { stage, key } = planned;
    const base = { id: stage.id, uses: stage.kind, key, reasons: planned.reasons, ...(stage.template ? { branch: { template: stage.template, coords: stage.coords ?? {} } } : {}) };
    const blocked = deps.find((d) => d.status === 'failed' || d.status === 'skipped');
    if (blocked) {
      log.warn({ stage: stage.id, because: blocked.id }, 'stage skipped');
      return { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'dependency_failed', message: `'${blocked.id}' ${blocked.status}` } };
    }
    if (planned.action === 'cached' && planned.entry) return reuse(planned, base, planned.entry);
    if (signal.aborted) return { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'aborted', message: 'interrupted before it started' } };
    const queue = stage.definition.resource === 'tf' ? tfQueue : ioQueue;
    // No `signal` for p-queue: it would reject a *running* task's promise on abort while the
    // stage still runs; a queued task checks the signal itself when it starts.
    return (await queue.add(async (): Promise<StageSummary> =>
      signal.aborted ? { ...base, status: 'skipped', seconds: 0, metrics: {}, error: { code: 'aborted', message: 'interrupted before it started' } } : execute(planned, base),
    )) as StageSummary;
  };

  /** A cached result: its dir becomes the stage's output; a stage's checkout restores its side effects. */
  const reuse = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>, entry: EntryMeta): Promise<StageSummary> => {
    const { stage, key } = planned;
    outputs.set(stage.id, toInput(planned, store.entryDir(key), entry.metrics));
    digests.set(stage.id, entryDigest(entry));
    // The record says what the latest run used, so `plan` explains changes against it.
    await store.writeRecord(plan.pipeline.name, stage.id, planned.record);
    if (stage.definition.checkout) {
      try {
        await stage.definition.checkout({ dir: store.entryDir(key), baseDir: plan.pipeline.baseDir, log: log.child({ stage: stage.id, kind: stage.kind }) }, stage.params);
      } catch (error) {
        const described = describeError(error);
        log.error({ stage: stage.id, code: described.code }, `checkout failed: ${described.message}`);
        return { ...base, status: 'failed', seconds: 0, metrics: entry.metrics, error: described };
      }
    }
    log.info({ stage: stage.id, kind: stage.kind, key }, 'stage cached');
    return { ...base, status: 'cached', seconds: 0, metrics: entry.metrics };
  };

  /**
   * Computes a stage holding its key's lock: a run that needs the same key waits, then finds
   * the entry this one committed and reuses it (each key is computed once).
   */
  const execute = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>): Promise<StageSummary> => {
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
      const now = await store.checkEntry(key);
      // Committed since we planned (by the run we waited for): reuse it, even under --force.
      if (now.state === 'ok' && now.meta.created !== planned.entry?.created) return await reuse(planned, { ...base, reasons: [...(base.reasons ?? []), 'computed by a concurrent run'] }, now.meta);
      return await executeClaimed(planned, base);
    } finally {
      await claim.release();
    }
  };

  const byId = new Map(plan.pipeline.stages.map((s) => [s.id, s]));
  /** What a joining stage reads of one branch: its artifact, its coordinates, its own upstream. */
  const branchInput = (id: string): BranchInput => {
    const stage = byId.get(id)!;
    return { input: outputs.get(id)!, template: stage.template ?? id, coords: stage.coords ?? {}, upstream: stage.ancestors.map((a) => outputs.get(a)!).filter(Boolean) };
  };

  const executeClaimed = async (planned: PlannedStage, base: Pick<StageSummary, 'id' | 'uses' | 'key' | 'reasons'>): Promise<StageSummary> => {
    const { stage, key } = planned;
    const stageLog = log.child({ stage: stage.id, kind: stage.kind });
    const t0 = performance.now();
    const outDir = await store.createTempDir(key);
    const workDir = store.workDir(key);
    await mkdir(workDir, { recursive: true });
    options.observer?.stageStarted?.(planned);
    stageLog.info({ key, reasons: planned.reasons }, 'stage start');
    const memoKeys: string[] = [];
    const inputs = [...stage.needs, ...stage.ancestors.filter((a) => !stage.needs.includes(a))].map((id) => outputs.get(id)!).filter(Boolean);
    const ctx: StageContext = {
      id: stage.id,
      kind: stage.kind,
      params: stage.params,
      key,
      seed: seedFor(plan.pipeline.seed, stage.template ?? stage.id),
      baseDir: plan.pipeline.baseDir,
      outDir,
      workDir,
      inputs,
      input(type) {
        const found = inputs.find((i) => i.provides.includes(type));
        if (!found) throw new StageError('missing_input', `stage '${stage.id}' found no upstream artifact of type '${type}'`);
        return found;
      },
      downstream: planned.downstream,
      ...(stage.definition.join ? { branches: stage.needs.map((id) => branchInput(id)) } : {}),
      async memo(name, parts, compute, memoOptions) {
        const memoKey = sha256(canonicalJson(memoOptions?.shared ? { memo: name, shared: true, parts } : { memo: name, kind: stage.kind, version: stage.definition.version, parts }));
        memoKeys.push(memoKey);
        await options.onKey?.(memoKey);
        const claim = await store.claimKey(memoKey, { signal, purpose: `run ${options.runId} stage ${stage.id} memo ${name}` });
        try {
          const check = await store.checkEntry(memoKey);
          if (check.state === 'ok') {
            stageLog.info({ memo: name, key: memoKey }, 'memo cached');
            return store.entryDir(memoKey);
          }
          if (check.state === 'corrupt') {
            stageLog.warn({ memo: name, key: memoKey, reason: check.reason }, 'memo entry corrupt; recomputing');
            await store.discardEntry(memoKey);
          }
          const t = performance.now();
          const dir = await store.createTempDir(memoKey);
          try {
            await compute(dir);
          } catch (error) {
            await rm(dir, { recursive: true, force: true });
            throw error;
          }
          await store.commit(dir, { key: memoKey, kind: `${stage.kind}:${name}`, stage: stage.id, provides: [], metrics: {} });
          stageLog.info({ memo: name, key: memoKey, seconds: round((performance.now() - t) / 1000) }, 'memo computed');
          return store.entryDir(memoKey);
        } finally {
          await claim.release();
        }
      },
      log: stageLog,
      progress(event) {
        stageLog.debug({ progress: event }, 'progress');
        options.observer?.progress?.(stage.id, event);
      },
      signal,
    };
    try {
      const result = await stage.definition.run(ctx, stage.params);
      if (signal.aborted) throw new AbortedError();
      const metrics = result.metrics ?? {};
      const entry = await store.commit(outDir, { key, kind: stage.kind, stage: stage.id, provides: stage.definition.provides, metrics, ...(memoKeys.length ? { memo: memoKeys } : {}) });
      digests.set(stage.id, entryDigest(entry));
      await store.writeRecord(plan.pipeline.name, stage.id, planned.record);
      await rm(workDir, { recursive: true, force: true });
      outputs.set(stage.id, toInput(planned, store.entryDir(key), metrics));
      const seconds = round((performance.now() - t0) / 1000);
      stageLog.info({ key, seconds, metrics }, 'stage done');
      return { ...base, status: 'ran', seconds, metrics };
    } catch (error) {
      await rm(outDir, { recursive: true, force: true });
      const seconds = round((performance.now() - t0) / 1000);
      const described = signal.aborted ? { code: 'aborted', message: 'interrupted' } : describeError(error, outDir);
      const details = error instanceof StageError ? error.details : undefined;
      const metrics = error instanceof GateError ? ((error.details.metrics as Metrics) ?? {}) : {};
      if (error instanceof StageError || signal.aborted) stageLog.error({ code: described.code, details, seconds }, `stage failed: ${described.message}`);
      else stageLog.error({ err: error, code: described.code, dir: outDir, seconds }, 'stage failed');
      return { ...base, status: 'failed', seconds, metrics, error: { ...described, ...(details ? { details } : {}) } };
    }
  };

  for (const planned of plan.stages) {
    const promise = runOne(planned).then((summary) => {
      options.observer?.stageFinished?.(summary);
      return summary;
    });
    results.set(planned.stage.id, promise);
  }
  const stages = await Promise.all(plan.stages.map((p) => results.get(p.stage.id)!));
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
  const engines = collectEngines(stages);
  if (Object.keys(engines).length) summary.engines = engines;
  const matrix = plan.pipeline.matrix;
  if (matrix) summary.matrix = describeMatrix(matrix);
  return summary;
}

function collectEngines(stages: StageSummary[]): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const stage of stages) {
    for (const [key, value] of Object.entries(stage.metrics ?? {})) {
      if (!key.endsWith('_engine') || typeof value !== 'string') continue;
      (out[stage.id] ??= {})[key.slice(0, -'_engine'.length)] = value;
    }
  }
  return out;
}

function toInput(planned: PlannedStage, dir: string, metrics: Metrics): StageInput {
  return { id: planned.stage.id, kind: planned.stage.kind, key: planned.key, dir, provides: planned.stage.definition.provides, metrics };
}

function round(seconds: number): number {
  return Math.round(seconds * 1000) / 1000;
}
