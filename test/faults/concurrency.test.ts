/**
 * One store, many runs at once, no --wait: 4 runs of one pipeline and 2 of another all succeed,
 * and every key (stages and memo entries) is computed exactly once; the others wait for it and
 * reuse it. Child processes of the fake CLI, counted through FAKE_CALLS.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { startCli } from './helpers.js';

let dir: TestDir;
beforeEach(() => {
  dir = testdir({
    'a.yaml': `name: alpha
stages:
  src: { uses: source, with: { value: 3 } }
  slow: { uses: transform, needs: [src], with: { sleepMs: 300, memo: true } }
  after: { uses: transform, needs: [slow], with: { factor: 5 } }
`,
    // Another pipeline: the same seed and the same src stage (so the same key), then its own.
    'b.yaml': `name: beta
stages:
  src: { uses: source, with: { value: 3 } }
  other: { uses: transform, needs: [src], with: { factor: 7, sleepMs: 200 } }
`,
  });
});
afterEach(() => dir.cleanup());

it('4 runs of one pipeline and 2 of another share one store at once: all succeed, each key computed once', async () => {
  const env = { FAKE_CALLS: dir.path('calls.txt') };
  const runs = [...Array(4).fill('a.yaml'), ...Array(2).fill('b.yaml')].map((file) => startCli(dir.root, ['run', file, '--json'], env));
  const codes = await Promise.all(runs.map((r) => r.exited));
  codes.forEach((code, i) => expect(code, runs[i].output().stderr).toBe(0));
  const calls = readFileSync(dir.path('calls.txt'), 'utf8').trim().split('\n').sort();
  expect(calls).toEqual(['after', 'other', 'slow', 'slow:memo', 'src']);
  const summaries = runs.map((r) => JSON.parse(r.output().stdout));
  for (const summary of summaries) expect(summary.status).toBe('succeeded');
  const alpha = summaries.filter((s) => s.pipeline === 'alpha');
  // Every alpha run reports the same keys and metrics, whether it ran the stage or reused it.
  for (const summary of alpha) expect(summary.stages.map((s: { key: string; metrics: unknown }) => [s.key, s.metrics])).toEqual(alpha[0].stages.map((s: { key: string; metrics: unknown }) => [s.key, s.metrics]));
  expect(alpha[0].stages[2].metrics).toEqual({ value: 30 });
  expect(summaries.filter((s) => s.pipeline === 'beta')[0].stages[1].metrics).toEqual({ value: 21 });
  const ran = summaries.flatMap((s) => s.stages.filter((t: { status: string }) => t.status === 'ran').map((t: { id: string }) => t.id)).sort();
  expect(ran).toEqual(['after', 'other', 'slow', 'src']);
  const logs = summaries.map((s) => readFileSync(dir.path('artifacts/runs', s.run, 'log.jsonl'), 'utf8')).join('');
  console.log(`key waits: ${logs.split('waiting for another run computing this key').length - 1}`);
});
