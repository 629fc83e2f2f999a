/**
 * The remote cache wired into runs, against a real S3 API (OpenStack Swift with s3api, started
 * by test/services/swift.sh): a second store with an empty local dir takes every stage from the
 * remote (no stage executes) with the same output digests; a corrupted remote blob is detected,
 * never used, the stage re-runs and the next push repairs the object; `pipeline cache push` is
 * idempotent and `cache pull FILE` fills a store. Skipped with a message when Swift is not
 * installed (REMOTE_TESTS_REQUIRED=1 makes that a failure).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { RemoteBackedCache } from '../../src/remote/remote-cache.js';
import { S3Remote } from '../../src/remote/s3.js';
import { entryDigest } from '../../src/runtime/cache.js';
import { runPipeline } from '../../src/runtime/run.js';
import { calls, fakeRegistry } from '../fixtures/fake-stages.js';
import { startSwift, swiftInstalled, type Swift } from '../fixtures/swift.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';

/** Like the demo: a source, a stage with a cached intermediate (memo), a model-sized file, a last stage. */
const pipeline = `name: team
stages:
  ingest: { uses: source, with: { value: 3 } }
  features: { uses: transform, needs: [ingest], with: { memo: true, pad: 300000 } }
  head: { uses: transform, needs: [features], with: { factor: 3 } }
  export: { uses: transform, needs: [head], with: { factor: 1 } }
`;

