/**
 * `pipeline worker`: takes stage jobs from the BullMQ queues and runs each in a sandboxed
 * processor (`processor.ts`, a child process per concurrent job). A job whose worker dies is
 * "stalled": once its lock (`lockDuration`) runs out, another worker's stalled check (every
 * `stalledInterval`) puts it back in the queue and a live worker runs it again, resuming from
 * the checkpoints the dead one left in the shared store.
 */
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'bullmq';
import { checkRedis, queueName, redisOptions, WORKER_ENV, type QueueKind, type StageJobData, type StageJobResult } from './queue.js';

export interface WorkerOptions {
  /** `redis://host:port`. */
  redis: string;
  /** The artifact store (shared with the coordinator on one machine, or a local one with `remote`). */
  artifacts: string;
  /** The queues to serve (default both). */
  queues: QueueKind[];
  /** Jobs run at once per queue, each in its own child process. */
  concurrency: number;
  /** `s3://bucket/prefix`: inputs are pulled from it and results pushed to it. */
  remote?: string;
  /** TF.js backend of this machine (default: what the coordinator was asked for). */
  backend?: string;
  /**
   * Seconds a job's lock lasts without renewal, and how often workers look for stalled jobs:
   * a killed worker's job runs again elsewhere within about twice this. Default 30.
   */
  stallSeconds: number;
  /** This worker's name in logs and job records. Default `host:pid`. */
  id?: string;
  /** One line per event (job taken, done, failed), for the terminal. */
  report(line: string): void;
}

/** Starts the workers; resolves with a function that stops them (running jobs finish first). */
export async function startWorkers(options: WorkerOptions): Promise<{ id: string; close(): Promise<void> }> {
  const connection = redisOptions(options.redis);
  await checkRedis(options.redis, connection);
  const id = options.id ?? `${os.hostname()}:${process.pid}`;
  // Read by the forked processors (they inherit this environment).
  process.env[WORKER_ENV.artifacts] = options.artifacts;
  process.env[WORKER_ENV.id] = id;
  if (options.remote) process.env[WORKER_ENV.remote] = options.remote;
  if (options.backend) process.env[WORKER_ENV.backend] = options.backend;
  const processor = fileURLToPath(new URL('./processor.js', import.meta.url));
  const workers = options.queues.map((kind) => {
    const worker = new Worker<StageJobData, StageJobResult>(queueName(kind), processor, {
      connection,
      concurrency: options.concurrency,
      name: id,
      lockDuration: options.stallSeconds * 1000,
      stalledInterval: options.stallSeconds * 1000,
      // A job whose worker died once is run again; twice, and it fails (a stage that kills its
      // worker every time must not loop forever).
      maxStalledCount: 1,
    });
    const label = (job: { data: StageJobData; id?: string } | undefined) => (job ? `${job.data.stage} ${job.id?.slice(0, 12)}` : '?');
    worker.on('active', (job) => options.report(`worker ${id}: ${kind} ${label(job)} started (attempt ${job.attemptsMade + 1})`));
    worker.on('completed', (job, result) => options.report(`worker ${id}: ${kind} ${label(job)} ${result.outcome} in ${result.seconds}s`));
    worker.on('failed', (job, error) => options.report(`worker ${id}: ${kind} ${label(job)} failed: ${error.message}`));
    worker.on('stalled', (jobId) => options.report(`worker ${id}: ${kind} job ${jobId.slice(0, 12)} stalled (its worker died); queued again`));
    worker.on('error', (error) => options.report(`worker ${id}: ${kind} queue error: ${error.message}`));
    return worker;
  });
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  options.report(`worker ${id}: serving ${options.queues.map(queueName).join(', ')} on ${options.redis} (concurrency ${options.concurrency}, store ${options.artifacts}${options.remote ? `, remote ${options.remote}` : ''})`);
  return {
    id,
    async close() {
      await Promise.all(workers.map((w) => w.close()));
    },
  };
}
