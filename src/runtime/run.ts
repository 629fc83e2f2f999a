/**
 * One `pipeline run` end to end: load, lock the store, plan, execute, write the run folder.
 * Also `planPipeline` for `pipeline plan`, which touches nothing.
 */
import { refusePseudoLocation } from './fsutil.js';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { ValidationError } from './errors.js';
import { executePlan, type ExecutionObserver, type RunSummary, type StageDispatcher, type StageOffloader } from './execute.js';
import { writeJsonAtomic } from './fsutil.js';
import type { Selection } from './graph.js';
import { StatCache } from './hash.js';
import { loadPipeline, type ResolvedPipeline } from './load.js';
import { checkSelection, planRun, type Plan } from './plan.js';
import type { LocalCache } from './local-cache.js';
import { ArtifactStore } from './store.js';
import type { StageRegistry } from './types.js';

export interface PipelineOptions {
  file: string;
  registry: StageRegistry;
  /** `--set path=value` strings. */
  overrides?: string[];
  selection?: Selection;
  /** Artifact store root. */
  artifacts: string;
  /**
   * Picks the store's cache (the one place that does): default the local cache; the CLI's
   * `--remote` gives a `RemoteBackedCache`, which pulls on a miss and pushes after each stage.
   */
  openCache?(root: string): LocalCache;
}

/** The store at `options.artifacts` with the cache `options.openCache` picks. */
export function openStore(options: Pick<PipelineOptions, 'artifacts' | 'openCache'>): ArtifactStore {
  refusePseudoLocation(options.artifacts, 'the artifact store');
  return new ArtifactStore(options.artifacts, options.openCache ? { cache: options.openCache(options.artifacts) } : {});
}

export interface RunOptions extends PipelineOptions {
  jobs?: number;
  /** Wait while gc holds the store instead of failing with exit 3. */
  wait?: boolean;
  /** Stop waiting after this many ms (`--wait-timeout`). */
  waitTimeoutMs?: number;
  /** Called when the run starts waiting for the store (gc) to be free. */
  onWait?(holder: string): void;
  signal?: AbortSignal;
  observer?: ExecutionObserver;
  /** Called with the resolved pipeline before planning (the CLI picks the backend here). */
  prepare?(pipeline: ResolvedPipeline): void;
  /** The backend's name for the summary, asked when the run ends. */
  backend?: () => string;
  /** Computes the stages elsewhere (`--executor bullmq`); default: in this process. */
  dispatcher?: StageDispatcher;
  /**
   * Where `tf` stages go while one computes here (`--tf-jobs`: child processes), asked once the
   * pipeline is resolved and prepared; default (or undefined): one at a time in this process.
   */
  offload?(pipeline: ResolvedPipeline): StageOffloader | undefined;
}

/** Loads and validates, or throws `ValidationError` with every issue found. */
export function resolvePipeline(options: Pick<PipelineOptions, 'file' | 'registry' | 'overrides' | 'selection'>): ResolvedPipeline {
  const result = loadPipeline(options.file, options.registry, options.overrides ?? []);
  if (!result.ok) throw new ValidationError(result.issues);
  const issues = checkSelection(result.pipeline, options.selection ?? {});
  if (issues.length) throw new ValidationError(issues);
  return result.pipeline;
}

/** What would run and why; reads the store, writes nothing. */
export async function planPipeline(options: PipelineOptions): Promise<Plan> {
  const pipeline = resolvePipeline(options);
  const store = openStore(options);
  const statCache = new StatCache(store.statCacheFile());
  await statCache.load();
  return planRun(pipeline, store.cache, store.history, options.selection ?? {}, statCache);
}

