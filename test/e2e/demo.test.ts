/**
 * The embedded demo as a user runs it from the repository root: the built CLI runs
 * pipelines/two-phase-finetune.yaml (every stage kind of the recipe) on the committed base
 * model and target data, passes its accuracy gate, and a rerun takes every stage from the cache.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const bin = path.join(root, 'bin/pipeline.js');
const KINDS = ['ingest', 'preprocess', 'load-base', 'freeze', 'train-head', 'unfreeze', 'fine-tune', 'prune', 'evaluate', 'export'];

interface Summary {
  status: string;
  stages: { id: string; uses: string; status: string; metrics?: Record<string, unknown> }[];
}

let dir: TestDir;
beforeAll(() => {
  dir = testdir();
});
afterAll(() => dir.cleanup());

function run() {
  const t0 = performance.now();
  const result = spawnSync(process.execPath, [bin, 'run', 'pipelines/two-phase-finetune.yaml', '--json', '--artifacts', dir.path('artifacts')], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, CI: 'true' },
    timeout: 170_000,
  });
  const seconds = (performance.now() - t0) / 1000;
  expect(result.status, result.stderr.slice(-4000)).toBe(0);
  return { summary: JSON.parse(result.stdout) as Summary, seconds };
}

describe('pipelines/two-phase-finetune.yaml (the embedded demo)', () => {
  it('runs every stage kind, passes the 0.85 accuracy gate, and reruns all cached', { timeout: 240_000 }, () => {
    const cold = run();
    expect(cold.summary.status).toBe('succeeded');
    expect([...new Set(cold.summary.stages.map((s) => s.uses))].sort()).toEqual([...KINDS].sort());
    for (const stage of cold.summary.stages) expect(stage.status, stage.id).toBe('ran');
    const evaluate = cold.summary.stages.find((s) => s.uses === 'evaluate')!;
    expect(evaluate.metrics?.accuracy).toBeGreaterThanOrEqual(0.85);

    const warm = run();
    expect(warm.summary.status).toBe('succeeded');
    for (const stage of warm.summary.stages) expect(stage.status, stage.id).toBe('cached');
    expect(warm.summary.stages.find((s) => s.uses === 'evaluate')!.metrics).toEqual(evaluate.metrics);
    expect(warm.seconds).toBeLessThan(10); // < 3 s on an idle box; generous for a loaded CI runner
  });
});
