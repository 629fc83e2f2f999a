/**
 * The coordinator's side of `pipeline run --executor bullmq`: a `StageDispatcher` that enqueues
 * each stage the executor hands it as a BullMQ job (job id = the stage's cache key, so two runs
 * that need one key share one job), waits for it through QueueEvents, and writes the progress
 * and log lines the worker reports into this run's log. The DAG stays in `executePlan`: a stage
 * is enqueued once its upstream stages are done (BullMQ's FlowProducer only builds trees).
 */
import path from 'node:path';
import { Queue, QueueEvents, type Job } from 'bullmq';
import pino, { type Logger } from 'pino';
import { AbortedError, StageError, type ErrorCode } from '../runtime/errors.js';
import type { DispatchRequest, StageDispatcher } from '../runtime/execute.js';
import type { ResolvedPipeline } from '../runtime/load.js';
import { descendants } from '../runtime/graph.js';
import type { PlannedStage } from '../runtime/plan.js';
import type { EntryMeta } from '../runtime/store.js';
import type { ProgressEvent } from '../runtime/types.js';
import { BACKOFF_MS, checkRedis, JOB_ATTEMPTS, JOB_FORMAT, QUEUE_KINDS, queueName, redisOptions, type QueueKind, type StageJobData, type StageJobProgress, type StageJobResult } from './queue.js';

export interface CoordinatorOptions {
  /** `redis://host:port`. */
  redis: string;
  /** The pipeline file (made absolute: workers open the same path). */
  file: string;
  /** The run's `--set` overrides, passed to the workers. */
  overrides: string[];
  /** The TF.js backend asked for (`auto` when none). */
  backend: string;
  /** How long finished jobs stay in Redis (seconds), for `getJob` and dashboards. Default a day. */
  keepSeconds?: number;
}

/** A stage waiting for its job: where that job's progress and log lines go. */
interface Listener {
  log: Logger;
  progress(event: ProgressEvent): void;
}

export class BullmqDispatcher implements StageDispatcher {
  private readonly queues: Record<QueueKind, Queue<StageJobData, StageJobResult>>;
  private readonly events: Record<QueueKind, QueueEvents>;
  private readonly listeners = new Map<string, Listener[]>();
  /** The workers' TF.js backends, as their results report them. */
  private readonly backends = new Set<string>();

  private constructor(private readonly options: CoordinatorOptions, connection: ReturnType<typeof redisOptions>) {
    this.queues = Object.fromEntries(QUEUE_KINDS.map((kind) => [kind, new Queue(queueName(kind), { connection })])) as never;
    this.events = Object.fromEntries(QUEUE_KINDS.map((kind) => [kind, new QueueEvents(queueName(kind), { connection })])) as never;
    for (const events of Object.values(this.events)) {
      events.on('progress', ({ jobId, data }) => this.forward(jobId, data as unknown as StageJobProgress));
      events.on('error', () => undefined); // a lost connection shows as the job's wait failing
    }
  }

  /** Connects (a clear `redis_unreachable` error when Redis does not answer) and listens for job events. */
  static async open(options: CoordinatorOptions): Promise<BullmqDispatcher> {
    const connection = redisOptions(options.redis);
    await checkRedis(options.redis, connection);
    const dispatcher = new BullmqDispatcher({ ...options, file: path.resolve(options.file) }, connection);
    await Promise.all([...Object.values(dispatcher.queues), ...Object.values(dispatcher.events)].map((q) => q.waitUntilReady()));
    return dispatcher;
  }

