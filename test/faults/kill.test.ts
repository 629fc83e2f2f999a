/**
 * kill -9 at random points, the killed run left a zombie by a parent that does not reap it
 * (`sh` forks the run, then execs `sleep`): every rerun, started while the zombie still holds
 * its locks, succeeds at once with the right result; nothing half-written is reused.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runPipeline } from '../../src/runtime/run.js';
import { fakeRegistry } from '../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { fakeCli, procState, sleep, waitFor } from './helpers.js';

let dir: TestDir;
beforeAll(() => {
  dir = testdir({
    'p.yaml': `name: killme
stages:
  first: { uses: source, with: { value: 2 } }
  slow: { uses: transform, needs: [first], with: { partial: true, sleepMs: 400, memo: true } }
  after: { uses: transform, needs: [slow], with: { factor: 3 } }
`,
  });
});
afterAll(() => dir.cleanup());

const KILLS = 20;
/** Independent stores killed side by side (one per core): the kills' start-ups overlap. */
const LANES = 2;

it(`${KILLS} SIGKILLs at random points, the run a zombie while it is rerun: every rerun succeeds`, async () => {
  const landed: Record<string, number> = {};
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const runLane = async (lane: number) => {
    const registered = new Set<string>();
    const artifacts = dir.path(`artifacts-${lane}`);
    const runs = path.join(artifacts, 'locks/runs');
    for (let i = lane; i < KILLS; i += LANES) {
      const value = 100 + i; // new keys each round, so every kill lands in real work
      const calls = dir.path(`calls.${i}.txt`);
      const command = [process.execPath, ...fakeCli('run', 'p.yaml', '--artifacts', artifacts, '--set', `stages.first.with.value=${value}`)].map(quote).join(' ');
      const parent = spawn('sh', ['-c', `${command} >/dev/null 2>&1 & echo $!; exec sleep 60`], { cwd: dir.root, env: { ...process.env, FAKE_CALLS: calls, PIPELINE_QUIET: '1' }, stdio: ['ignore', 'pipe', 'ignore'] });
      const pid = await new Promise<number>((resolve) => parent.stdout!.once('data', (c) => resolve(Number(String(c).trim()))));
      try {
        // From the moment the run registered in the store, a random point in its ~0.6 s of work.
        await waitFor(() => existsSync(runs) && readdirSync(runs).some((n) => n.endsWith('.json') && !registered.has(n)), 30_000, 5);
        for (const n of readdirSync(runs)) registered.add(n);
        await sleep(Math.random() * 700);
        const where = existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n').join('>') : 'planning';
        process.kill(pid, 'SIGKILL');
        for (let t = 0; t < 100 && procState(pid) !== 'Z' && procState(pid) !== undefined; t++) await sleep(5);
        landed[where] = (landed[where] ?? 0) + 1;
        expect(['Z', undefined]).toContain(procState(pid)); // a zombie: nobody reaps it yet
        const t0 = Date.now();
        const summary = await runPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts, overrides: [`stages.first.with.value=${value}`, 'stages.slow.with.sleepMs=0'] });
        expect(summary.status, `round ${i}, killed at ${where}`).toBe('succeeded');
        expect(summary.stages.map((s) => s.metrics)).toEqual([{ value }, { value: value * 2 }, { value: value * 6 }]);
        expect(Date.now() - t0).toBeLessThan(5000);
      } finally {
        parent.kill('SIGKILL');
      }
    }
  };
  await Promise.all(Array.from({ length: LANES }, (_, lane) => runLane(lane)));
  console.log(`kills landed (stages started so far -> count): ${JSON.stringify(landed)}`);
});
