/**
 * scripts/retrain.sh as CI runs it (and a user locally): twice on the demo with one temp artifact
 * store. The first run executes every stage, the second takes every stage from the cache; both
 * write the summary, the Markdown job summary with the metrics diff (to $GITHUB_STEP_SUMMARY)
 * and the export; the report only where `pipeline report` exists.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const script = path.join(root, 'scripts/retrain.sh');

interface Summary {
  run: string;
  status: string;
  previous?: string;
  stages: { id: string; status: string }[];
}

let dir: TestDir;
beforeAll(() => {
  dir = testdir();
});
afterAll(() => dir.cleanup());

function retrain(out: string) {
  const result = spawnSync('bash', [script], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, CI: 'true', ARTIFACTS: dir.path('store'), OUT: dir.path(out), GITHUB_STEP_SUMMARY: dir.path('step-summary.md') },
    timeout: 170_000,
  });
  expect(result.status, result.stderr.slice(-4000)).toBe(0);
  const summary = JSON.parse(readFileSync(dir.path(out, 'summary.json'), 'utf8')) as Summary;
  return { summary, stderr: result.stderr, markdown: readFileSync(dir.path(out, 'summary.md'), 'utf8') };
}

describe('scripts/retrain.sh', () => {
  it('runs the demo, then reuses the whole cache; both write the job summary with the metrics diff and the export', { timeout: 400_000 }, () => {
    const first = retrain('out-1');
    expect(first.summary.status).toBe('succeeded');
    for (const stage of first.summary.stages) expect(stage.status, stage.id).toBe('ran');
    expect(first.markdown).toContain('## ✅ Retrain two-phase-finetune: succeeded');
    expect(first.markdown).toContain('0 of 10 stages from the cache');
    expect(first.markdown).toMatch(/\| evaluate \| ran \| [\d.]+ \| records=300 accuracy=0\.\d+/);
    expect(first.markdown).toContain('First run of this pipeline in this store: nothing to compare with.');
    expect(existsSync(dir.path('out-1/export/model.json'))).toBe(true);
    expect(existsSync(dir.path('out-1/export/_entry.json'))).toBe(false);

    const second = retrain('out-2');
    expect(second.summary.status).toBe('succeeded');
    for (const stage of second.summary.stages) expect(stage.status, stage.id).toBe('cached');
    expect(second.summary.previous).toBe(first.summary.run);
    expect(second.markdown).toContain('10 of 10 stages from the cache');
    expect(second.markdown).toContain(`No metric changed since run \`${first.summary.run}\`.`);
    expect(readFileSync(dir.path('out-2/export/weights.bin'))).toEqual(readFileSync(dir.path('out-1/export/weights.bin')));

    // $GITHUB_STEP_SUMMARY gets each run's section appended.
    expect(readFileSync(dir.path('step-summary.md'), 'utf8')).toBe(first.markdown + second.markdown);

    // The report comes along where this CLI has `pipeline report`; the script works without it.
    const hasReport = spawnSync(process.execPath, [path.join(root, 'bin/pipeline.js'), 'report', '--help'], { encoding: 'utf8' }).status === 0;
    expect(existsSync(dir.path('out-2/report')), `pipeline report ${hasReport ? 'exists' : 'is absent'}`).toBe(hasReport);
  });
});
