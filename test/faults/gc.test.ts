/**
 * gc is safe: it keeps the newest N runs *per pipeline*, counts only runs whose summary is
 * readable, keeps what a killed run used and its checkpoints (work/) so it can resume, and
 * `--dry-run` only lists.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { runPipeline } from '../../src/runtime/run.js';
import { calls, fakeRegistry } from '../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { startCli, waitFor } from './helpers.js';

const pipeline = (name: string, extra = '') => `name: ${name}
stages:
  src: { uses: source, with: { value: 3 } }
  slow: { uses: transform, needs: [src]${extra} }
`;

let dir: TestDir;
beforeEach(() => {
  calls.length = 0;
  dir = testdir({ 'a.yaml': pipeline('alpha'), 'b.yaml': pipeline('beta', ', with: { factor: 9 }') });
});
afterEach(() => dir.cleanup());

const run = (file: string, overrides: string[] = []) => runPipeline({ file: dir.path(file), registry: fakeRegistry, artifacts: dir.path('artifacts'), overrides });
async function cli(...args: string[]) {
  let stdout = '';
  let stderr = '';
  const status = await main([...args, '--artifacts', dir.path('artifacts')], { registry: fakeRegistry, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), env: {}, isTTY: false });
  return { status, stdout, stderr };
}
const cache = () => readdirSync(dir.path('artifacts/cache')).sort();

it('keeps the newest N runs per pipeline; --dry-run lists and removes nothing', async () => {
  const b = await run('b.yaml');
  await run('a.yaml', ['stages.slow.with.factor=4']);
  const a = await run('a.yaml', ['stages.slow.with.factor=5']);
  const wanted = new Set([...a.stages, ...b.stages].map((s) => s.key));
  const before = cache();
  const dry = await cli('gc', '--keep', '1', '--dry-run', '--json');
  expect(dry.status).toBe(0);
  const result = JSON.parse(dry.stdout);
  expect(result.dryRun).toBe(true);
  expect(result.removed).toHaveLength(1); // alpha's factor-4 entry; beta's only run is kept although older
  expect(cache()).toEqual(before);
  expect((await cli('gc', '--keep', '1')).status).toBe(0);
  expect(cache()).toEqual([...wanted].sort());
});

it('runs whose summary is unreadable count for nothing: the newest readable ones are kept', async () => {
  const good = await run('a.yaml');
  for (const factor of [6, 7, 8]) {
    const bad = await run('a.yaml', [`stages.slow.with.factor=${factor}`]);
    writeFileSync(dir.path('artifacts/runs', bad.run, 'summary.json'), '{"stages":{}}');
    writeFileSync(dir.path('artifacts/runs', bad.run, 'plan.json'), 'garbage');
  }
  const out = await cli('gc', '--keep', '1');
  expect(out.status).toBe(0);
  expect(out.stderr.match(/note: run .* ignored/g)).toHaveLength(3);
  expect(cache()).toEqual(good.stages.map((s) => s.key).sort());
  calls.length = 0;
  expect((await run('a.yaml')).stages.map((s) => s.status)).toEqual(['cached', 'cached']);
});

it('a killed run keeps what it used and its checkpoints, until a later run of its pipeline finishes', async () => {
  await run('a.yaml', ['stages.slow.with.factor=4']);
  const env = { FAKE_CALLS: dir.path('calls.txt') };
  const child = startCli(dir.root, ['run', 'a.yaml', '--artifacts', dir.path('artifacts'), '--set', 'stages.src.with.value=5', '--set', 'stages.slow.with.sleepMs=600000'], env);
  await waitFor(() => existsSync(dir.path('calls.txt')) && readFileSync(dir.path('calls.txt'), 'utf8').includes('slow'));
  child.kill('SIGKILL');
  await child.exited;
  // The killed stage's work dir, with a checkpoint in it, as a training stage leaves it.
  const work = readdirSync(dir.path('artifacts/work'));
  expect(work).toHaveLength(1);
  writeFileSync(dir.path('artifacts/work', work[0], 'checkpoint.json'), '{}');
  const killedSource = readdirSync(dir.path('artifacts/cache')).length;
  expect(killedSource).toBe(3); // the first run's two entries + the killed run's finished source
  const gc = await cli('gc', '--keep', '1', '--json');
  expect(gc.status, gc.stderr).toBe(0);
  expect(JSON.parse(gc.stdout).removed).toEqual([]);
  expect(existsSync(dir.path('artifacts/work', work[0], 'checkpoint.json'))).toBe(true);
  // A later run of the pipeline finishes: the killed run is history, its checkpoints can go.
  mkdirSync(dir.path('artifacts/work', 'unrelated'), { recursive: true });
  await run('a.yaml', ['stages.src.with.value=5']);
  const after = JSON.parse((await cli('gc', '--keep', '1', '--json')).stdout);
  expect(after.removedWork.sort()).toEqual([work[0], 'unrelated'].sort());
  expect(existsSync(path.join(dir.path('artifacts/work'), work[0]))).toBe(false);
  expect(cache()).toHaveLength(2);
});
