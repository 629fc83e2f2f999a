/**
 * What the coordinator (`pipeline run --executor bullmq`) and the workers (`pipeline worker`)
 * agree on: the queues, the job's data and result, the Redis connection, the retry policy.
 *
 * One BullMQ queue per resource kind of the stage definitions (`tf` stages compute with TF.js,
 * `io` stages read and write files), so GPU machines can serve `tf` alone. A job's id is the
 * stage's cache key: two runs (or two coordinators) that need the same key share one job.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { PipelineError, UsageError } from '../runtime/errors.js';
import type { EntryMeta } from '../runtime/store.js';
import type { FailedBranch, ProgressEvent } from '../runtime/types.js';

/** The resource kinds, and so the queues. */
export const QUEUE_KINDS = ['tf', 'io'] as const;
export type QueueKind = (typeof QUEUE_KINDS)[number];

/** The BullMQ queue of a resource kind. */
export function queueName(kind: QueueKind): string {
  return `pipeline-${kind}`;
}

/** The format tag of `StageJobData`: a worker refuses a job of another format. */
export const JOB_FORMAT = 'finetune-pipeline/stage-job@2';

/** A job: compute one stage of one pipeline file. */
export interface StageJobData {
  format: typeof JOB_FORMAT;
  /** Absolute path of the pipeline file (the same path on every machine: a shared checkout). */
  file: string;
  /** `--set` overrides of the coordinator's run. */
  overrides: string[];
  /** The stage id. */
  stage: string;
  /** The stage's cache key as the coordinator computed it; the worker recomputes and compares. */
  key: string;
  /** Output digest of each direct upstream stage (the key is built from them). */
  upstream: Record<string, string>;
  /** Cache key of every input (direct `needs` first, then their ancestors). */
  inputs: { id: string; key: string }[];
  /** The coordinator's run id (for log lines and lock purposes). */
  run: string;
  /** The TF.js backend the coordinator was asked for (`auto`, `wasm`, …). */
  backend: string;
  /** `--force`/`--from` chose the stage: compute it even when an entry of its key exists. */
  force: boolean;  /** For a joining stage: the branches in its needs that failed (`StageContext.failedBranches`); absent when none did. */
  failedBranches?: FailedBranch[];
}

/** A job's result. */
export interface StageJobResult {
  /** The committed entry's record (metrics, files and their digests). */
  entry: EntryMeta;
  /** The worker that computed (or found) it. */
  worker: string;
  /** `ran`: computed; `reused`: in the worker's store already; `pulled`: from the remote cache. */
  outcome: 'ran' | 'reused' | 'pulled';
  /** The worker's TF.js backend, or `none` when it loaded none. */
  backend: string;
  seconds: number;
}

/** What a job reports while it runs (`job.updateProgress`), read by the coordinator. */
export interface StageJobProgress {
  worker: string;
  /** A stage's progress event. */
  progress?: ProgressEvent;
  /** A log line of the stage (a pino object: level, msg, fields). */
  log?: Record<string, unknown>;
}

/** Environment variables a worker sets for the processors it forks (they inherit them). */
export const WORKER_ENV = { artifacts: 'PIPELINE_WORKER_ARTIFACTS', remote: 'PIPELINE_WORKER_REMOTE', id: 'PIPELINE_WORKER_ID', backend: 'PIPELINE_WORKER_BACKEND' } as const;

/** Tries per job, the first included; then the job fails and its dependents are skipped. */
export const JOB_ATTEMPTS = 3;
/** First retry delay (ms); doubled for each further try. */
export const BACKOFF_MS = 1000;

/**
 * Connection options for a `redis://[user:password@]host[:port][/db]` or `rediss://` URL, or a
 * `UsageError` naming the flag. `maxRetriesPerRequest: null` is what BullMQ's blocking calls need.
 */
export function redisOptions(url: string, flag = '--redis'): RedisOptions {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`${flag} ${url}: not a URL; expected redis://host:port (e.g. redis://127.0.0.1:6379)`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') throw new UsageError(`${flag} ${url}: expected a redis:// or rediss:// URL`);
  const db = parsed.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) throw new UsageError(`${flag} ${url}: the path must be a database number (redis://host:6379/0)`);
  return {
    host: parsed.hostname || '127.0.0.1',
    port: parsed.port ? Number(parsed.port) : 6379,
    ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
    ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
    ...(db ? { db: Number(db) } : {}),
    ...(parsed.protocol === 'rediss:' ? { tls: {} } : {}),
    maxRetriesPerRequest: null,
  };
}

/**
 * Checks that Redis answers (one PING, no retries), so a wrong URL is one clear error instead
 * of a client that reconnects forever. Also checks the version BullMQ needs (6.2 or later).
 */
export async function checkRedis(url: string, options: RedisOptions): Promise<void> {
  const client = new Redis({ ...options, lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  let cause: Error | undefined;
  // The socket's reason (ECONNREFUSED), at once: `connect()` alone would wait for its timeout.
  const failed = new Promise<never>((_, reject) => client.on('error', (error) => reject((cause ??= error))));
  failed.catch(() => undefined);
  try {
    await Promise.race([client.connect(), failed]);
    const info = await client.info('server');
    const version = /redis_version:(\d+)\.(\d+)/.exec(info);
    if (version && (Number(version[1]) < 6 || (Number(version[1]) === 6 && Number(version[2]) < 2)))
      throw new PipelineError('redis_unreachable', `Redis at ${url} is version ${version[1]}.${version[2]}; BullMQ needs 6.2 or later`);
  } catch (error) {
    if (error instanceof PipelineError) throw error;
    const reason = (cause ?? (error as Error)).message;
    throw new PipelineError('redis_unreachable', `cannot reach Redis at ${url}: ${reason}; start redis-server there or fix --redis`, { cause: cause ?? error });
  } finally {
    client.disconnect();
  }
}
