/**
 * The BullMQ sandboxed processor: runs in a child process the worker forks (`new Worker(queue,
 * thisFile)`), so a TF.js stage that blocks the event loop for seconds cannot stop the worker
 * from renewing the job's lock (measured: in-process, such a job ran twice in two workers and
 * then failed "job stalled more than allowable limit").
 *
 * One job: load the pipeline file it names, recompute the stage's key and refuse a mismatch
 * (version skew: the job fails without retry), take the inputs from the store (or pull them from
 * the remote), compute the stage through `computeStage` (the local executor's code path),
 * commit it, push it. Progress and log lines go back to the coordinator as job progress.
 * Configuration comes from the worker process's environment (`WORKER_ENV`).
 */
import pino from 'pino';
import { UnrecoverableError, type SandboxedJob } from 'bullmq';
import { configureBackend, describeBackend, type BackendPreference } from '../ml/backend.js';
import { computeStage, ComputeFailure } from '../runtime/compute.js';
import { RemoteError } from '../remote/remote.js';
import { describeError, PipelineError } from '../runtime/errors.js';
import { StatCache } from '../runtime/hash.js';
import { downstreamHints, hashStageExternals, stageRecordOf } from '../runtime/plan.js';
import { resolvePipeline } from '../runtime/run.js';
import type { StageInput } from '../runtime/types.js';
import { stages } from '../stages/index.js';
import { JOB_FORMAT, WORKER_ENV, type StageJobData, type StageJobProgress, type StageJobResult } from './queue.js';
import { WorkerStore } from './worker-store.js';

// The worker that forked this process is gone (killed): stop, so that its job's key lock is
// free for the worker that takes the stalled job over.
process.once('disconnect', () => process.exit(1));

let workerStore: WorkerStore | undefined;

