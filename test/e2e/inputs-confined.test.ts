/**
 * Inputs confined (issue 10.5), through the built CLI: ingest of a pseudo-filesystem or a tree
 * holding a FIFO never hangs `validate`/`plan`, and a NUL byte anywhere in a pipeline file is
 * exit 2 with its place.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const bin = path.resolve(import.meta.dirname, '../../bin/pipeline.js');
let dir: TestDir;
beforeAll(() => {
  dir = testdir({ 'images/a/1.png': '', 'images/b/2.png': '' });
});
afterAll(() => dir.cleanup());

function cli(args: string[]) {
  const t0 = performance.now();
  // timeout: a hang fails the test instead of stalling the suite.
  const result = spawnSync(process.execPath, [bin, ...args], { cwd: dir.root, encoding: 'utf8', timeout: 20_000, env: { ...process.env, CI: 'true' } });
  return { ...result, ms: performance.now() - t0 };
}

const ingestOf = (where: string) => `name: confined\nstages:\n  data:\n    uses: ingest\n    with: { path: ${where} }\n`;

describe.skipIf(process.platform !== 'linux')('ingest refuses pseudo-filesystems and special files', () => {
  for (const command of ['validate', 'plan']) {
    it(`${command} of ingest path: /proc/self is exit 2, quickly`, () => {
      dir.write('proc.yaml', ingestOf('/proc/self'));
      const result = cli([command, 'proc.yaml']);
      expect(result.signal).toBeNull();
      expect(result.status).toBe(2);
      expect(result.stderr).toMatch(/\/proc\/(self|\d+) is under \/proc, a kernel pseudo-filesystem/);
      expect(result.stderr).toMatch(/proc\.yaml:5:/);
      expect(result.ms).toBeLessThan(10_000);
    });
  }

  it('a manifest that is a FIFO is exit 2 (plan never opens it)', () => {
    execFileSync('mkfifo', [dir.path('labels.csv')]);
    dir.write('fifo-manifest.yaml', 'name: confined\nstages:\n  data:\n    uses: ingest\n    with: { manifest: labels.csv }\n');
    const result = cli(['plan', 'fifo-manifest.yaml']);
    expect(result.signal).toBeNull();
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(/labels\.csv is a FIFO, not a CSV\/JSONL manifest/);
  });

  it('a FIFO inside the dataset tree does not hang plan', () => {
    execFileSync('mkfifo', [dir.path('images/a/pipe.png')]);
    dir.write('fifo-tree.yaml', ingestOf('images'));
    const result = cli(['plan', 'fifo-tree.yaml']);
    expect(result.signal).toBeNull();
    expect(result.status).toBe(0);
  });
});

describe('pipeline files', () => {
  it('a NUL byte after the first 10 KiB is exit 2 with file:line:col', () => {
    const padding = Array.from({ length: 200 }, (_, i) => `# comment line ${i} ${'x'.repeat(50)}`).join('\n');
    expect(padding.length).toBeGreaterThan(10 * 1024);
    dir.write('nul.yaml', `${padding}\n${ingestOf('images')}    # ab\0cd\n`);
    const result = cli(['validate', 'nul.yaml']);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('nul.yaml:206:9');
    expect(result.stderr).toMatch(/NUL byte/);
  });
});
