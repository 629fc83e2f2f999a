/**
 * Locks never block on the dead and never admit two holders: zombies, reused pids and expired
 * leases count as dead; a live holder refuses (exit 3) or is waited for, with a timeout and
 * obeying SIGINT/SIGTERM; a lock path that is not a file is a clear error; 4 contenders over
 * 10 rounds, each round starting with a dead holder to take over, never overlap.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { acquireLock, inspectLock, isHolderAlive } from '../../src/runtime/lock.js';
import { ArtifactStore } from '../../src/runtime/store.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { deadPid, host, makeZombie, procStartTicks, runCli, startCli, tsNode, waitFor } from './helpers.js';

let dir: TestDir;
beforeEach(() => {
  dir = testdir({ 'p.yaml': 'name: p\nstages:\n  a: { uses: source, with: { value: 2 } }\n' });
});
afterEach(() => dir.cleanup());

const holder = (pid: number, extra: Record<string, unknown> = {}) => JSON.stringify({ pid, host, token: `t${Math.random()}`, since: 'then', ...extra });

describe('who counts as alive', () => {
  it('a zombie, a reused pid and an expired lease are dead; a live process with its start time is alive', async () => {
    const zombie = await makeZombie();
    try {
      expect(isHolderAlive({ pid: zombie.pid, host, startTicks: zombie.startTicks }, Date.now())).toBe(false);
    } finally {
      zombie.end();
    }
    const mine = procStartTicks(process.pid)!;
    expect(isHolderAlive({ pid: process.pid, host, startTicks: mine }, Date.now())).toBe(true);
    expect(isHolderAlive({ pid: process.pid, host, startTicks: mine + 1 }, Date.now())).toBe(false); // pid reused
    expect(isHolderAlive({ pid: 1, host, startTicks: 999_999_999 }, Date.now())).toBe(false); // live, unrelated
    expect(isHolderAlive({ pid: deadPid, host }, Date.now())).toBe(false);
    expect(isHolderAlive({ pid: 1, host: 'elsewhere' }, Date.now() - 1000, 30_000)).toBe(true); // fresh lease
    expect(isHolderAlive({ pid: 1, host: 'elsewhere' }, Date.now() - 31_000, 30_000)).toBe(false); // expired
  });

  it('takes over a lock that names a zombie, a reused pid or an unreadable record at once', async () => {
    const zombie = await makeZombie();
    const lock = dir.path('locks/x');
    mkdirSync(lock, { recursive: true });
    try {
      const records = [
        holder(zombie.pid, { startTicks: zombie.startTicks }),
        holder(process.pid, { startTicks: procStartTicks(process.pid)! + 7 }),
        holder(deadPid),
        '', // a damaged record: generation files are linked in complete, so nobody is writing it
        holder(1, { host: 'elsewhere' }),
      ];
      let generation = 10;
      for (const record of records) {
        writeFileSync(path.join(lock, String(++generation)), record);
        if (record.includes('elsewhere')) utimesSync(path.join(lock, String(generation)), new Date(0), new Date(0));
        const t0 = Date.now();
        const held = await acquireLock(lock);
        expect(Date.now() - t0).toBeLessThan(2000);
        expect(held.file).toBe(path.join(lock, String(++generation)));
        await held.release();
      }
    } finally {
      zombie.end();
    }
  });

  it('a live holder: refused without wait, waited for with wait; the wait has a timeout and obeys an abort', async () => {
    const lock = dir.path('locks/y');
    const first = await acquireLock(lock);
    await expect(acquireLock(lock)).rejects.toMatchObject({ code: 'store_locked' });
    const t0 = Date.now();
    await expect(acquireLock(lock, { wait: true, timeoutMs: 300 })).rejects.toMatchObject({ code: 'lock_wait_timeout' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    await expect(acquireLock(lock, { wait: true, signal: controller.signal })).rejects.toMatchObject({ code: 'aborted' });
    setTimeout(() => void first.release(), 100);
    const second = await acquireLock(lock, { wait: true });
    expect(await second.held()).toBe(true);
    await second.release();
    expect((await inspectLock(lock)).alive).toBe(false);
  });

  it('another host: a fresh lease is alive and waited for, until it runs out; a holder keeps its lease fresh', async () => {
    const lock = dir.path('locks/remote');
    mkdirSync(lock, { recursive: true });
    writeFileSync(path.join(lock, '1'), holder(1, { host: 'elsewhere' }));
    await expect(acquireLock(lock, { staleMs: 400 })).rejects.toMatchObject({ code: 'store_locked' });
    const t0 = Date.now();
    const held = await acquireLock(lock, { wait: true, staleMs: 400, heartbeatMs: 50 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
    utimesSync(held.file, new Date(0), new Date(0));
    await new Promise((r) => setTimeout(r, 250));
    expect(Date.now() - statSync(held.file).mtimeMs).toBeLessThan(1000); // the heartbeat touched it
    await held.release();
  });

  it('a lock path that is a folder (or a file where the lock folder belongs) is a clear error', async () => {
    mkdirSync(dir.path('locks/z/3'), { recursive: true });
    await expect(acquireLock(dir.path('locks/z'))).rejects.toMatchObject({ code: 'store_lock_invalid', message: expect.stringContaining('remove it') });
    writeFileSync(dir.path('locks/file'), 'x');
    await expect(acquireLock(dir.path('locks/file'))).rejects.toMatchObject({ code: 'store_lock_invalid' });
  });
});

describe('the lock race', () => {
  it('4 contenders over 10 rounds, each round opening on a dead holder: never two holders', async () => {
    const lock = dir.path('race/lock');
    const log = dir.path('race/log.txt');
    mkdirSync(lock, { recursive: true });
    writeFileSync(log, '');
    const rounds = 10;
    const children = Array.from({ length: 4 }, () => spawn(process.execPath, tsNode('test/fixtures/lock-contender.ts', lock, log, String(rounds)), { stdio: 'ignore' }));
    const exited = children.map((c) => new Promise((r) => c.on('exit', r)));
    const zombie = await makeZombie();
    try {
      await waitFor(() => readdirSync(dir.path('race')).filter((n) => n.startsWith('ready.')).length === 4, 60_000);
      for (let round = 0; round < rounds; round++) {
        // Plant a dead holder as the newest generation: all four race to take it over.
        const names = readdirSync(lock).filter((n) => /^\d+$/.test(n)).map(Number);
        const next = Math.max(0, ...names) + 1;
        const dead = [holder(zombie.pid, { startTicks: zombie.startTicks }), holder(deadPid), holder(process.pid, { startTicks: 1 })][round % 3];
        writeFileSync(path.join(lock, String(next)), dead);
        writeFileSync(dir.path(`race/go.${round}`), '');
        await waitFor(() => readdirSync(dir.path('race')).filter((n) => n.startsWith(`done.${round}.`)).length === 4, 30_000, 5);
      }
    } finally {
      zombie.end();
      await Promise.all(exited);
    }
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(4 * rounds * 2);
    for (let i = 0; i < lines.length; i += 2) {
      const [enter, pid] = lines[i].split(' ');
      expect(enter, `line ${i}: ${lines[i]}`).toBe('enter');
      expect(lines[i + 1], `line ${i + 1} after ${lines[i]}`).toMatch(new RegExp(`^exit ${pid} `));
    }
  });
});

describe('the CLI', () => {
  it('exit 2 with what to remove when a lock path is a folder', () => {
    mkdirSync(dir.path('artifacts/locks/store/1'), { recursive: true });
    const result = runCli(dir.root, ['run', 'p.yaml']);
    expect(result.status, result.stderr).toBe(2);
    expect(result.stderr).toContain("rm -r '");
    expect(result.stderr).toContain('locks/store/1');
  });

  it('gc while a run is live: exit 3; --wait-timeout gives up with exit 3; --wait obeys SIGTERM (exit 130)', async () => {
    const store = new ArtifactStore(dir.path('artifacts'));
    const leave = await store.enterRun('20260101-000000000-live');
    try {
      expect(runCli(dir.root, ['gc']).status).toBe(3);
      const t0 = Date.now();
      const timed = runCli(dir.root, ['gc', '--wait', '--wait-timeout', '0.5']);
      expect(timed.status, timed.stderr).toBe(3);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
      const waiting = startCli(dir.root, ['gc', '--wait']);
      await waitFor(() => waiting.output().stderr.includes('waiting for'));
      const t1 = Date.now();
      waiting.kill('SIGTERM');
      expect(await waiting.exited).toBe(130);
      expect(Date.now() - t1).toBeLessThan(3000);
    } finally {
      await leave();
    }
    expect(runCli(dir.root, ['gc']).status).toBe(0);
  });

  it('a run waiting for gc obeys SIGINT', async () => {
    const store = new ArtifactStore(dir.path('artifacts'));
    const release = await store.lockStore();
    try {
      expect(runCli(dir.root, ['run', 'p.yaml']).status).toBe(3);
      const waiting = startCli(dir.root, ['run', 'p.yaml', '--wait']);
      await waitFor(() => waiting.output().stderr.includes('waiting for'));
      waiting.kill('SIGINT');
      expect(await waiting.exited).toBe(130);
    } finally {
      await release();
    }
    expect(existsSync(dir.path('artifacts/locks/runs')) ? readdirSync(dir.path('artifacts/locks/runs')) : []).toEqual([]);
  });
});

describe('a damaged key lock', () => {
  it('fails only the stage that needs it, naming what to remove; the others finish', async () => {
    const { planPipeline, runPipeline } = await import('../../src/runtime/run.js');
    const { fakeRegistry } = await import('../fixtures/fake-stages.js');
    dir.write('q.yaml', 'name: q\nstages:\n  a: { uses: source, with: { value: 2 } }\n  b: { uses: source, with: { value: 3 } }\n');
    const plan = await planPipeline({ file: dir.path('q.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts') });
    mkdirSync(dir.path('artifacts/locks/keys', plan.stages[0].key, '1'), { recursive: true });
    const summary = await runPipeline({ file: dir.path('q.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts') });
    expect(summary.stages.map((s) => s.status)).toEqual(['failed', 'ran']);
    expect(summary.stages[0].error).toMatchObject({ code: 'store_lock_invalid', message: expect.stringContaining('remove it') });
  });
});
