/**
 * Metadata is data, never trusted: each way a store can be damaged, table-driven. A damaged
 * entry is a logged miss (recomputed, then healthy again); damaged records, stat caches, plans
 * and summaries are ignored or skipped with a note; nothing crashes `plan`, `run`, `status`,
 * `runs` or `gc`. (Damaged checkpoint.json: test/unit/ml/checkpoint-exact.test.ts; damaged lock
 * records: test/faults/lock.test.ts.)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { planPipeline, runPipeline } from '../../src/runtime/run.js';
import { calls, fakeRegistry } from '../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { main } from '../../src/cli.js';

const chain = `name: chain
stages:
  src: { uses: source, with: { value: 3 } }
  double: { uses: transform, needs: [src], with: { memo: true } }
  triple: { uses: transform, needs: [double], with: { factor: 3 } }
`;

let dir: TestDir;
beforeEach(() => {
  calls.length = 0;
  dir = testdir({ 'p.yaml': chain });
});
afterEach(() => dir.cleanup());

const options = () => ({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts') });
const run = () => runPipeline(options());
const plan = () => planPipeline(options());
/** The CLI in-process (the same code as the binary, without a child's start-up). */
async function cli(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const status = await main([...args, '--artifacts', dir.path('artifacts')], { registry: fakeRegistry, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), env: {}, isTTY: false });
  return { status, stdout, stderr };
}

/** Rewrites a file keeping its size and putting its mtime (and atime) back: only ctime moves. */
function flipKeepingMtime(file: string, from = '6', to = '7'): void {
  const before = statSync(file, { bigint: true });
  const reference = `${file}.times`;
  writeFileSync(reference, '');
  spawnSync('touch', ['-r', file, reference]); // nanosecond-exact copy of the times
  const bytes = readFileSync(file);
  const at = bytes.indexOf(from.charCodeAt(0));
  bytes[at] = to.charCodeAt(0);
  writeFileSync(file, bytes);
  spawnSync('touch', ['-r', reference, file]);
  rmSync(reference);
  const after = statSync(file, { bigint: true });
  expect(after.mtimeNs).toBe(before.mtimeNs);
  expect(after.size).toBe(before.size);
}

type Damage = (ctx: { entry: string; memo: string; key: string }) => void;
const entryCases: [string, Damage][] = [
  ['_entry.json is null', ({ entry }) => writeFileSync(path.join(entry, '_entry.json'), 'null')],
  ['_entry.json is truncated', ({ entry }) => writeFileSync(path.join(entry, '_entry.json'), readFileSync(path.join(entry, '_entry.json'), 'utf8').slice(0, 40))],
  ['_entry.json describes another key', ({ entry }) => rewriteMeta(entry, (m) => ({ ...m, key: 'f'.repeat(64) }))],
  ['the files map has a null entry', ({ entry }) => rewriteMeta(entry, (m) => ({ ...m, files: { ...(m.files as object), 'value.json': null } }))],
  ['the files map is not a map', ({ entry }) => rewriteMeta(entry, (m) => ({ ...m, files: 5 }))],
  ['a listed path escapes the entry', ({ entry }) => rewriteMeta(entry, (m) => ({ ...m, files: { ...(m.files as object), '../../../etc/passwd': { size: 1, sha256: '0'.repeat(64), mtimeMs: 0 } } }))],
  ['a file is truncated', ({ entry }) => writeFileSync(path.join(entry, 'value.json'), '{"va')],
  ['a byte flipped, mtime put back (same size)', ({ entry }) => flipKeepingMtime(path.join(entry, 'value.json'))],
  ['a file is missing', ({ entry }) => rmSync(path.join(entry, 'value.json'))],
  ['an extra file is in the entry', ({ entry }) => writeFileSync(path.join(entry, 'extra.bin'), 'x')],
  ['the entry is a file, not a folder', ({ entry }) => (rmSync(entry, { recursive: true }), writeFileSync(entry, 'x'))],
];

function rewriteMeta(entry: string, change: (meta: Record<string, unknown>) => unknown): void {
  const file = path.join(entry, '_entry.json');
  writeFileSync(file, JSON.stringify(change(JSON.parse(readFileSync(file, 'utf8')))));
}

describe('a damaged cache entry is a logged miss, recomputed, then healthy', () => {
  it.each(entryCases)('%s', async (name, damage) => {
    const first = await run();
    const key = first.stages[1].key;
    const entry = dir.path('artifacts/cache', key);
    damage({ entry, memo: '', key });
    calls.length = 0;
    const planned = await plan();
    expect(planned.stages[1].action).toBe('run');
    expect(planned.stages[1].reasons.join()).toMatch(/corrupt/);
    const second = await run();
    expect(second.status).toBe('succeeded');
    expect(second.stages.map((s) => s.metrics)).toEqual([{ value: 3 }, { value: 6 }, { value: 18 }]);
    expect(calls).toContain('double');
    expect(readFileSync(dir.path('artifacts/runs', second.run, 'log.jsonl'), 'utf8')).toMatch(/cache entry is corrupt/);
    expect((await plan()).stages.map((s) => s.action)).toEqual(['cached', 'cached', 'cached']);
  });
});

