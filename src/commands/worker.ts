/**
 * `pipeline worker --redis URL [--artifacts DIR] [--queue tf|io] [--concurrency N] [--remote
 * s3://… [--remote-endpoint URL]] [--backend B] [--stall-seconds S]`: serves stage jobs until SIGINT/SIGTERM, then lets
 * running jobs finish and exits 0 (a second signal exits at once with 130).
 *
 * Also `openExecutor`, the `run --executor bullmq --redis URL` side: BullMQ is loaded only when
 * one of these is used.
 */
import type { StageDispatcher } from '../runtime/execute.js';
import { UsageError } from '../runtime/errors.js';
import type { QueueKind } from '../distributed/queue.js';

export const WORKER_COMMAND = {
  synopsis: 'worker --redis URL',
  summary: 'run stages that `run --executor bullmq` queues (BullMQ on Redis) until stopped',
  details: [
    'Each job runs in its own child process; --artifacts is the store the coordinator uses (one',
    'machine, or a shared disk), or with --remote a local store filled from and pushed to the remote',
    'cache. A worker that dies mid-stage is replaced by another within about 2 x --stall-seconds.',
  ].join('\n'),
};

export const WORKER_OPTION_HELP: Record<string, string> = {
  executor: '--executor NAME      local (default) | bullmq: queue the stages for `pipeline worker`s (needs --redis)',
  redis: '--redis URL          the Redis of the BullMQ queues, e.g. redis://127.0.0.1:6379',
  queue: '--queue KIND         worker: serve only tf (TF.js) or io stages (default both)',
  concurrency: '--concurrency N      worker: jobs at once per queue, each in its own process (default 1)',
  'stall-seconds': '--stall-seconds S    worker: job lock lease and stalled-job check period (default 30)',
};

function positive(text: string | undefined, flag: string, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a whole number of at least 1, got '${text}'`);
  return n;
}

/** `pipeline worker`. Returns the exit code. */
export async function commandWorker(values: Record<string, any>, artifacts: string, io: { stderr(text: string): void; env: NodeJS.ProcessEnv }): Promise<number> {
  if (!values.redis) throw new UsageError('worker needs --redis URL (the Redis that `pipeline run --executor bullmq` uses)');
  const queues: QueueKind[] = values.queue === undefined ? ['tf', 'io'] : values.queue === 'tf' || values.queue === 'io' ? [values.queue] : [];
  if (!queues.length) throw new UsageError(`--queue must be tf or io, got '${values.queue}'`);
  // The remote as `run` takes it: --remote, else $PIPELINE_REMOTE; --remote-endpoint, else AWS_ENDPOINT_URL.
  const remote: string | undefined = values.remote ?? (io.env.PIPELINE_REMOTE || undefined);
  if (remote !== undefined && !/^s3:\/\/[^/]+/.test(remote)) throw new UsageError(`--remote must be s3://bucket[/prefix], got '${remote}'`);
  // Checked here, as `run` checks it (a bad bucket, prefix or endpoint is exit 2), not at the first job.
  if (values['remote-endpoint'] !== undefined && remote === undefined) throw new UsageError('--remote-endpoint needs a remote: --remote s3://bucket/prefix or PIPELINE_REMOTE');
  if (remote !== undefined) (await import('../remote/remote-cache.js')).openRemote({ url: remote, endpoint: values['remote-endpoint'], env: io.env }).close();
  // The job processes inherit the environment; S3Remote reads the endpoint from it.
  if (values['remote-endpoint'] !== undefined) process.env.AWS_ENDPOINT_URL_S3 = values['remote-endpoint'];
  const concurrency = positive(values.concurrency, '--concurrency', 1);
  const stallSeconds = positive(values['stall-seconds'], '--stall-seconds', 30);
  const { startWorkers } = await import('../distributed/worker.js');
  const workers = await startWorkers({ redis: values.redis, artifacts, queues, concurrency, remote, backend: values.backend, stallSeconds, report: (line) => io.stderr(`${line}\n`) });
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      io.stderr(`worker ${workers.id}: ${signal}: finishing running jobs (press Ctrl-C again to exit now)\n`);
      process.once('SIGINT', () => process.exit(130));
      process.once('SIGTERM', () => process.exit(130));
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await workers.close();
  return 0;
}

/** The dispatcher of `run --executor bullmq`, or undefined for the local executor. */
export async function openExecutor(values: Record<string, any>, file: string): Promise<(StageDispatcher & { close(): Promise<void>; describeBackends(): string | undefined }) | undefined> {
  const executor = values.executor ?? 'local';
  if (executor !== 'local' && executor !== 'bullmq') throw new UsageError(`--executor must be local or bullmq, got '${executor}'`);
  if (executor === 'local') {
    if (values.redis !== undefined) throw new UsageError('--redis needs --executor bullmq');
    return undefined;
  }
  if (!values.redis) throw new UsageError('--executor bullmq needs --redis URL (e.g. redis://127.0.0.1:6379)');
  const { BullmqDispatcher } = await import('../distributed/coordinator.js');
  return BullmqDispatcher.open({ redis: values.redis, file, overrides: values.set ?? [], backend: values.backend ?? '' });
}
