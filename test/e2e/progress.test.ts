/**
 * Progress of the built CLI on the demo when stderr is not a TTY: plain lines (with count,
 * percent, rate, ETA, and an end line) per long step on stderr — decode, the frozen pass, each
 * epoch's batches — and, under --json, nothing on stdout but the one summary object.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const bin = path.join(root, 'bin/pipeline.js');

let dir: TestDir;
beforeAll(() => {
  dir = testdir();
});
afterAll(() => dir.cleanup());

describe('progress without a TTY', () => {
  it('prints periodic plain lines per step on stderr and keeps stdout one JSON object', { timeout: 200_000 }, () => {
    const result = spawnSync(process.execPath, [bin, 'run', 'pipelines/two-phase-finetune.yaml', '--json', '--artifacts', dir.path('artifacts')], {
      cwd: root,
      encoding: 'utf8',
      // Interval 0: a line on every tick, so the short demo steps show theirs (default 5 s).
      env: { ...process.env, CI: 'true', PIPELINE_PROGRESS_INTERVAL: '0' },
      timeout: 170_000,
    });
    expect(result.status, result.stderr.slice(-4000)).toBe(0);
    const summary = JSON.parse(result.stdout);
    expect(summary.status).toBe('succeeded');
    expect(result.stdout.trim().split('\n')).toHaveLength(1);

    const stderr = result.stderr;
    expect(stderr).not.toMatch(/\x1b\[/); // no cursor control off a TTY
    expect(stderr).toMatch(/^ {2}preprocess decode 180\/360 \(50%\) [\d.]+\/s ETA [\d.]+s$/m);
    expect(stderr).toMatch(/^ {2}preprocess decode 360\/360 \(100%\) [\d.]+\/s in [\d.]+s$/m);
    expect(stderr).toMatch(/^ {2}train-head frozen pass \d+\/\d+ \(\d+%\) [\d.]+\/s (ETA|in) /m);
    // Each epoch's batches (with the running loss), then the epoch's own line.
    expect(stderr).toMatch(/^ {2}fine-tune epoch 3\/15 1\/4 \(25%\) [\d.]+\/s ETA [\d.]+s loss=\d\.\d{4}$/m);
    expect(stderr).toMatch(/^ {2}fine-tune epoch 3\/15 loss=\d\.\d{4} acc=/m);
    expect(stderr).toMatch(/^ {2}evaluate score val \d+\/\d+ \(100%\) [\d.]+\/s in /m);
  });
});