it('a memo entry (cached features) with a byte flipped and its mtime put back is recomputed, not used', async () => {
  const first = await run();
  const memoKey = (JSON.parse(readFileSync(dir.path('artifacts/cache', first.stages[1].key, '_entry.json'), 'utf8')).memo as string[])[0];
  flipKeepingMtime(dir.path('artifacts/cache', memoKey, 'value.json'), '3', '4');
  calls.length = 0;
  // A new factor: the stage re-runs and asks for its (unchanged-key) features.
  const second = await runPipeline({ ...options(), overrides: ['stages.double.with.factor=5'] });
  expect(second.stages[1].metrics).toEqual({ value: 15 }); // 3 * 5, not 4 * 5
  expect(calls).toContain('double:memo');
  expect(readFileSync(dir.path('artifacts/runs', second.run, 'log.jsonl'), 'utf8')).toMatch(/memo entry corrupt/);
});

describe('damaged records, caches and summaries are ignored, never a crash', () => {
  it('a state record {} with its entry missing: the stage re-runs ("first run")', async () => {
    const first = await run();
    writeFileSync(dir.path('artifacts/state/chain/double.json'), '{}');
    rmSync(dir.path('artifacts/cache', first.stages[1].key), { recursive: true });
    expect((await plan()).stages[1].reasons).toEqual(['no cached result (first run of this stage)']);
    expect((await run()).status).toBe('succeeded');
  });

  it('a state record that is not JSON', async () => {
    const first = await run();
    writeFileSync(dir.path('artifacts/state/chain/double.json'), '\u0000garbage');
    rmSync(dir.path('artifacts/cache', first.stages[1].key), { recursive: true });
    expect((await run()).status).toBe('succeeded');
  });

  it('stat-cache garbage: a bad file, then bad records', async () => {
    writeFileSync(dir.path('data.txt'), 'd');
    writeFileSync(dir.path('p.yaml'), chain.replace('with: { value: 3 }', 'with: { value: 3, path: data.txt }'));
    await run();
    for (const garbage of ['[1,2', '[1,2]', JSON.stringify({ [dir.path('data.txt')]: { size: 'x', sha256: 5 } }), JSON.stringify({ [dir.path('data.txt')]: { size: 1, mtimeMs: 0, ino: 0, sha256: 'f'.repeat(64) } })]) {
      writeFileSync(dir.path('artifacts/state/stat-cache.json'), garbage);
      calls.length = 0;
      const summary = await run();
      expect(summary.status).toBe('succeeded');
      expect(calls).toEqual([]); // re-hashed, same content: still cached
    }
  });

  it.each([
    ['"stages": {}', (s: Record<string, unknown>) => JSON.stringify({ ...s, stages: {} })],
    ['null', () => 'null'],
    ['truncated', (s: Record<string, unknown>) => JSON.stringify(s).slice(0, 30)],
    ['a stage without metrics', (s: Record<string, unknown>) => JSON.stringify({ ...s, stages: [{ id: 'src' }] })],
  ])('a summary.json that is %s: later runs, status, runs and gc skip it', async (_name, damage) => {
    const first = await run();
    const file = dir.path('artifacts/runs', first.run, 'summary.json');
    writeFileSync(file, damage(JSON.parse(readFileSync(file, 'utf8'))));
    const second = await run();
    expect(second.status).toBe('succeeded');
    expect(second.previous).toBeUndefined(); // nothing readable to compare with
    const third = await run();
    expect(third.previous).toBe(second.run);
    for (const command of [['status'], ['runs'], ['gc', '--dry-run'], ['gc'], ['status', '--json'], ['runs', '--json']]) {
      const result = await cli(...command);
      expect(result.status, `${command.join(' ')}: ${result.stderr}`).toBe(0);
      expect(result.stderr).not.toMatch(/unexpected/);
    }
    expect((await cli('runs')).stdout).toContain(`${first.run}  (no usable summary`);
    // gc kept what the readable runs use: the next run is all cached.
    calls.length = 0;
    expect((await run()).stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached']);
  });

  it('a run folder with neither a readable summary nor plan is skipped by gc with a note', async () => {
    await run();
    mkdirSync(dir.path('artifacts/runs/99999999-999999999-dead'), { recursive: true });
    writeFileSync(dir.path('artifacts/runs/99999999-999999999-dead/plan.json'), '{"pipeline":');
    const result = await cli('gc');
    expect(result.status).toBe(0);
    expect(result.stderr).toContain('note: run 99999999-999999999-dead ignored');
    expect(readdirSync(dir.path('artifacts/cache'))).toHaveLength(4);
    expect(existsSync(dir.path('artifacts/tmp'))).toBe(false);
  });
});