export default async function processStage(job: SandboxedJob<StageJobData, StageJobResult>, _token?: string, signal?: AbortSignal): Promise<StageJobResult> {
  const t0 = performance.now();
  const worker = process.env[WORKER_ENV.id] ?? `pid ${process.pid}`;
  const data = job.data;
  if (data?.format !== JOB_FORMAT) throw refuse('version_skew', `job ${job.id} is not a ${JOB_FORMAT} job (format ${JSON.stringify(data?.format)}): the coordinator runs another version of the toolkit`);
  workerStore ??= new WorkerStore(process.env[WORKER_ENV.artifacts] ?? 'artifacts', process.env[WORKER_ENV.remote] || undefined);
  const store = workerStore;

  // Progress and log lines reach the coordinator in order, all before the job completes.
  let sent: Promise<unknown> = Promise.resolve();
  const send = (message: Omit<StageJobProgress, 'worker'>) => {
    sent = sent.then(() => job.updateProgress({ worker, ...message } as never)).catch(() => undefined);
  };
  const log = pino(
    { base: undefined, level: 'info' },
    {
      write(line: string) {
        const fields = JSON.parse(line) as Record<string, unknown>;
        // Warnings and errors also on the worker's terminal; every line goes to the coordinator.
        if (typeof fields.level === 'number' && fields.level >= 40) process.stderr.write(line);
        send({ log: fields });
      },
    },
  ).child({ run: data.run, stage: data.stage, worker });

  try {
    let pipeline;
    try {
      pipeline = resolvePipeline({ file: data.file, registry: stages, overrides: data.overrides });
    } catch (error) {
      throw refuse('version_skew', `${data.file} does not load on worker ${worker}: ${describeError(error).message}; the worker needs the coordinator's checkout of the pipeline file`);
    }
    const stage = pipeline.stages.find((s) => s.id === data.stage);
    if (!stage) throw refuse('version_skew', `${data.file} on worker ${worker} has no stage '${data.stage}': the worker's copy of the file differs from the coordinator's`);
    const statCache = new StatCache(store.statCacheFile());
    await statCache.load();
    const record = stageRecordOf(pipeline, stage, data.upstream, await hashStageExternals(pipeline, stage, statCache));
    await statCache.save().catch(() => undefined); // only a speed-up
    if (record.key !== data.key)
      throw refuse(
        'version_skew',
        `stage '${stage.id}' (${stage.kind} v${stage.definition.version}) has the key ${record.key.slice(0, 12)}… on worker ${worker} but ${data.key.slice(0, 12)}… on the coordinator: they run different versions of the toolkit, or see different pipeline files or input data; run the same version on both`,
      );

    const inputs: StageInput[] = [];
    for (const { id, key } of data.inputs) {
      const upstream = pipeline.stages.find((s) => s.id === id);
      if (!upstream) throw refuse('version_skew', `stage '${stage.id}' reads '${id}', which ${data.file} on worker ${worker} does not define`);
      const entry = await store.input(id, key, data.upstream[id], `worker ${worker} input of ${stage.id}`);
      inputs.push({ id, kind: upstream.kind, key, dir: store.entryDir(key), provides: upstream.definition.provides, metrics: entry.metrics });
    }

    const claim = await store.claim(data.key, `worker ${worker} run ${data.run} stage ${stage.id}`, signal);
    let result: StageJobResult;
    try {
      const found = data.force ? undefined : await store.existing(data.key);
      if (found) {
        log.info({ key: data.key, outcome: found.outcome }, 'stage found');
        result = { entry: found.entry, worker, outcome: found.outcome, backend: describeBackend()?.name ?? 'none', seconds: seconds(t0) };
      } else {
        if (!describeBackend()) configureBackend((process.env[WORKER_ENV.backend] || data.backend || pipeline.backend || 'auto') as BackendPreference);
        log.info({ key: data.key, attempt: job.attemptsMade + 1 }, 'stage start');
        const entry = await computeStage(stage, {
          store: store.store,
          key: data.key,
          inputs,
          downstream: downstreamHints(pipeline, stage.id),
          failedBranches: data.failedBranches,
          pipeline,
          runId: data.run,
          log,
          signal: signal ?? new AbortController().signal,
          progress: (event) => send({ progress: event }),
        });
        log.info({ key: data.key, seconds: seconds(t0), metrics: entry.metrics }, 'stage done');
        result = { entry, worker, outcome: 'ran', backend: describeBackend()?.name ?? 'none', seconds: seconds(t0) };
      }
    } finally {
      await claim.release();
    }
    await store.publish(data.key);
    return result;
  } catch (error) {
    throw asJobError(error, log);
  } finally {
    await sent;
  }
}

/** A refusal that no retry can fix: the job fails at once. The message ends with its code. */
function refuse(code: string, message: string): UnrecoverableError {
  return new UnrecoverableError(`${message} [${code}]`);
}

/**
 * The error BullMQ records (its message is the job's `failedReason`): `message [code]`, which the
 * coordinator reads back. A stage's own error (bad data, a failed gate) is not retried: it would
 * fail again; a system error (a full disk, a lost lock) or an unreachable remote is.
 */
function asJobError(error: unknown, log: pino.Logger): Error {
  if (error instanceof UnrecoverableError) {
    log.error({ code: /\[(\w+)\]$/.exec(error.message)?.[1] }, error.message);
    return error;
  }
  const cause = error instanceof ComputeFailure ? error.error : error;
  const described = describeError(cause, error instanceof ComputeFailure ? error.outDir : undefined);
  log.error({ code: described.code }, `stage failed: ${described.message}`);
  const message = `${described.message} [${described.code}]`;
  return isTransient(cause) ? new Error(message) : new UnrecoverableError(message);
}

/** Worth another try: a system error, or a remote that did not answer or failed (5xx). */
function isTransient(error: unknown): boolean {
  if (error instanceof RemoteError) return error.code === 'remote_unreachable' || error.code === 'remote_server';
  return !(error instanceof PipelineError);
}

function seconds(t0: number): number {
  return Math.round(performance.now() - t0) / 1000;
}
