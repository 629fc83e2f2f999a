import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalCache } from '../../../src/runtime/local-cache.js';
import { planPipeline, runPipeline } from '../../../src/runtime/run.js';
import { ArtifactStore } from '../../../src/runtime/store.js';
import { calls, fakeRegistry } from '../../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

const chain = `name: chain
stages:
  src:
    uses: source
    with: { path: data, value: 3 }
  double:
    uses: transform
    needs: [src]
  triple:
    uses: transform
    needs: [double]
    with: { factor: 3 }
  side:
    uses: transform
    needs: [src]
    with: { factor: 10 }
`;

let dir: TestDir;
beforeEach(() => {
  calls.length = 0;
  dir = testdir({ 'p.yaml': chain, 'data/a.txt': 'a', 'data/b.txt': 'b' });
});
afterEach(() => dir.cleanup());

const run = (overrides: string[] = [], extra: Record<string, unknown> = {}) =>
  runPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts'), overrides, ...extra });

describe('runPipeline', () => {
  it("the run's seconds include its plan (hashing inputs, pulling from a remote), not only executing it", async () => {
    // A cache whose lookups are slow, as a remote's are: the plan makes them, before any stage runs.
    class SlowCache extends LocalCache {
      override async check(key: string) {
        await new Promise((resolve) => setTimeout(resolve, 150));
        return super.check(key);
      }
    }
    await run();
    const summary = await run([], { openCache: (root: string) => new SlowCache(root) });
    expect(summary.stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
    expect(summary.seconds).toBeGreaterThanOrEqual(0.5); // 4 lookups of 150 ms in the plan
  });

  it('runs every stage once, then takes all from the cache', async () => {
    const first = await run();
    expect(first.status).toBe('succeeded');
    expect(first.stages.map((s) => s.status)).toEqual(['ran', 'ran', 'ran', 'ran']);
    expect(first.stages.find((s) => s.id === 'triple')!.metrics).toEqual({ value: 18 });
    expect(calls.sort()).toEqual(['double', 'side', 'src', 'triple']);
    calls.length = 0;
    const second = await run();
    expect(second.stages.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached']);
    expect(second.stages.find((s) => s.id === 'triple')!.metrics).toEqual({ value: 18 });
    expect(calls).toEqual([]);
  });

  it('re-runs exactly the changed stage and its dependents', async () => {
    await run();
    calls.length = 0;
    const summary = await run(['stages.double.with.factor=4']);
    expect(calls.sort()).toEqual(['double', 'triple']);
    expect(summary.stages.find((s) => s.id === 'triple')!.metrics).toEqual({ value: 36 });
    const plan = await planPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts'), overrides: ['stages.double.with.factor=5'] });
    const double = plan.stages.find((p) => p.stage.id === 'double')!;
    expect(double.action).toBe('run');
    expect(double.reasons.join()).toContain('param factor changed (4 -> 5)');
    expect(plan.stages.find((p) => p.stage.id === 'triple')!.reasons.join()).toContain("upstream 'double' runs first (its output decides)");
    expect(plan.stages.find((p) => p.stage.id === 'side')!.action).toBe('cached');
  });

  it('a new pipeline seed re-runs every stage and says why', async () => {
    await run();
    calls.length = 0;
    const plan = await planPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts'), overrides: ['seed=7'] });
    expect(plan.stages.every((p) => p.action === 'run')).toBe(true);
    expect(plan.stages[0].reasons.join()).toContain('seed changed');
    await run(['seed=7']);
    expect(calls.sort()).toEqual(['double', 'side', 'src', 'triple']);
  });

  it('compares metrics with the previous run of the same pipeline', async () => {
    const first = await run();
    expect(first.previous).toBeUndefined();
    const second = await run(['stages.double.with.factor=4']);
    expect(second.previous).toBe(first.run);
    expect(second.stages.find((s) => s.id === 'double')!.changes).toEqual({ value: { before: 6, after: 12 } });
    expect(second.stages.find((s) => s.id === 'src')!.changes).toBeUndefined();
  });

  it('re-runs a stage whose external input content changed, and only then', async () => {
    await run();
    calls.length = 0;
    writeFileSync(dir.path('data/a.txt'), 'a'); // same content, new mtime
    await run();
    expect(calls).toEqual([]);
    writeFileSync(dir.path('data/c.txt'), 'new file');
    const plan = await planPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts') });
    expect(plan.stages[0].reasons.join()).toContain('input data changed');
    const summary = await run();
    // The source re-ran; its output (the value, not the listing) is the same bytes, so its
    // dependents, keyed by that output, stay cached.
    expect(calls).toEqual(['src']);
    expect(summary.stages.map((s) => s.status)).toEqual(['ran', 'cached', 'cached', 'cached']);
  });

  it('dependents are keyed by their upstream output: --force with the same bytes keeps them, new bytes re-run them', async () => {
    await run();
    calls.length = 0;
    const same = await run([], { selection: { force: ['src'] } });
    expect(calls).toEqual(['src']);
    expect(same.stages.map((s) => s.status)).toEqual(['ran', 'cached', 'cached', 'cached']);
    // A source whose output changed while its key did not (a remote model replaced under the same URL).
    calls.length = 0;
    process.env.FAKE_REMOTE = 'v2';
    const changed = await run([], { selection: { force: ['src'] } }).finally(() => delete process.env.FAKE_REMOTE);
    expect(changed.stages[0].key).toBe(same.stages[0].key);
    // Its dependents re-run; 'double' writes the same value as before, so 'triple' stays cached.
    expect(changed.stages.map((s) => s.status)).toEqual(['ran', 'ran', 'cached', 'ran']);
    expect(calls.sort()).toEqual(['double', 'side', 'src']);
    expect(changed.stages.find((s) => s.id === 'triple')!.metrics).toEqual({ value: 18 });
  });

  it('marks dependents of a failed stage skipped while the others finish', async () => {
    const summary = await run(['stages.double.with.fail=true']);
    expect(summary.status).toBe('failed');
    const byId = Object.fromEntries(summary.stages.map((s) => [s.id, s]));
    expect(byId.double.status).toBe('failed');
    expect(byId.double.error?.code).toBe('fake_failure');
    expect(byId.triple.status).toBe('skipped');
    expect(byId.side.status).toBe('ran');
    expect(readdirSync(dir.path('artifacts/tmp'))).toEqual([]);
  });

  it('recomputes a corrupt cache entry instead of using it', async () => {
    const first = await run();
    const key = first.stages.find((s) => s.id === 'double')!.key;
    const file = dir.path('artifacts/cache', key, 'value.json');
    writeFileSync(file, '{"value": 99999}'); // same size class differs: content hash check
    calls.length = 0;
    const plan = await planPipeline({ file: dir.path('p.yaml'), registry: fakeRegistry, artifacts: dir.path('artifacts') });
    expect(plan.stages.find((p) => p.stage.id === 'double')!.reasons.join()).toContain('corrupt');
    const second = await run();
    expect(calls).toEqual(['double']);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ value: 6 });
    expect(second.stages.find((s) => s.id === 'triple')!.status).toBe('cached');
  });

  it('--force and --from re-run the chosen stages; --only runs one stage', async () => {
    await run();
    calls.length = 0;
    await run([], { selection: { force: ['side'] } });
    expect(calls).toEqual(['side']);
    calls.length = 0;
    await run([], { selection: { from: 'double' } });
    expect(calls.sort()).toEqual(['double', 'triple']);
    calls.length = 0;
    const only = await run([], { selection: { only: 'triple', force: ['triple'] } });
    expect(calls).toEqual(['triple']);
    expect(only.stages.map((s) => s.id)).toEqual(['src', 'double', 'triple']);
  });

  it('refuses --only when an upstream stage is not cached', async () => {
    await expect(run([], { selection: { only: 'triple' } })).rejects.toMatchObject({ code: 'upstream_not_cached' });
    expect(calls).toEqual([]);
  });

  it('writes the run folder: log.jsonl, summary.json, artifacts.json', async () => {
    const summary = await run();
    const runDir = dir.path('artifacts/runs', summary.run);
    const log = readFileSync(`${runDir}/log.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.filter((l) => l.msg === 'stage done').map((l) => l.stage).sort()).toEqual(['double', 'side', 'src', 'triple']);
    expect(log.every((l) => l.run === summary.run)).toBe(true);
    expect(JSON.parse(readFileSync(`${runDir}/summary.json`, 'utf8')).stages).toHaveLength(4);
    expect(Object.keys(JSON.parse(readFileSync(`${runDir}/artifacts.json`, 'utf8')))).toHaveLength(4);
  });

  it('refuses a run while gc holds the store, and takes over a dead holder\'s lock', async () => {
    const store = new ArtifactStore(dir.path('artifacts'));
    const release = await store.lockStore();
    await expect(run()).rejects.toMatchObject({ code: 'store_locked' });
    await release();
    // A holder that died (no such pid) is taken over: the next generation is created.
    writeFileSync(dir.path('artifacts/locks/store/7'), JSON.stringify({ pid: 2 ** 22 + 12345, host: (await import('node:os')).hostname(), token: 'dead', since: '' }));
    expect((await run()).status).toBe('succeeded');
    expect((await store.lockStore().then((r) => r())) ?? 'ok').toBe('ok');
  });

  it('memo entries are reused when only other params change, and kept by gc', async () => {
    await run(['stages.double.with.memo=true']);
    expect(calls.filter((c) => c.endsWith(':memo'))).toEqual(['double:memo']);
    calls.length = 0;
    const summary = await run(['stages.double.with.memo=true', 'stages.double.with.factor=7']);
    expect(calls.sort()).toEqual(['double', 'triple']);
    expect(summary.stages.find((s) => s.id === 'double')!.metrics).toEqual({ value: 21 });
    await new ArtifactStore(dir.path('artifacts')).gc(1);
    calls.length = 0;
    await run(['stages.double.with.memo=true', 'stages.double.with.factor=8']);
    expect(calls.sort()).toEqual(['double', 'triple']);
  });

  it('--wait waits for gc to release the store instead of failing', async () => {
    const store = new ArtifactStore(dir.path('artifacts'));
    const release = await store.lockStore();
    setTimeout(() => void release(), 300);
    const t0 = Date.now();
    const summary = await run([], { wait: true });
    expect(summary.status).toBe('succeeded');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
  });

  it('gc removes entries that no kept run uses', async () => {
    await run();
    await run(['stages.side.with.factor=11']);
    const store = new ArtifactStore(dir.path('artifacts'));
    const before = readdirSync(dir.path('artifacts/cache')).length;
    expect(before).toBe(5);
    // The state records still point at the newest keys, so keep=1 removes only the old side.
    const result = await store.gc(1);
    expect(result.removed).toHaveLength(1);
    expect(readdirSync(dir.path('artifacts/cache'))).toHaveLength(4);
  });
});
