/**
 * Workers without a shared disk: each has its own store and the same S3 remote cache (OpenStack
 * Swift with s3api, test/services/swift.sh) and Redis (test/services/redis.ts). A worker pushes
 * what it computes; a second worker with an empty store and a coordinator with an empty store
 * get every stage from the remote (pulled, nothing computed); `--force` still recomputes.
 * Skipped with a message when redis-server or Swift is missing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Remote } from '../../src/remote/s3.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { redisMissing, startRedis, type RedisServer } from '../services/redis.js';
import { cli, root, runLog, startWorker, stopWorker, type Cli } from './helpers.js';

const script = path.join(root, 'test/services/swift.sh');
const swiftInstalled = spawnSync('bash', ['-c', 'command -v swift-proxy-server && command -v memcached'], { stdio: 'ignore' }).status === 0;
const skip = redisMissing() ?? (swiftInstalled ? undefined : 'OpenStack Swift is not installed, so the BullMQ remote-cache test is skipped: run .ci/services.sh');
if (skip) {
  if (!swiftInstalled && process.env.REMOTE_TESTS_REQUIRED === '1') throw new Error(skip);
  console.warn(skip);
}

let redis: RedisServer;
let dir: TestDir;
let awsEnv: Record<string, string>;
let remoteUrl: string;
let startedHere = false;

beforeAll(async () => {
  if (skip) return;
  redis = (await startRedis())!;
  dir = testdir();
  startedHere = spawnSync('bash', [script, 'status'], { stdio: 'ignore' }).status !== 0;
  const out = execFileSync('bash', [script, 'start'], { encoding: 'utf8', timeout: 150_000 });
  awsEnv = Object.fromEntries(out.trim().split('\n').map((line) => line.split(/=(.*)/s).slice(0, 2) as [string, string]));
  const bucket = `fp-bullmq-${randomBytes(4).toString('hex')}`;
  const client = new S3Client({ endpoint: awsEnv.AWS_ENDPOINT_URL, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: awsEnv.AWS_ACCESS_KEY_ID, secretAccessKey: awsEnv.AWS_SECRET_ACCESS_KEY }, requestChecksumCalculation: 'WHEN_REQUIRED' });
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  client.destroy();
  remoteUrl = `s3://${bucket}/team`;
}, 180_000);
afterAll(async () => {
  await redis?.stop();
  dir?.cleanup();
  if (startedHere && process.env.SWIFT_TEST_KEEP !== '1') spawnSync('bash', [script, 'stop'], { stdio: 'ignore' });
});

const summaryOf = (run: Cli) => JSON.parse(run.stdout) as { status: string; run: string; stages: { id: string; status: string; key: string }[] };

describe.skipIf(skip)('pipeline worker --remote (no shared disk)', () => {
  it('a worker pushes what it computes; another worker with an empty store pulls it instead of computing; --force recomputes', { timeout: 120_000 }, async () => {
    const file = dir.write('p/pipeline.yaml', `name: remote-workers\nseed: 5\nstages:\n  ingest:\n    uses: ingest\n    with: { path: ${path.join(root, 'data/fashion-target')} }\n  preprocess:\n    uses: preprocess\n    needs: [ingest]\n    with: { size: [28, 28], channels: 1 }\n`);
    const run = (store: string, ...extra: string[]) => cli(['run', file, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', store, '--json', ...extra]);
    const outcomes = (store: string, runId: string) => Object.fromEntries(runLog(store, runId).filter((l) => l.msg === 'job completed').map((l) => [l.stage, l.outcome]));

    const first = await startWorker(redis.url, dir.path('w1'), ['--queue', 'io', '--remote', remoteUrl], awsEnv);
    let keys: string[];
    try {
      const coordinator = run(dir.path('c1'));
      expect(await coordinator.exited, coordinator.stderr).toBe(0);
      const summary = summaryOf(coordinator);
      keys = summary.stages.map((s) => s.key);
      expect(outcomes(dir.path('c1'), summary.run)).toEqual({ ingest: 'ran', preprocess: 'ran' });
    } finally {
      await stopWorker(first);
    }
    const remote = new S3Remote({ url: remoteUrl, env: awsEnv, credentials: { accessKeyId: awsEnv.AWS_ACCESS_KEY_ID, secretAccessKey: awsEnv.AWS_SECRET_ACCESS_KEY } });
    try {
      expect((await remote.listKeys()).sort()).toEqual([...keys].sort());
    } finally {
      remote.close();
    }

    const second = await startWorker(redis.url, dir.path('w2'), ['--queue', 'io', '--remote', remoteUrl], awsEnv);
    try {
      const coordinator = run(dir.path('c2'));
      expect(await coordinator.exited, coordinator.stderr).toBe(0);
      const summary = summaryOf(coordinator);
      expect(summary.stages.map((s) => s.key)).toEqual(keys);
      expect(outcomes(dir.path('c2'), summary.run)).toEqual({ ingest: 'pulled', preprocess: 'pulled' });
      for (const key of keys) expect(existsSync(path.join(dir.path('w2'), 'cache', key, '_entry.json'))).toBe(true);
      expect(second.stderr).not.toMatch(/ ran in /);

      const forced = run(dir.path('c2'), '--force', 'preprocess');
      expect(await forced.exited, forced.stderr).toBe(0);
      const again = summaryOf(forced);
      expect(again.stages.map((s) => s.key)).toEqual(keys);
      expect(outcomes(dir.path('c2'), again.run)).toEqual({ ingest: 'reused', preprocess: 'ran' });
    } finally {
      await stopWorker(second);
    }
  });
});