/** Runs a pipeline; returns the summary (also written to `runs/<id>/summary.json`). */
export async function runPipeline(options: RunOptions): Promise<RunSummary> {
  const pipeline = resolvePipeline(options);
  const store = openStore(options);
  options.prepare?.(pipeline);
  const runId = newRunId();
  // Runs of any pipeline share the store; only gc excludes them (keys are locked one by one).
  const release = await store.enterRun(runId, { wait: options.wait, timeoutMs: options.waitTimeoutMs, signal: options.signal, onWait: options.onWait });
  // The run's time covers its plan too: hashing inputs, and pulling entries from a remote.
  const startedAt = Date.now();
  try {
    const statCache = new StatCache(store.statCacheFile());
    await statCache.load();
    // Plan before writing anything: a selection error (`--only` with an upstream not cached)
    // leaves the store as it was.
    const plan = await planRun(pipeline, store.cache, store.history, options.selection ?? {}, statCache);
    await statCache.save();
    const runDir = store.runDir(runId);
    await mkdir(runDir, { recursive: true });
    // First, so that gc keeps what this run uses even if it is killed before its summary.
    const keys = new Set(plan.stages.map((p) => p.key));
    let planWrites: Promise<void> = Promise.resolve();
    await store.writeRunPlan({ pipeline: pipeline.name, run: runId, keys: [...keys] });
    const destination = pino.destination({ dest: path.join(runDir, 'log.jsonl'), sync: true });
    const log = pino({ base: undefined, level: 'debug' }, destination).child({ run: runId, pipeline: pipeline.name });
    log.info({ file: path.resolve(pipeline.file), selection: options.selection ?? {} }, 'run start');
    for (const planned of plan.stages) if (planned.action === 'run') log.info({ stage: planned.stage.id, key: planned.key, reasons: planned.reasons }, 'stage planned');
    const summary = await executePlan(plan, {
      store,
      runId,
      log,
      jobs: options.jobs ?? 4,
      signal: options.signal ?? new AbortController().signal,
      observer: options.observer,
      backend: options.backend ?? (() => 'none'),
      dispatcher: options.dispatcher,
      offload: options.offload?.(pipeline),
      startedAt,
      onKey(key) {
        keys.add(key);
        // One write at a time, each with every key so far: the last one on disk is complete.
        planWrites = planWrites.catch(() => undefined).then(() => store.writeRunPlan({ pipeline: pipeline.name, run: runId, keys: [...keys] }));
        return planWrites;
      },
    });
    await compareWithPrevious(store, runId, summary);
    await writeJsonAtomic(path.join(runDir, 'summary.json'), summary);
    await writeJsonAtomic(
      path.join(runDir, 'artifacts.json'),
      Object.fromEntries(summary.stages.filter((s) => s.status === 'ran' || s.status === 'cached').map((s) => [s.id, store.entryDir(s.key)])),
    );
    log.info({ status: summary.status, seconds: summary.seconds }, 'run end');
    destination.flushSync();
    return summary;
  } finally {
    await release();
  }
}

/**
 * Adds, per stage, the numeric metrics that changed since the previous run of the same
 * pipeline (a regression shows without digging through old runs).
 */
async function compareWithPrevious(store: ArtifactStore, runId: string, summary: RunSummary): Promise<void> {
  for (const id of await store.listRuns()) {
    if (id >= runId) continue;
    const read = await store.readSummary(id);
    // An unreadable summary (killed run, damaged file) is no run to compare with.
    if (!read.ok || read.value.pipeline !== summary.pipeline) continue;
    const previous = read.value;
    summary.previous = id;
    for (const stage of summary.stages) {
      const before = previous.stages.find((s) => s.id === stage.id)?.metrics ?? {};
      const changes: Record<string, { before: number; after: number }> = {};
      for (const [name, after] of Object.entries(stage.metrics)) {
        const old = before[name];
        if (typeof after === 'number' && typeof old === 'number' && old !== after && !/seconds|per_second|imagesPerSecond|latency/i.test(name)) changes[name] = { before: old, after };
      }
      if (Object.keys(changes).length) stage.changes = changes;
    }
    return;
  }
}

/** `YYYYMMDD-HHMMSSmmm-xxxx` in UTC: sorts by time (to the millisecond), unique enough for one store. */
export function newRunId(now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:.]/g, '').replace('T', '-').slice(0, 18);
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}
