/**
 * `pipeline cache push|pull`: moves cache entries between the local store and the remote cache
 * (S3), and `remoteCacheOf`, which `run --remote` uses too. The remote is `--remote URL`, else
 * `$PIPELINE_REMOTE`; the endpoint `--remote-endpoint`, else `AWS_ENDPOINT_URL`; credentials the
 * standard AWS chain.
 *
 *   cache push [KEY...]        the given keys, or every key the newest run of each pipeline used
 *                              (with the memo entries they were built from)
 *   cache pull FILE.yaml       the entries a run of the pipeline would use, stage by stage
 *   cache pull KEY...          those keys
 * Both register in the store like a run (gc waits for them) and print one line per key.
 */
import { randomBytes } from 'node:crypto';
import { UsageError } from '../runtime/errors.js';
import { StatCache } from '../runtime/hash.js';
import { planRun } from '../runtime/plan.js';
import { resolvePipeline } from '../runtime/run.js';
import { ArtifactStore } from '../runtime/store.js';
import type { StageRegistry } from '../runtime/types.js';
import { isCacheKey } from '../remote/remote.js';
import type { RemoteBackedCache } from '../remote/remote-cache.js';

export interface CacheCommandIo {
  registry: StageRegistry;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
}

/** The flags of `cache` and `run` that pick the remote. */
export interface RemoteFlags {
  remote?: string;
  'remote-endpoint'?: string;
}

/**
 * The cache for a store at `root` with the remote of the flags or `$PIPELINE_REMOTE`, or
 * undefined when neither names one. The S3 client is loaded only then.
 */
export async function remoteCacheOf(flags: RemoteFlags, env: NodeJS.ProcessEnv): Promise<((root: string) => RemoteBackedCache) | undefined> {
  const url = flags.remote ?? (env.PIPELINE_REMOTE || undefined);
  if (flags['remote-endpoint'] !== undefined && url === undefined) throw new UsageError('--remote-endpoint needs a remote: --remote s3://bucket/prefix or PIPELINE_REMOTE');
  if (url === undefined) return undefined;
  const { openRemote, RemoteBackedCache } = await import('../remote/remote-cache.js');
  const client = openRemote({ url, endpoint: flags['remote-endpoint'], env });
  return (root) => new RemoteBackedCache(root, client);
}

/** `pipeline cache push|pull …`; returns the exit code (1 when a key could not be moved). */
export async function commandCache(args: string[], values: RemoteFlags & { json?: boolean; set?: string[] }, artifacts: string, io: CacheCommandIo): Promise<number> {
  const [action, ...targets] = args;
  if (action !== 'push' && action !== 'pull') throw new UsageError(`cache takes 'push' or 'pull', got ${action === undefined ? 'nothing' : `'${action}'`}`);
  const openCache = await remoteCacheOf(values, io.env);
  if (!openCache) throw new UsageError(`cache ${action} needs a remote: --remote s3://bucket/prefix, or set PIPELINE_REMOTE`);
  for (const target of targets) if (!isCacheKey(target) && !/\.ya?ml$/i.test(target)) throw new UsageError(`cache ${action}: '${target}' is neither a cache key nor a pipeline file (.yaml)`);
  if (action === 'push' && targets.some((t) => !isCacheKey(t))) throw new UsageError('cache push takes cache keys (or nothing: the keys of the newest run of each pipeline)');
  if (action === 'pull' && !targets.length) throw new UsageError('cache pull takes a pipeline file or cache keys');
  const cache = openCache(artifacts);
  const store = new ArtifactStore(artifacts, { cache });
  const lines: { key: string; ok: boolean; text: string }[] = [];
  const report = (key: string, ok: boolean, text: string) => {
    lines.push({ key, ok, text });
    if (!values.json) (ok ? io.stdout : io.stderr)(`${ok ? '' : 'pipeline: '}${text}\n`);
  };
  const leave = await store.enterRun(`cache-${Date.now()}-${randomBytes(2).toString('hex')}`);
  try {
    if (action === 'push') {
      const keys = targets.length ? targets : await keysOfNewestRuns(store);
      if (!keys.length && !values.json) io.stderr(`nothing to push: no run in ${artifacts} (run a pipeline first, or name cache keys)\n`);
      for (const key of keys) {
        const check = await cache.check(key);
        if (check.state !== 'ok') {
          report(key, false, `skipped ${key}: ${check.state === 'corrupt' ? `the local entry is corrupt (${check.reason})` : 'not in the local cache'}`);
          continue;
        }
        try {
          const pushed = await cache.push(key);
          report(key, true, `↑ ${key} ${check.meta.stage}: ${pushed.uploaded} uploaded (${bytes(pushed.bytesUploaded)}), ${pushed.present} present, manifest ${pushed.manifest}`);
        } catch (error) {
          report(key, false, `push of ${key} failed: ${(error as Error).message}`);
        }
      }
    } else {
      for (const target of targets) {
        if (isCacheKey(target)) await pullKey(cache, target, report);
        else {
          // The plan pulls each stage it finds on the remote (and then knows its dependents' keys).
          const pipeline = resolvePipeline({ file: target, registry: io.registry, overrides: values.set });
          const statCache = new StatCache(store.statCacheFile());
          await statCache.load();
          const plan = await planRun(pipeline, cache, store.history, {}, statCache);
          await statCache.save();
          for (const planned of plan.stages) {
            const pulled = planned.reasons.some((reason) => reason.startsWith('pulled from'));
            const text = planned.action !== 'cached' ? `· ${planned.key} ${planned.stage.id}: ${planned.reasons.join('; ')}` : pulled ? `↓ ${planned.key} ${planned.stage.id}: ${planned.reasons.join('; ')}` : `= ${planned.key} ${planned.stage.id}: already in the local cache (${planned.reasons.join('; ')})`;
            report(planned.key, planned.action === 'cached', text);
          }
        }
      }
    }
    await cache.flush();
  } finally {
    await leave();
  }
  if (values.json) io.stdout(JSON.stringify({ remote: cache.remote, action, keys: lines.map(({ key, ok, text }) => ({ key, ok, message: text })) }) + '\n');
  return lines.every((line) => line.ok) ? 0 : 1;
}

async function pullKey(cache: RemoteBackedCache, key: string, report: (key: string, ok: boolean, text: string) => void): Promise<void> {
  const check = await cache.check(key);
  if (check.state === 'ok') return report(key, true, `= ${key} ${check.meta.stage}: already in the local cache`);
  try {
    if (check.state === 'corrupt') await cache.discard(key);
    const pulled = await cache.pull(key);
    if (!pulled) report(key, false, `${key} is not on ${cache.remote}`);
    else report(key, true, `↓ ${key} ${pulled.meta.stage}: ${pulled.downloaded} blobs downloaded (${bytes(pulled.bytes)} in the entry)`);
  } catch (error) {
    report(key, false, `pull of ${key} failed: ${(error as Error).message}`);
  }
}

/** What gc would keep with `--keep 1`: the keys of the newest run of each pipeline, with their memo entries. */
async function keysOfNewestRuns(store: ArtifactStore): Promise<string[]> {
  const { wanted } = await store.history.keptKeys(1);
  for (const key of [...wanted]) for (const memo of (await store.cache.readMeta(key))?.memo ?? []) wanted.add(memo);
  return [...wanted].sort();
}

function bytes(n: number): string {
  return n < 1e6 ? `${(n / 1e3).toFixed(1)} kB` : `${(n / 1e6).toFixed(1)} MB`;
}
