/**
 * A child process of `pipeline run --tf-jobs N` (`local-pool.ts`): computes stages into the
 * run's store, one at a time, until the run ends. It loads the pipeline file the run loaded
 * (with the same `--set`) and starts the backend when it starts; for each stage it refuses to
 * compute when it finds another key than the run's (the file or an input changed
 * during the run: its result would be stored under a key that does not describe it), then runs
 * `computeStage`, the code path of a stage computed in the run's own process. The run holds the
 * key's lock; memo locks are this process's own.
 */
import pino from 'pino';
import { configureBackend, useTf, type BackendPreference } from '../ml/backend.js';
import { ComputeFailure, computeStage } from '../runtime/compute.js';
import { AbortedError, describeError, GateError, PipelineError, StageError, ValidationError } from '../runtime/errors.js';
import { StatCache } from '../runtime/hash.js';
import { hashStageExternals, stageRecordOf } from '../runtime/plan.js';
import { openStore, resolvePipeline } from '../runtime/run.js';
import type { ResolvedPipeline } from '../runtime/load.js';
import type { ArtifactStore } from '../runtime/store.js';
import type { StageRegistry } from '../runtime/types.js';
import type { ChildFailure, ChildMessage, LocalJob, LocalRun, ParentMessage } from './local-pool.js';

// The run's process is gone (killed): stop; its lock on the key is free for the next run.
process.once('disconnect', () => process.exit(1));
// Ctrl-C in a terminal signals the whole process group, this process too: stop the stage at its
// next step, as the run's own process does (the run also says `abort` and waits for this one),
// rather than die in the middle of it; then exit. The run stops taking stages too.
let stopping: NodeJS.Signals | undefined;
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.on(signal, () => {
    stopping = signal;
    controller.abort();
    if (!busy) process.exit(0);
  });

/** The current job's: the run's interrupt reaches it. */
let controller = new AbortController();
const pending = new Map<number, { resolve(): void; reject(error: Error): void }>();
let nextRequest = 0;
/** The run, loaded once (its stages, its pipeline, its store, the backend). */
let loaded: Promise<Loaded> | undefined;
/** One job at a time, in order. */
let queue: Promise<unknown> = Promise.resolve();
/** A job is being computed (or its result sent). */
let busy = false;

interface Loaded {
  run: LocalRun;
  pipeline: ResolvedPipeline;
  store: ArtifactStore;
}

function post(message: ChildMessage): Promise<void> {
  return new Promise((resolve) => process.send!(message, undefined, {}, () => resolve()));
}

/** Asks the run (its `onKey` or `push`) and waits for its answer. */
function ask(what: 'onKey' | 'push', key: string): Promise<void> {
  const id = nextRequest++;
  return new Promise<void>((resolve, reject) => {
    pending.set(id, { resolve, reject });
    void post({ type: 'request', id, what, key });
  });
}

process.on('message', (message: ParentMessage) => {
  if (message.type === 'hello') {
    loaded = load(message.run);
    // A failure to load is the first job's to report (pipeline_changed), not a crash while idle.
    loaded.catch(() => undefined);
  } else if (message.type === 'abort') controller.abort();
  else if (message.type === 'reply') {
    const waiting = pending.get(message.id);
    pending.delete(message.id);
    if (message.error === undefined) waiting?.resolve();
    else waiting?.reject(new Error(message.error));
  } else if (message.type === 'start') {
    queue = queue.then(async () => {
      busy = true;
      controller = new AbortController();
      if (stopping) controller.abort();
      await compute(message.job).then(
        (entry) => post({ type: 'done', entry, exiting: stopping !== undefined }),
        (error: unknown) => post({ type: 'failed', failure: stoppedBy(error, message.job) ?? describeFailure(error), exiting: stopping !== undefined }),
      );
      busy = false;
      if (stopping) process.exit(0);
    });
  }
});

/** Loads the run's pipeline and starts its backend, before the first job arrives. */
async function load(run: LocalRun): Promise<Loaded> {
  const registry = (await import(run.registry.url))[run.registry.name] as StageRegistry | undefined;
  if (!registry) throw new StageError('internal', `${run.registry.url} exports no stage registry '${run.registry.name}'`);
  let pipeline;
  try {
    pipeline = resolvePipeline({ file: run.file, registry, overrides: run.overrides });
  } catch (error) {
    const first = error instanceof ValidationError ? error.issues[0] : undefined;
    throw new StageError('pipeline_changed', `${run.file} changed while the run was going and no longer loads${first ? ` (${first.path}: ${first.message})` : `: ${describeError(error).message}`}; fix it and run again`);
  }
  configureBackend(run.backend as BackendPreference);
  // The backend's start-up (compiling its wasm, registering kernels) is done while the run
  // computes the stages before this one's; a failure to start is the first job's to report.
  await useTf().catch(() => undefined);
  return { run, pipeline, store: openStore({ artifacts: run.artifacts }) };
}

async function compute(job: LocalJob) {
  if (!loaded) throw new StageError('internal', 'a job came before the run it belongs to');
  const { run, pipeline, store } = await loaded;
  const lines: Promise<void>[] = [];
  const log = pino(
    { base: undefined, level: 'debug' },
    {
      write(line: string) {
        lines.push(post({ type: 'log', line: JSON.parse(line) as Record<string, unknown> }));
      },
    },
  );
  const stage = pipeline.stages.find((s) => s.id === job.stage);
  const statCache = new StatCache(store.statCacheFile());
  await statCache.load();
  const record = stage && stageRecordOf(pipeline, stage, job.upstream, await hashStageExternals(pipeline, stage, statCache));
  if (!stage || record!.key !== job.key)
    throw new StageError(
      'pipeline_changed',
      `${run.file} changed while the run was going: stage '${job.stage}' ${stage ? `now has the key ${record!.key.slice(0, 12)}…, not ${job.key.slice(0, 12)}…` : 'is no longer in it'}; run again`,
    );
  try {
    return await computeStage(stage, {
      store,
      key: job.key,
      inputs: job.inputs,
      downstream: job.downstream,
      failedBranches: job.failedBranches,
      prunedBranches: job.prunedBranches,
      entryKey: job.entryKey,
      budget: job.budget,
      resumeFrom: job.resumeFrom,
      pipeline,
      runId: job.runId,
      log,
      signal: controller.signal,
      progress: (event) => void post({ type: 'progress', event }),
      onKey: (key) => ask('onKey', key),
      push: (key) => ask('push', key),
    });
  } finally {
    await Promise.all(lines);
  }
}

/**
 * The stage stopped because this process got a signal: when only this process got it (the run
 * goes on), its stage says so, not just "interrupted"; an interrupted run says "interrupted".
 */
function stoppedBy(failure: unknown, job: LocalJob): ChildFailure | undefined {
  const error = failure instanceof ComputeFailure ? failure.error : failure;
  if (!stopping || !(error instanceof AbortedError)) return undefined;
  return { code: 'aborted', kind: 'stage', message: `the child process (pid ${process.pid}) computing stage '${job.stage}' got ${stopping} and stopped; its checkpoints are kept: run again to resume` };
}

function describeFailure(failure: unknown): ChildFailure {
  const { error, outDir } = failure instanceof ComputeFailure ? failure : { error: failure, outDir: undefined };
  const described = describeError(error, outDir);
  const kind = error instanceof GateError ? 'gate' : error instanceof PipelineError ? 'stage' : 'other';
  const details = error instanceof StageError ? error.details : kind === 'other' && error instanceof Error ? { stack: error.stack } : undefined;
  return { ...described, kind, ...(details ? { details } : {}), ...(outDir ? { outDir } : {}) };
}
