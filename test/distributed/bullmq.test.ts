/**
 * Distributed execution on BullMQ against a real redis-server (test/services/redis.ts) and the
 * built CLI as child processes: two `pipeline worker`s and a coordinator (`pipeline run
 * --executor bullmq`) on one machine with one --artifacts store run the demo pipeline; one worker
 * is SIGKILLed mid-stage and the other finishes the run, with the result of a local run.
 * Also: a worker refuses a job whose key it computes differently (version skew, no retry), and
 * two coordinators that need one stage share one job; a sweep whose lr-10 branches fail their
 * gate: the worker's select is told which failed and chooses among the others. Skipped when
 * redis-server is missing.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatedSweep } from '../fixtures/sweep-gated.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { redisMissing, startRedis, type RedisServer } from '../services/redis.js';
import { cli, root, runLog, startWorker, stopWorker, until, type Cli } from './helpers.js';

const skip = redisMissing();
if (skip) console.warn(skip);

let redis: RedisServer;
let dir: TestDir;

beforeAll(async () => {
  if (skip) return;
  redis = (await startRedis())!;
  dir = testdir();
});
afterAll(async () => {
  await redis?.stop();
  dir?.cleanup();
});

const demo = path.join(root, 'pipelines/two-phase-finetune.yaml');
const summaryOf = (run: Cli) => JSON.parse(run.stdout) as { status: string; run: string; backend: string; stages: { id: string; status: string; key: string; metrics: Record<string, unknown>; error?: { code: string; message: string } }[] };
const entryOf = (artifacts: string, key: string) => JSON.parse(readFileSync(path.join(artifacts, 'cache', key, '_entry.json'), 'utf8'));
const childrenOf = (pid: number) => {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
};
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe.skipIf(skip)('pipeline run --executor bullmq with pipeline workers', () => {
  it('two workers run the demo; one is SIGKILLed mid-stage, the other finishes it; the result equals a local run', { timeout: 150_000 }, async () => {
    const t0 = performance.now();
    // The reference: a local run in another store, at the same time (the machine has idle time
    // while the workers wait for the stalled job).
    let localSeconds = 0;
    const local = cli(['run', demo, '--artifacts', dir.path('local'), '--json', '--set', `stages.export.with.dir=${dir.path('export-local')}`]);
    const localExit = local.exited.then((code) => ((localSeconds = (performance.now() - t0) / 1000), code));

    const shared = dir.path('shared');
    const [a, b] = await Promise.all([startWorker(redis.url, shared), startWorker(redis.url, shared)]);
    try {
      const coordinator = cli(['run', demo, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', shared, '--json', '--set', `stages.export.with.dir=${dir.path('export')}`]);
      // Wait for a worker to take fine-tune (its longest stage) and report an epoch into the run log.
      const victim = await until('a worker to start fine-tune', () => [a, b].find((w) => / fine-tune \w+ started/.test(w.stderr)), 90_000);
      const victimId = `${os.hostname()}:${victim.child.pid}`;
      const runId = await until('the run folder', () => readdirSync(path.join(shared, 'runs')).find(Boolean));
      await until('fine-tune progress from the worker in the run log', () => runLog(shared, runId).some((l) => l.stage === 'fine-tune' && l.progress && l.worker === victimId));
      const sandboxes = childrenOf(victim.child.pid!);
      victim.child.kill('SIGKILL');
      const killedAt = performance.now();
      const survivor = victim === a ? b : a;

      expect(await coordinator.exited, coordinator.stderr.slice(-3000)).toBe(0);
      const distributedSeconds = (performance.now() - t0) / 1000;
      const recoverySeconds = (performance.now() - killedAt) / 1000;
      // The killed worker's processors noticed their parent was gone and exited (the key lock is free).
      expect(sandboxes.length).toBeGreaterThan(0);
      await until("the killed worker's sandboxed processors to exit", () => sandboxes.every((pid) => !alive(pid)), 10_000);
      expect(await localExit, local.stderr.slice(-3000)).toBe(0);

      const distributed = summaryOf(coordinator);
      const reference = summaryOf(local);
      expect(distributed.status).toBe('succeeded');
      expect(distributed.stages.map((s) => [s.id, s.status])).toEqual(reference.stages.map((s) => [s.id, 'ran']));
      // Every stage's output holds the same bytes as the local run's (the model after each step,
      // the export), except the training history's timings and export.json (it names its folder).
      const varying = new Set(['history.json', 'export.json']);
      for (const [i, stage] of distributed.stages.entries()) {
        const mine = entryOf(shared, stage.key).files;
        const theirs = entryOf(dir.path('local'), reference.stages[i].key).files;
        const bytes = (files: Record<string, { sha256: string }>) => Object.fromEntries(Object.entries(files).filter(([rel]) => !varying.has(rel)).map(([rel, f]) => [rel, f.sha256]));
        expect(bytes(mine), stage.id).toEqual(bytes(theirs));
      }
      const evaluate = (s: typeof reference) => s.stages.find((x) => x.id === 'evaluate')!.metrics;
      expect(evaluate(distributed)).toEqual(evaluate(reference));
      expect(distributed.backend).not.toMatch(/^none/);

      // The stalled fine-tune ran again on the survivor, and both workers' lines reached the run log.
      expect(survivor.stderr).toMatch(/ fine-tune \w+ started/);
      const log = runLog(shared, runId);
      const fineTuneWorkers = new Set(log.filter((l) => l.stage === 'fine-tune' && l.worker).map((l) => l.worker));
      expect(fineTuneWorkers).toEqual(new Set([victimId, `${os.hostname()}:${survivor.child.pid}`]));
      expect(log.filter((l) => l.msg === 'job completed').length).toBe(reference.stages.length);
      const resumed = distributed.stages.find((s) => s.id === 'fine-tune')!.metrics.resumed_from_epoch;
      console.log(`demo: local ${localSeconds.toFixed(1)} s; two workers (at the same time) ${distributedSeconds.toFixed(1)} s, of which ${recoverySeconds.toFixed(1)} s after the SIGKILL; fine-tune resumed from epoch ${resumed ?? '(none: killed before its first checkpoint)'}`);
    } finally {
      await Promise.all([a, b].map(stopWorker));
      await local.exited;
    }
  });

  it('a worker refuses a job whose stage key it computes differently (version skew): no retry, dependents skipped', { timeout: 60_000 }, async () => {
    const file = dir.write('skew/pipeline.yaml', `name: skew\nseed: 1\nstages:\n  ingest:\n    uses: ingest\n    with: { path: ${path.join(root, 'data/fashion-target')} }\n  preprocess:\n    uses: preprocess\n    needs: [ingest]\n    with: { size: [28, 28], channels: 1 }\n`);
    const store = dir.path('skew/artifacts');
    const coordinator = cli(['run', file, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', store, '--json']);
    const queue = new Queue('pipeline-io', { connection: { host: '127.0.0.1', port: redis.port } });
    try {
      const job = await until('the ingest job to be queued', async () => (await queue.getJobs(['waiting', 'prioritized'])).find((j) => j.data.file === file));
      // The worker's checkout differs from the coordinator's (another seed): another key.
      writeFileSync(file, readFileSync(file, 'utf8').replace('seed: 1', 'seed: 2'));
      const worker = await startWorker(redis.url, store, ['--queue', 'io']);
      try {
      expect(await coordinator.exited).toBe(1);
      const summary = summaryOf(coordinator);
      expect(summary.stages.map((s) => [s.id, s.status])).toEqual([['ingest', 'failed'], ['preprocess', 'skipped']]);
      expect(summary.stages[0].error!.code).toBe('version_skew');
      expect(summary.stages[0].error!.message).toMatch(/has the key \w+… on worker .* but \w+… on the coordinator/);
      const failed = (await queue.getJob(job.id!))!;
      expect(await failed.getState()).toBe('failed');
      expect(failed.attemptsMade).toBe(1); // UnrecoverableError: not retried
      } finally {
        await stopWorker(worker);
      }
    } finally {
      await queue.close();
    }
  });

  it('two coordinators that need the same stage share one job (job id = cache key)', { timeout: 60_000 }, async () => {
    const file = dir.write('dup/pipeline.yaml', `name: dup\nseed: 3\nstages:\n  ingest:\n    uses: ingest\n    with: { path: ${path.join(root, 'data/fashion-target')} }\n`);
    const store = dir.path('dup/artifacts');
    const queue = new Queue('pipeline-io', { connection: { host: '127.0.0.1', port: redis.port } });
    try {
      const first = cli(['run', file, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', store, '--json']);
      const second = cli(['run', file, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', store, '--json']);
      const mine = async () => (await queue.getJobs(['waiting', 'prioritized'])).filter((j) => j.data.file === file);
      await until('both coordinators to queue', async () => first.stderr.includes('▶ ingest') && second.stderr.includes('▶ ingest') && (await mine()).length > 0);
      await new Promise((r) => setTimeout(r, 300)); // a second job, if there were one, would show now
      expect((await mine()).length).toBe(1);
      const worker = await startWorker(redis.url, store, ['--queue', 'io']);
      try {
      expect(await first.exited, first.stderr).toBe(0);
      expect(await second.exited, second.stderr).toBe(0);
      const [a, b] = [summaryOf(first), summaryOf(second)];
      expect(a.stages[0].key).toBe(b.stages[0].key);
      expect(worker.stderr.match(/ ingest \w+ started/g)).toHaveLength(1);
      } finally {
        await stopWorker(worker);
      }
    } finally {
      await queue.close();
    }
  });
  it('a transient failure (the remote cache does not answer) is retried 3 times with exponential backoff, then fails the stage', { timeout: 60_000 }, async () => {
    const file = dir.write('retry/pipeline.yaml', `name: retry\nseed: 4\nstages:\n  ingest:\n    uses: ingest\n    with: { path: ${path.join(root, 'data/fashion-target')} }\n`);
    const store = dir.path('retry/artifacts');
    // An S3 endpoint where nothing listens: every pull is remote_unreachable.
    const env = { AWS_ENDPOINT_URL: 'http://127.0.0.1:9', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' };
    const worker = await startWorker(redis.url, dir.path('retry/worker'), ['--queue', 'io', '--remote', 's3://nowhere/cache'], env);
    try {
      const t0 = performance.now();
      const coordinator = cli(['run', file, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', store, '--json']);
      expect(await coordinator.exited).toBe(1);
      const seconds = (performance.now() - t0) / 1000;
      const [ingest] = summaryOf(coordinator).stages;
      expect(ingest.status).toBe('failed');
      expect(ingest.error!.code).toBe('remote_unreachable');
      expect(ingest.error!.message).toMatch(/after 3 attempt\(s\)\)$/);
      expect(worker.stderr.match(/ ingest \w+ started \(attempt \d\)/g)).toEqual([' ingest ' + ingest.key.slice(0, 12) + ' started (attempt 1)', ' ingest ' + ingest.key.slice(0, 12) + ' started (attempt 2)', ' ingest ' + ingest.key.slice(0, 12) + ' started (attempt 3)']);
      expect(seconds).toBeGreaterThan(3); // waited 1 s, then 2 s between the tries
    } finally {
      await stopWorker(worker);
    }
  });

  it('a sweep where two branches fail their gate: the worker runs select on the other two and lists the failed ones', { timeout: 180_000 }, async () => {
    const file = dir.write('gated/pipeline.yaml', gatedSweep(root, dir.path('gated/export')));
    const store = dir.path('gated/artifacts');
    const worker = await startWorker(redis.url, store);
    try {
      const coordinator = cli(['run', file, '--executor', 'bullmq', '--redis', redis.url, '--artifacts', store, '--json']);
      expect(await coordinator.exited, coordinator.stderr.slice(-3000)).toBe(1);
      const summary = summaryOf(coordinator);
      const byId = new Map(summary.stages.map((s) => [s.id, s]));
      expect(summary.status).toBe('failed');
      expect(['evaluate-blocks-1-lr-10', 'evaluate-blocks-2-lr-10'].map((id) => [byId.get(id)!.status, byId.get(id)!.error?.code])).toEqual([['failed', 'gate_failed'], ['failed', 'gate_failed']]);
      const select = byId.get('select')!;
      expect(select.status).toBe('ran');
      expect(select.metrics).toMatchObject({ branches: 4, passed: 2 });
      expect(String(select.metrics.chosen)).toMatch(/^evaluate-blocks-[12]-lr-3e-4$/);
      // computed on the worker, from the job's failedBranches
      expect((select.metrics.failed as { id: string; code: string }[]).map((f) => [f.id, f.code])).toEqual([['evaluate-blocks-1-lr-10', 'gate_failed'], ['evaluate-blocks-2-lr-10', 'gate_failed']]);
      expect(worker.stderr).toMatch(/ select \w+ started/);
      expect(byId.get('export')!.status).toBe('ran');
    } finally {
      await stopWorker(worker);
    }
  });
});
