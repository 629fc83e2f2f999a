/**
 * `kill -9` during a stage, then rerun: finished stages are cached, the killed one re-runs,
 * and nothing half-written is reused. The CLI runs in a child process with fake stages.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
// `--import tsx` keeps one process (the tsx CLI would fork a child that SIGKILL would orphan).
const cli = ['--import', pathToFileURL(path.join(root, 'node_modules/tsx/dist/loader.mjs')).href, path.join(root, 'test/fixtures/fake-cli.ts')];

let dir: TestDir;
beforeEach(() => {
  dir = testdir({
    'p.yaml': `name: killme
stages:
  first: { uses: source, with: { value: 2 } }
  slow:
    uses: transform
    needs: [first]
    with: { partial: true, sleepMs: 600000 }
  after: { uses: transform, needs: [slow] }
`,
  });
});
afterEach(() => dir.cleanup());

it('resumes after kill -9: finished stages cached, the killed one re-runs, no half entry reused', async () => {
  const env = { ...process.env, FAKE_CALLS: dir.path('calls.txt') };
  const child = spawn(process.execPath, [...cli, 'run', 'p.yaml', '--json'], { cwd: dir.root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Wait until the slow stage has started (and written half a file), then kill -9.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const calls = existsSync(dir.path('calls.txt')) ? readFileSync(dir.path('calls.txt'), 'utf8') : '';
    if (calls.includes('slow')) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 200));
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  expect(readFileSync(dir.path('calls.txt'), 'utf8').trim().split('\n')).toEqual(['first', 'slow']);
  // The half-written entry exists only under tmp/, never under cache/.
  expect(readdirSync(dir.path('artifacts/tmp')).length).toBe(1);
  expect(readdirSync(dir.path('artifacts/cache')).length).toBe(1);
  // The dead run's lock is stale and is taken over.
  const rerun = spawnSync(process.execPath, [...cli, 'run', 'p.yaml', '--json', '--set', 'stages.slow.with.sleepMs=0'], { cwd: dir.root, env, encoding: 'utf8' });
  expect(rerun.status, rerun.stderr).toBe(0);
  const summary = JSON.parse(rerun.stdout);
  expect(summary.stages.map((s: { status: string }) => s.status)).toEqual(['cached', 'ran', 'ran']);
  expect(summary.stages[2].metrics).toEqual({ value: 8 });
  expect(readFileSync(dir.path('calls.txt'), 'utf8').trim().split('\n')).toEqual(['first', 'slow', 'slow', 'after']);
});

it('SIGTERM stops cleanly: exit 130, finished stages kept, the summary says interrupted', async () => {
  const env = { ...process.env, FAKE_CALLS: dir.path('calls.txt') };
  const child = spawn(process.execPath, [...cli, 'run', 'p.yaml', '--json'], { cwd: dir.root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !(existsSync(dir.path('calls.txt')) && readFileSync(dir.path('calls.txt'), 'utf8').includes('slow'))) await new Promise((r) => setTimeout(r, 50));
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.on('exit', r));
  expect(code).toBe(130);
  const summary = JSON.parse(stdout);
  expect(summary.status).toBe('interrupted');
  expect(summary.stages.map((s: { status: string }) => s.status)).toEqual(['ran', 'failed', 'skipped']);
  expect(existsSync(dir.path('artifacts/lock'))).toBe(false);
  const rerun = spawnSync(process.execPath, [...cli, 'run', 'p.yaml', '--json', '--set', 'stages.slow.with.sleepMs=0'], { cwd: dir.root, env, encoding: 'utf8' });
  expect(JSON.parse(rerun.stdout).stages.map((s: { status: string }) => s.status)).toEqual(['cached', 'ran', 'ran']);
});