  async compute(planned: PlannedStage, request: DispatchRequest): Promise<EntryMeta> {
    const { stage, key } = planned;
    const kind: QueueKind = stage.definition.resource === 'tf' ? 'tf' : 'io';
    const queue = this.queues[kind];
    const data: StageJobData = {
      format: JOB_FORMAT,
      file: this.options.file,
      overrides: this.options.overrides,
      stage: stage.id,
      key,
      upstream: planned.record.upstream,
      inputs: Object.entries(request.upstream).map(([id, inputKey]) => ({ id, key: inputKey })),
      run: request.runId,
      backend: this.options.backend,
      force: planned.forced === true,
      ...(request.failedBranches ? { failedBranches: request.failedBranches } : {}),
    };
    const listener: Listener = { log: request.log, progress: request.progress };
    this.listeners.set(key, [...(this.listeners.get(key) ?? []), listener]);
    try {
      // A finished job of this key is an old one (its entry is gone, or it failed): replace it.
      // A waiting or running one is shared: the duplicate collapses into it.
      const old = await queue.getJob(key);
      const state = old ? await old.getState() : undefined;
      if (old && (state === 'completed' || state === 'failed')) await old.remove().catch(() => undefined);
      const keep = { age: this.options.keepSeconds ?? 86_400, count: 1000 };
      const job = await queue.add(stage.id, data, {
        jobId: key,
        priority: this.priorityOf(planned, request.pipeline),
        attempts: JOB_ATTEMPTS,
        backoff: { type: 'exponential', delay: BACKOFF_MS },
        removeOnComplete: keep,
        removeOnFail: keep,
      });
      if (job.data.run !== request.runId) request.log.info({ key, queue: queueName(kind), run: job.data.run }, 'stage already queued by another run: waiting for its job');
      else request.log.info({ key, queue: queueName(kind), priority: job.opts.priority }, 'job queued');
      const result = await this.waitFor(job, request.signal);
      this.backends.add(result.backend);
      if (result.entry?.key !== key) throw new StageError('version_skew', `worker ${result.worker} answered stage '${stage.id}' with an entry for another key: it runs another version of the toolkit`);
      request.log.info({ key, worker: result.worker, outcome: result.outcome, seconds: result.seconds }, 'job completed');
      return result.entry;
    } finally {
      this.listeners.set(key, (this.listeners.get(key) ?? []).filter((l) => l !== listener));
    }
  }

  /** The workers' backends, for the run summary (`none` when no job ran TF.js). */
  describeBackends(): string | undefined {
    const used = [...this.backends].filter((b) => b !== 'none');
    return used.length ? used.sort().join(', ') : undefined;
  }

  async close(): Promise<void> {
    await Promise.all([...Object.values(this.events), ...Object.values(this.queues)].map((q) => q.close()));
  }

  /** Resolves with the job's result; a failed job rejects with its code and the worker's message. */
  private async waitFor(job: Job<StageJobData, StageJobResult>, signal: AbortSignal): Promise<StageJobResult> {
    const kind = QUEUE_KINDS.find((k) => queueName(k) === job.queueName)!;
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(new AbortedError('interrupted while workers ran it (the job keeps running there)'));
      if (signal.aborted) onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([job.waitUntilFinished(this.events[kind]) as Promise<StageJobResult>, aborted]);
    } catch (error) {
      if (error instanceof AbortedError) throw error;
      const reason = (error as Error).message;
      const code = /\[([a-z0-9_]+)\]$/.exec(reason)?.[1] ?? 'job_failed';
      const after = await this.queues[kind].getJob(job.id!).catch(() => undefined);
      const where = after?.processedBy ? ` on worker ${after.processedBy}` : '';
      const tries = after ? ` after ${after.attemptsMade} attempt(s)` : '';
      throw new StageError(code as ErrorCode, `${reason.replace(/\s*\[[a-z0-9_]+\]$/, '')} (job ${job.id?.slice(0, 12)}…${where}${tries})`);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Stages with more of the pipeline below them first (BullMQ: 1 is the highest priority). */
  private priorityOf(planned: PlannedStage, pipeline: ResolvedPipeline): number {
    return 1 + Math.max(0, 1000 - descendants(pipeline.needs, planned.stage.id).size);
  }

  /** Writes a worker's progress or log line into the run log of every stage waiting for that job. */
  private forward(jobId: string, message: StageJobProgress): void {
    for (const listener of this.listeners.get(jobId) ?? []) {
      if (message.progress) {
        listener.log.debug({ worker: message.worker, progress: message.progress }, 'progress');
        listener.progress(message.progress);
      }
      if (message.log) {
        const { level, msg, time, run: _run, stage: _stage, kind: _kind, worker: _worker, ...fields } = message.log;
        const label = (typeof level === 'number' && pino.levels.labels[level]) || 'info';
        (listener.log[label as 'info'] ?? listener.log.info).call(listener.log, { worker: message.worker, workerTime: time, ...fields }, String(msg ?? ''));
      }
    }
  }
}