describe.skipIf(!swiftInstalled)('remote cache on a real S3 API (Swift s3api)', () => {
  let swift: Swift | undefined;
  let endpoint = '';
  let credentials = { accessKeyId: '', secretAccessKey: '' };
  let raw: S3Client;
  let bucket = '';
  let dir: TestDir;
  const remotes: S3Remote[] = [];
  const savedEnv = { ...process.env };

  beforeAll(async () => {
    swift = await startSwift('fp-rc');
    ({ endpoint, credentials, raw, bucket } = swift);
    // The CLI takes credentials from the standard AWS chain: the environment here.
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey, AWS_REGION: 'us-east-1' });
    dir = testdir({ 'p.yaml': pipeline });
  }, 180_000);

  afterAll(() => {
    for (const remote of remotes) remote.close();
    swift?.stop();
    dir?.cleanup();
    process.env = savedEnv;
  });

  beforeEach(() => {
    calls.length = 0;
  });

  /** A run of p.yaml in the store `name` with the remote `s3://bucket/prefix`. */
  const runWith = (name: string, prefix: string) => {
    const remote = new S3Remote({ url: `s3://${bucket}/${prefix}`, endpoint, credentials });
    remotes.push(remote);
    return runPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path(name), openCache: (root) => new RemoteBackedCache(root, remote) });
  };
  const digestsOf = (store: string, keys: string[]) => keys.map((key) => entryDigest(JSON.parse(readFileSync(dir.path(store, 'cache', key, '_entry.json'), 'utf8'))));
  async function cli(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
    let stdout = '';
    let stderr = '';
    const env = { AWS_ENDPOINT_URL: endpoint };
    const status = await main(args, { registry: fakeRegistry, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), env, isTTY: false });
    return { status, stdout, stderr };
  }

  it('a second store with an empty local dir takes every stage from the remote: nothing runs, same digests', async () => {
    const first = await runWith('store-a', 'team');
    expect(first.status).toBe('succeeded');
    expect(calls).toEqual(['ingest', 'features', 'features:memo', 'head', 'export']);
    calls.length = 0;
    const second = await runWith('store-b', 'team');
    expect(second.status).toBe('succeeded');
    expect(calls).toEqual([]); // no stage (and no memo) executed
    expect(second.stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
    expect(second.stages.every((s) => s.reasons!.some((r) => r.startsWith(`pulled from s3://${bucket}/team`)))).toBe(true);
    const keys = first.stages.map((s) => s.key);
    expect(second.stages.map((s) => s.key)).toEqual(keys);
    expect(digestsOf('store-b', keys)).toEqual(digestsOf('store-a', keys));
    expect(second.stages.map((s) => s.metrics)).toEqual(first.stages.map((s) => s.metrics));
  });

  it('a corrupted remote blob is detected and never used; the stage re-runs and the next push repairs it', async () => {
    const first = await runWith('store-c', 'corrupt');
    const headKey = first.stages[2]!.key;
    const meta = JSON.parse(readFileSync(dir.path('store-c', 'cache', headKey, '_entry.json'), 'utf8'));
    const digest = meta.files['value.json'].sha256 as string;
    const remote = new S3Remote({ url: `s3://${bucket}/corrupt`, endpoint, credentials });
    remotes.push(remote);
    // Other bytes of the same size under the blob's name.
    const good = readFileSync(dir.path('store-c', 'cache', headKey, 'value.json'));
    const bad = Buffer.from(good.toString('utf8').replace('18', '81'));
    expect(bad.length).toBe(good.length);
    await raw.send(new PutObjectCommand({ Bucket: bucket, Key: remote.blobKey(digest), Body: bad }));

    calls.length = 0;
    const second = await runWith('store-d', 'corrupt');
    expect(second.status).toBe('succeeded');
    expect(calls).toEqual(['head']); // ingest and features came from the remote; head re-ran
    const head = second.stages[2]!;
    expect(head.status).toBe('ran');
    expect(head.reasons!.join(' ')).toMatch(/remote_corrupt/);
    expect(head.metrics).toEqual({ value: 18 });
    expect(readFileSync(dir.path('store-d', 'cache', head.key, 'value.json'), 'utf8')).toBe('{"value":18}');
    // export was keyed by head's (recomputed, identical) bytes: still taken from the remote.
    expect(second.stages[3]!.status).toBe('cached');
    const log = readFileSync(dir.path('store-d', 'runs', second.run, 'log.jsonl'), 'utf8');
    expect(log).toMatch(/"msg":"pushed"/);

    // The push after head's re-run replaced the bad object: a third store takes everything.
    calls.length = 0;
    const third = await runWith('store-e', 'corrupt');
    expect(calls).toEqual([]);
    expect(third.stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
  });

  it('pipeline cache push is idempotent; cache pull FILE fills an empty store for a run that executes nothing', async () => {
    const local = await runPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('store-f'), overrides: ['stages.ingest.with.value=5'] });
    expect(local.status).toBe('succeeded');
    const count = async () => (await raw.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'cli/' }))).KeyCount ?? 0;

    const first = await cli('cache', 'push', '--remote', `s3://${bucket}/cli`, '--artifacts', dir.path('store-f'), '--json');
    expect(first.status, first.stderr).toBe(0);
    const pushed = JSON.parse(first.stdout);
    expect(pushed.keys).toHaveLength(5); // four stages and the memo entry
    expect(pushed.keys.every((k: { message: string }) => /manifest written/.test(k.message))).toBe(true);
    const objects = await count();
    expect(objects).toBeGreaterThanOrEqual(5 + 4);

    const again = await cli('cache', 'push', '--remote', `s3://${bucket}/cli`, '--artifacts', dir.path('store-f'));
    expect(again.status, again.stderr).toBe(0);
    for (const line of again.stdout.trim().split('\n')) expect(line).toMatch(/: 0 uploaded \(0\.0 kB\), \d+ present, manifest exists$/);
    expect(await count()).toBe(objects);

    const pull = await cli('cache', 'pull', dir.path('p.yaml'), '--set', 'stages.ingest.with.value=5', '--artifacts', dir.path('store-g'), '--remote-endpoint', endpoint, '--remote', `s3://${bucket}/cli`);
    expect(pull.status, pull.stderr).toBe(0);
    expect(pull.stdout.trim().split('\n')).toHaveLength(4);
    for (const line of pull.stdout.trim().split('\n')) expect(line).toMatch(/^↓ [0-9a-f]{64} \S+: pulled from s3:/);
    // Pulled again: already local, so `=`, not `↓` (nothing was downloaded).
    const twice = await cli('cache', 'pull', dir.path('p.yaml'), '--set', 'stages.ingest.with.value=5', '--artifacts', dir.path('store-g'), '--remote-endpoint', endpoint, '--remote', `s3://${bucket}/cli`);
    expect(twice.status, twice.stderr).toBe(0);
    for (const line of twice.stdout.trim().split('\n')) expect(line).toMatch(/^= [0-9a-f]{64} \S+: already in the local cache \(inputs unchanged\)$/);
    calls.length = 0;
    const run = await cli('run', dir.path('p.yaml'), '--set', 'stages.ingest.with.value=5', '--artifacts', dir.path('store-g'), '--json');
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).stages.map((s: { status: string }) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
    expect(calls).toEqual([]);
  });

  it('refuses a bad remote URL with exit 2 and a message naming the flag', async () => {
    const bad = await cli('run', dir.path('p.yaml'), '--artifacts', dir.path('store-h'), '--remote', 'bucket/x');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/invalid remote "bucket\/x": expected s3:\/\/bucket/);
    const none = await cli('cache', 'push', '--artifacts', dir.path('store-h'));
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/needs a remote: --remote s3:\/\/bucket\/prefix, or set PIPELINE_REMOTE/);
  });
});

describe('remote cache that cannot be reached (no server needed)', () => {
  it('costs one failed lookup: every stage runs here, pushes become warnings, the run succeeds', async () => {
    const port = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as net.AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const dir = testdir({ 'p.yaml': pipeline });
    const remote = new S3Remote({ url: 's3://team-cache/x', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, connectTimeoutMs: 2_000 });
    try {
      calls.length = 0;
      const started = Date.now();
      const summary = await runPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('store'), openCache: (root) => new RemoteBackedCache(root, remote) });
      expect(summary.status).toBe('succeeded');
      expect(calls).toEqual(['ingest', 'features', 'features:memo', 'head', 'export']);
      expect(summary.stages[0]!.reasons!.join(' ')).toMatch(/remote s3:\/\/team-cache\/x could not serve it \(remote_unreachable/);
      expect(summary.warnings?.length).toBe(5); // four stages and the memo entry
      expect(summary.warnings![0].message).toMatch(/remote_unreachable/);
      // The first failure is remembered: later lookups and pushes do not wait for the network again.
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      remote.close();
      dir.cleanup();
    }
  });
});
