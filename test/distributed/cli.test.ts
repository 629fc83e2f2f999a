/**
 * The distributed flags' bad input, through the built CLI: a usage error or an unreachable
 * Redis is one line with its code and exit 2, before anything is run or written. No Redis needed.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { root } from './helpers.js';

const bin = path.join(root, 'bin/pipeline.js');
const demo = path.join(root, 'pipelines/two-phase-finetune.yaml');
let dir: TestDir;
let closedPort: number;

beforeAll(async () => {
  dir = testdir();
  // A port nothing listens on: bound, then released.
  closedPort = await new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
});
afterAll(() => dir.cleanup());

function pipeline(...args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, CI: 'true' }, timeout: 30_000 });
}

describe('distributed flags: bad input', () => {
  it.each([
    [['run', demo, '--redis', 'redis://127.0.0.1:6379'], /--redis needs --executor bullmq \[usage\]/],
    [['run', demo, '--executor', 'bullmq'], /--executor bullmq needs --redis URL/],
    [['run', demo, '--executor', 'k8s'], /--executor must be local or bullmq, got 'k8s'/],
    [['run', demo, '--executor', 'bullmq', '--redis', 'http://host'], /--redis http:\/\/host: expected a redis:\/\/ or rediss:\/\/ URL/],
    [['run', demo, '--executor', 'bullmq', '--redis', 'redis://host/zero'], /the path must be a database number/],
    [['worker'], /worker needs --redis URL/],
    [['worker', demo, '--redis', 'redis://127.0.0.1:6379'], /worker takes no file/],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--queue', 'gpu'], /--queue must be tf or io, got 'gpu'/],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--concurrency', '0'], /--concurrency must be a whole number of at least 1/],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--remote', 'http://bucket'], /--remote must be s3:\/\/bucket/],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--json'], /--json does not apply to 'worker'/],
    // The remote is checked at start as `run` checks it, not at the first job.
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--remote', 's3://bucket//x'], /invalid remote "s3:\/\/bucket\/\/x": the prefix has an empty.*\[remote_config\]/],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--remote-endpoint', 'http://127.0.0.1:9'], /--remote-endpoint needs a remote/],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--remote', 's3://bucket/x', '--remote-endpoint', 'ftp://host'], /invalid S3 endpoint "ftp:\/\/host".*\[remote_config\]/],
  ])('%j is a usage error (exit 2)', (args, message) => {
    const result = pipeline(...args, ...(args[0] === 'run' ? ['--artifacts', dir.path('artifacts')] : []));
    expect(result.status, result.stderr).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('an unreachable Redis is redis_unreachable with the socket error, exit 2, and nothing written', () => {
    const artifacts = dir.path('unreached');
    for (const args of [['run', demo, '--executor', 'bullmq', '--artifacts', artifacts], ['worker', '--artifacts', artifacts]]) {
      const result = pipeline(...args, '--redis', `redis://127.0.0.1:${closedPort}`);
      expect(result.status, result.stderr).toBe(2);
      expect(result.stderr).toMatch(new RegExp(`cannot reach Redis at redis://127.0.0.1:${closedPort}: connect ECONNREFUSED .*start redis-server there or fix --redis \\[redis_unreachable\\]`));
    }
    expect(existsSync(artifacts)).toBe(false);
  });

  it('the worker takes $PIPELINE_REMOTE as run does (a bad one is exit 2 at start)', () => {
    const result = spawnSync(process.execPath, [bin, 'worker', '--redis', `redis://127.0.0.1:${closedPort}`], { cwd: root, encoding: 'utf8', env: { ...process.env, CI: 'true', PIPELINE_REMOTE: 's3://bucket/../x' }, timeout: 30_000 });
    expect(result.status, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/invalid remote "s3:\/\/bucket\/..\/x".*\[remote_config\]/);
  });
});
