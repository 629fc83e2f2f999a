/**
 * Successive halving of a sweep (`select` with `halving:`) through the real runtime with a fake
 * budgeted stage (`fake-epochs`, test/fixtures/fake-halving.ts; no TF.js): the rungs' epochs
 * (`rungBudgets`) and survivors (`survivorsOf`); which branches end pruned and which run to the
 * end, continuing from their rung rather than starting over, with the bytes of a full sweep;
 * select's pruned rows; a rerun that computes nothing; a changed branch that re-runs only what
 * it must; a branch failing in its rung or after it; --force, an interrupt, gc, the executor
 * seam (no halving there); the file:line errors of a halving that cannot be.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../../src/cli.js';
import { rungBudgets, rungKey, survivorsOf } from '../../../src/runtime/halving.js';
import { loadPipelineText } from '../../../src/runtime/load.js';
import { computeStage } from '../../../src/runtime/compute.js';
import { openStore, runPipeline } from '../../../src/runtime/run.js';
import type { StageDispatcher, StageSummary } from '../../../src/runtime/execute.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { epochHook, epochLog, epochRuns, failingAtEnd, halvingRegistry, halvingSweep, STATE_FILE, valAccOf } from '../../fixtures/fake-halving.js';
import { failing } from '../../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

const registry = halvingRegistry;
/** The branches of `halvingSweep()` in pipeline order (lr 0.1, 0.02, 0.05, 0.01; 0.02 is best). */
const TUNE = ['tune-lr-0p1', 'tune-lr-2e-2', 'tune-lr-5e-2', 'tune-lr-1e-2'];

let dir: TestDir;
beforeEach(() => {
  epochLog.length = 0;
  epochRuns.length = 0;
  failing.clear();
  failingAtEnd.clear();
  delete epochHook.before;
  dir = testdir({ 'p.yaml': halvingSweep() });
});
afterEach(() => {
  failing.clear();
  dir.cleanup();
});

const run = (store = 'artifacts') => runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path(store) });
const byId = (summary: { stages: StageSummary[] }) => new Map(summary.stages.map((s) => [s.id, s]));
const statuses = (summary: { stages: StageSummary[] }) => Object.fromEntries(summary.stages.filter((s) => s.id.startsWith('tune-')).map((s) => [s.id, s.status]));
const entryFile = (store: string, key: string, name: string) => readFileSync(path.join(dir.path(store), 'cache', key, name), 'utf8');
const entryMeta = (store: string, key: string) => JSON.parse(entryFile(store, key, '_entry.json')) as { kind: string; provides: string[]; metrics: Record<string, unknown> };
const epochsOf = (id: string) => epochLog.filter((e) => e.startsWith(`${id}@`));

describe('rungBudgets and survivorsOf', () => {
  it('rungs go min, min·factor, … while under the full budget', () => {
    expect(rungBudgets({ factor: 3, min: 1 }, 15)).toEqual([1, 3, 9]);
    expect(rungBudgets({ factor: 3, min: 1 }, 5)).toEqual([1, 3]);
    expect(rungBudgets({ factor: 3, min: 1 }, 9)).toEqual([1, 3]);
    expect(rungBudgets({ factor: 2, min: 1 }, 5)).toEqual([1, 2, 4]);
    expect(rungBudgets({ factor: 2, min: 1 }, 15)).toEqual([1, 2, 4, 8]);
    expect(rungBudgets({ factor: 2, min: 2 }, 15)).toEqual([2, 4, 8]);
    expect(rungBudgets({ factor: 3, min: 2 }, 15)).toEqual([2, 6]);
    expect(rungBudgets({ factor: 2, min: 2 }, 5)).toEqual([2, 4]);
    // a first rung at or past the end: no rung, every branch runs to the end
    expect(rungBudgets({ factor: 3, min: 5 }, 5)).toEqual([]);
    expect(rungBudgets({ factor: 2, min: 1 }, 1)).toEqual([]);
  });

  it('keeps 1 of every factor, at least one', () => {
    expect(survivorsOf(4, 3)).toBe(1);
    expect(survivorsOf(9, 3)).toBe(3);
    expect(survivorsOf(10, 3)).toBe(3);
    expect(survivorsOf(2, 3)).toBe(1);
    expect(survivorsOf(1, 2)).toBe(1);
    expect(survivorsOf(4, 2)).toBe(2);
    expect(survivorsOf(5, 2)).toBe(2);
  });

  it('a rung key is a function of the final key and the budget', () => {
    const a = 'a'.repeat(64);
    expect(rungKey(a, 1)).toMatch(/^[0-9a-f]{64}$/);
    expect(rungKey(a, 1)).toBe(rungKey(a, 1));
    expect(rungKey(a, 1)).not.toBe(rungKey(a, 2));
    expect(rungKey(a, 1)).not.toBe(rungKey('b'.repeat(64), 1));
    expect(rungKey(a, 1)).not.toBe(a);
  });
});

describe('a halved sweep of fake-epochs branches', () => {
  it('factor 3: the best branch after 1 epoch goes on from its rung to the end; the other three end pruned; select chooses it', async () => {
    const summary = await run();
    const stages = byId(summary);
    expect(summary.status, JSON.stringify(summary.stages.map((s) => s.error).filter(Boolean))).toBe('succeeded');
    expect(statuses(summary)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'ran', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    // 4 branches x 1 epoch, then the survivor's 2 more: 4x1 + 1x(3-1), not 4 + 3
    expect(epochLog).toHaveLength(6);
    expect(epochsOf('tune-lr-2e-2')).toEqual(['tune-lr-2e-2@1', 'tune-lr-2e-2@2', 'tune-lr-2e-2@3']);
    for (const id of ['tune-lr-0p1', 'tune-lr-5e-2', 'tune-lr-1e-2']) expect(epochsOf(id)).toEqual([`${id}@1`]);
    expect(epochRuns.filter((r) => r.startsWith('tune-lr-2e-2 '))).toEqual(['tune-lr-2e-2 budget=1 from=0', 'tune-lr-2e-2 budget=end from=1']);

    // a pruned branch: its rung's metrics, why it stopped, no final entry; its rung is in the cache
    const pruned = stages.get('tune-lr-1e-2')!;
    expect(pruned.metrics).toEqual({ val_acc: valAccOf(0.01, 1), val_loss: 0.33, epochs_run: 1, budget: 1 });
    expect(pruned.reasons!.at(-1)).toBe("pruned by 'pick' after 1 of 3 epochs (val_acc 0.67, rank 2 of 4; 1 went on)");
    expect(pruned.error).toBeUndefined();
    expect(existsSync(path.join(dir.path('artifacts'), 'cache', pruned.key))).toBe(false);
    for (const id of TUNE) {
      const rung = rungKey(stages.get(id)!.key, 1);
      expect(entryMeta('artifacts', rung), id).toMatchObject({ kind: 'fake-epochs:rung', provides: [], metrics: { epochs_run: 1, budget: 1 } });
      expect(JSON.parse(entryFile('artifacts', rung, STATE_FILE)).epoch).toBe(1);
    }

    // the survivor ran all 3 epochs under its own key
    const survivor = stages.get('tune-lr-2e-2')!;
    expect(survivor.metrics).toEqual({ val_acc: valAccOf(0.02, 3), val_loss: 0.1767, epochs_run: 3 });
    expect(entryMeta('artifacts', survivor.key).kind).toBe('fake-epochs');

    // select: only the survivor in its table, the pruned ones beside it, with where they stopped
    const pick = stages.get('pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.metrics).toMatchObject({ chosen: 'tune-lr-2e-2', model: 'tune-lr-2e-2', val_acc: valAccOf(0.02, 3), branches: 4, passed: 1, choice: { lr: 0.02 } });
    expect((pick.metrics.table as { id: string }[]).map((r) => r.id)).toEqual(['tune-lr-2e-2']);
    const rows = [
      { id: 'tune-lr-0p1', coords: { lr: 0.1 }, value: valAccOf(0.1, 1), budget: 1, of: 3 },
      { id: 'tune-lr-5e-2', coords: { lr: 0.05 }, value: valAccOf(0.05, 1), budget: 1, of: 3 },
      { id: 'tune-lr-1e-2', coords: { lr: 0.01 }, value: valAccOf(0.01, 1), budget: 1, of: 3 },
    ];
    expect(pick.metrics.pruned).toEqual(rows);
    expect(pick.metrics.failed).toBeUndefined();
    expect(JSON.parse(entryFile('artifacts', pick.key, 'selection.json'))).toMatchObject({ chosen: 'tune-lr-2e-2', pruned: rows });
    // the stage after select has the survivor's model
    expect(stages.get('ship')!).toMatchObject({ status: 'ran', metrics: { lr: 0.02, value: 3 } });

    // the same branch in a full sweep (no halving): the same key, the same bytes
    dir.write('p.yaml', halvingSweep({ halving: 'false' }));
    epochLog.length = 0;
    const full = await run('full');
    expect(statuses(full)).toEqual(Object.fromEntries(TUNE.map((id) => [id, 'ran'])));
    expect(epochLog).toHaveLength(12);
    const fullSurvivor = byId(full).get('tune-lr-2e-2')!;
    expect(fullSurvivor.key).toBe(survivor.key);
    expect(entryFile('artifacts', survivor.key, 'model.json')).toBe(entryFile('full', fullSurvivor.key, 'model.json'));
    expect(byId(full).get('pick')!.metrics.chosen).toBe('tune-lr-2e-2');
  });

  it.each([
    // [halving, epochs, epochs computed, the pruned branches: id -> epochs they ran, each branch's runs]
    { halving: '{ factor: 2 }', epochs: 4, total: 4 * 1 + 2 * 1 + 1 * 2, pruned: { 'tune-lr-0p1': 1, 'tune-lr-5e-2': 1, 'tune-lr-1e-2': 2 }, runs: ['budget=1 from=0', 'budget=2 from=1', 'budget=end from=2'] },
    { halving: '{ factor: 2, min: 2 }', epochs: 5, total: 4 * 2 + 2 * 2 + 1 * 1, pruned: { 'tune-lr-0p1': 2, 'tune-lr-5e-2': 2, 'tune-lr-1e-2': 4 }, runs: ['budget=2 from=0', 'budget=4 from=2', 'budget=end from=4'] },
    { halving: 'true', epochs: 9, total: 4 * 1 + 1 * 8, pruned: { 'tune-lr-0p1': 1, 'tune-lr-5e-2': 1, 'tune-lr-1e-2': 1 }, runs: ['budget=1 from=0', 'budget=end from=1'] },
    { halving: '{ min: 2 }', epochs: 15, total: 4 * 2 + 1 * 13, pruned: { 'tune-lr-0p1': 2, 'tune-lr-5e-2': 2, 'tune-lr-1e-2': 2 }, runs: ['budget=2 from=0', 'budget=end from=2'] },
  ])('halving $halving over $epochs epochs: $total epochs computed', async ({ halving, epochs, total, pruned, runs }) => {
    dir.write('p.yaml', halvingSweep({ halving, epochs }));
    const summary = await run();
    expect(summary.status).toBe('succeeded');
    expect(statuses(summary)).toEqual({ ...Object.fromEntries(Object.keys(pruned).map((id) => [id, 'pruned'])), 'tune-lr-2e-2': 'ran' });
    expect(epochLog).toHaveLength(total);
    expect(epochsOf('tune-lr-2e-2')).toEqual(Array.from({ length: epochs }, (_, i) => `tune-lr-2e-2@${i + 1}`));
    expect(epochRuns.filter((r) => r.startsWith('tune-lr-2e-2 ')).map((r) => r.slice('tune-lr-2e-2 '.length))).toEqual(runs);
    const pick = byId(summary).get('pick')!;
    expect(pick.metrics.chosen).toBe('tune-lr-2e-2');
    expect((pick.metrics.pruned as { id: string; budget: number; of: number }[]).map((r) => [r.id, r.budget, r.of])).toEqual(Object.entries(pruned).map(([id, budget]) => [id, budget, epochs]));
    for (const [id, budget] of Object.entries(pruned)) expect(byId(summary).get(id)!.metrics.epochs_run, id).toBe(budget);
  });

  it('by a loss (mode min): the branch with the lowest val_loss at the rung goes on', async () => {
    dir.write('p.yaml', halvingSweep({ halving: '{ factor: 2 }', epochs: 4 }).replace('metric: val_acc', 'metric: val_loss'));
    const summary = await run();
    expect(statuses(summary)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'ran', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    expect(byId(summary).get('tune-lr-1e-2')!.metrics.epochs_run).toBe(2);
    expect(byId(summary).get('pick')!.metrics).toMatchObject({ chosen: 'tune-lr-2e-2', mode: 'min', val_loss: 0.16 });
  });

  it('a rerun computes nothing: the same branches pruned from their cached rungs, the survivor and select cached, the same choice', async () => {
    const first = await run();
    epochLog.length = 0;
    epochRuns.length = 0;
    const again = await run();
    expect(again.status).toBe('succeeded');
    expect(epochRuns).toEqual([]);
    expect(epochLog).toEqual([]);
    expect(statuses(again)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'cached', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    const pick = byId(again).get('pick')!;
    expect(pick).toMatchObject({ status: 'cached', key: byId(first).get('pick')!.key });
    expect(pick.metrics.chosen).toBe('tune-lr-2e-2');
    expect(pick.metrics.pruned).toEqual(byId(first).get('pick')!.metrics.pruned);
    expect(byId(again).get('ship')!.status).toBe('cached');
    for (const id of ['tune-lr-0p1', 'tune-lr-5e-2', 'tune-lr-1e-2']) expect(byId(again).get(id)!.metrics).toEqual(byId(first).get(id)!.metrics);
  });

  it('plan after a halved run: the pruned branches are pruned by their cached rungs, nothing is to run, and --only the join works', async () => {
    await run();
    const out = { stdout: '', stderr: '' };
    const io = { registry, stdout: (t: string) => (out.stdout += t), stderr: (t: string) => (out.stderr += t), env: { CI: 'true' }, isTTY: false };
    expect(await main(['plan', dir.path('p.yaml'), '--artifacts', dir.path('artifacts')], io), out.stderr).toBe(0);
    for (const id of ['tune-lr-0p1', 'tune-lr-5e-2', 'tune-lr-1e-2']) expect(out.stdout).toMatch(new RegExp(`^  pruned  ${id} .*pruned by 'pick' after 1 of 3 epochs \\(val_acc [0-9.]+, rank [234] of 4; 1 went on\\)$`, 'm'));
    expect(out.stdout).toMatch(/^ {2}cached {2}pick /m);
    expect(out.stdout).toMatch(/^0 to run, \d+ cached, 3 pruned by cached rungs$/m);
    epochRuns.length = 0;
    expect(await main(['run', dir.path('p.yaml'), '--artifacts', dir.path('artifacts'), '--only', 'ship', '--force', 'ship'], io), out.stderr).toBe(0);
    expect(epochRuns).toEqual([]);
    // a changed branch: its rung is not cached, so plan stops deciding there and the run decides
    out.stdout = '';
    writeFileSync(dir.path('p.yaml'), halvingSweep().replace('0.05', '0.06'));
    expect(await main(['plan', dir.path('p.yaml'), '--artifacts', dir.path('artifacts')], io), out.stderr).toBe(0);
    expect(out.stdout).not.toMatch(/^  pruned /m);
    expect(out.stdout).toMatch(/^ {2}run +tune-lr-6e-2 .*no cached result/m);
    expect(out.stdout).toMatch(/^ {2}run +tune-lr-0p1 .*its rung at epoch 1 is cached; 'pick' decides whether it trains on$/m);
  });

  it('gc keeps the rungs of the runs it keeps: a rerun after gc computes nothing', async () => {
    const first = await run();
    await run();
    const out = { stdout: '', stderr: '' };
    const io = { registry, stdout: (t: string) => (out.stdout += t), stderr: (t: string) => (out.stderr += t), env: { CI: 'true' }, isTTY: false };
    expect(await main(['gc', '--artifacts', dir.path('artifacts')], io), out.stderr).toBe(0);
    for (const id of TUNE) expect(existsSync(path.join(dir.path('artifacts'), 'cache', rungKey(byId(first).get(id)!.key, 1))), id).toBe(true);
    epochRuns.length = 0;
    const after = await run();
    expect(epochRuns).toEqual([]);
    expect(statuses(after)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'cached', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    expect(byId(after).get('pick')!.status).toBe('cached');
    // the summary names each branch's rungs
    expect(byId(first).get('tune-lr-2e-2')!.rungs).toEqual([rungKey(byId(first).get('tune-lr-2e-2')!.key, 1)]);
  });

  it('--force computes a forced branch\'s rungs again, not only what is left after its cached rung', async () => {
    await run();
    const force = async (selection: { force?: string[]; from?: string }) => {
      epochRuns.length = 0;
      epochLog.length = 0;
      return runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), selection });
    };
    // every branch: 4 rungs of 1 epoch and the survivor's 2 more, as in the first run
    const all = await force({ force: ['tune'] });
    expect(all.status).toBe('succeeded');
    expect(epochRuns).toEqual([...TUNE.map((id) => `${id} budget=1 from=0`), 'tune-lr-2e-2 budget=end from=1']);
    expect(epochLog).toHaveLength(6);
    expect(statuses(all)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'ran', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    // a pruned branch: its rung runs again (the same bytes: select stays cached)
    const one = await force({ force: ['tune-lr-0p1'] });
    expect(epochRuns).toEqual(['tune-lr-0p1 budget=1 from=0']);
    expect(byId(one).get('tune-lr-0p1')!.status).toBe('pruned');
    expect(byId(one).get('pick')!.status).toBe('cached');
    // --from the swept stage: the same as forcing it
    await force({ from: 'tune' });
    expect(epochLog).toHaveLength(6);
  });

  it('a pruned branch whose lr changes: only its first rung is computed; select runs again (its key covers the rung) and chooses alike', async () => {
    const first = await run();
    dir.write('p.yaml', halvingSweep({ lrs: '[0.2, 0.02, 0.05, 0.01]' }));
    epochLog.length = 0;
    const changed = await run();
    expect(changed.status).toBe('succeeded');
    expect(epochLog).toEqual(['tune-lr-0p2@1']);
    expect(statuses(changed)).toEqual({ 'tune-lr-0p2': 'pruned', 'tune-lr-2e-2': 'cached', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    const pick = byId(changed).get('pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.key).not.toBe(byId(first).get('pick')!.key);
    expect(pick.metrics.chosen).toBe('tune-lr-2e-2');
    expect((pick.metrics.pruned as { id: string; value: number }[])[0]).toMatchObject({ id: 'tune-lr-0p2', value: valAccOf(0.2, 1) });
    // the same model goes on (ship runs again only because selection.json lists the new row)
    expect(byId(changed).get('ship')!.metrics).toEqual(byId(first).get('ship')!.metrics);
  });

  it('a branch changed to the best: it alone trains, from its rung to the end; the old survivor is now pruned from its cached rung', async () => {
    await run();
    dir.write('p.yaml', halvingSweep({ lrs: '[0.025, 0.02, 0.05, 0.01]' }));
    epochLog.length = 0;
    epochRuns.length = 0;
    const changed = await run();
    expect(changed.status).toBe('succeeded');
    const best = changed.stages.find((s) => s.id.startsWith('tune-') && s.branch?.coords.lr === 0.025)!;
    expect(epochLog).toEqual([1, 2, 3].map((e) => `${best.id}@${e}`));
    expect(epochRuns).toEqual([`${best.id} budget=1 from=0`, `${best.id} budget=end from=1`]);
    expect(statuses(changed)).toEqual({ [best.id]: 'ran', 'tune-lr-2e-2': 'pruned', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    const pick = byId(changed).get('pick')!;
    expect(pick).toMatchObject({ status: 'ran', metrics: { chosen: best.id, val_acc: valAccOf(0.025, 3) } });
    expect(byId(changed).get('ship')!).toMatchObject({ status: 'ran', metrics: { lr: 0.025 } });
  });

  it('a branch that fails in its rung ends failed; the others go on, select chooses among them and lists it; the run fails', async () => {
    // the best branch fails: the next best goes on
    failing.add('tune-lr-2e-2');
    const summary = await run();
    const stages = byId(summary);
    expect(summary.status).toBe('failed');
    expect(statuses(summary)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'failed', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'ran' });
    expect(stages.get('tune-lr-2e-2')!.error).toMatchObject({ code: 'fake_failure', message: 'stage tune-lr-2e-2 failed on purpose' });
    expect(epochsOf('tune-lr-1e-2')).toEqual(['tune-lr-1e-2@1', 'tune-lr-1e-2@2', 'tune-lr-1e-2@3']);
    expect(epochLog).toHaveLength(3 + 2);
    const pick = stages.get('pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.metrics).toMatchObject({ chosen: 'tune-lr-1e-2', branches: 4, passed: 1 });
    expect((pick.metrics.failed as { id: string; code: string }[]).map((f) => [f.id, f.code])).toEqual([['tune-lr-2e-2', 'fake_failure']]);
    expect((pick.metrics.pruned as { id: string }[]).map((r) => r.id)).toEqual(['tune-lr-0p1', 'tune-lr-5e-2']);
    expect(stages.get('ship')!).toMatchObject({ status: 'ran', metrics: { lr: 0.01 } });

    // fixed: the branch's rung runs and it wins; the others' rungs come from the cache
    failing.clear();
    epochLog.length = 0;
    const fixed = await run();
    expect(fixed.status).toBe('succeeded');
    expect(epochLog).toEqual(['tune-lr-2e-2@1', 'tune-lr-2e-2@2', 'tune-lr-2e-2@3']);
    expect(statuses(fixed)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'ran', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    expect(byId(fixed).get('pick')!.metrics.chosen).toBe('tune-lr-2e-2');
  });

  it('the survivor failing after its rung leaves select nothing to choose: it is skipped, the pruned ones stay pruned', async () => {
    failingAtEnd.add('tune-lr-2e-2');
    const summary = await run();
    expect(summary.status).toBe('failed');
    expect(statuses(summary)).toEqual({ 'tune-lr-0p1': 'pruned', 'tune-lr-2e-2': 'failed', 'tune-lr-5e-2': 'pruned', 'tune-lr-1e-2': 'pruned' });
    expect(epochRuns.filter((r) => r.startsWith('tune-lr-2e-2 '))).toEqual(['tune-lr-2e-2 budget=1 from=0', 'tune-lr-2e-2 budget=end from=1']);
    expect(byId(summary).get('pick')!).toMatchObject({ status: 'skipped', error: { code: 'dependency_failed', message: expect.stringContaining("'tune-lr-2e-2' failed") } });
    expect(byId(summary).get('ship')!.status).toBe('skipped');
    // fixed: the rungs come from the cache, the survivor goes on from its rung again
    failingAtEnd.clear();
    epochRuns.length = 0;
    const fixed = await run();
    expect(fixed.status).toBe('succeeded');
    expect(epochRuns).toEqual(['tune-lr-2e-2 budget=end from=1']);
    expect(byId(fixed).get('pick')!.metrics.chosen).toBe('tune-lr-2e-2');
  });

  it('interrupted while the survivor goes on: the run is interrupted; the next goes on from the cached rungs', async () => {
    const controller = new AbortController();
    epochHook.before = (id, epoch) => {
      if (id === 'tune-lr-2e-2' && epoch === 2) controller.abort();
    };
    const stopped = await runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), signal: controller.signal });
    expect(stopped.status).toBe('interrupted');
    expect(byId(stopped).get('tune-lr-2e-2')!.error!.code).toBe('aborted');
    expect(byId(stopped).get('pick')!.status).toBe('skipped');
    delete epochHook.before;
    epochRuns.length = 0;
    const resumed = await run();
    expect(resumed.status).toBe('succeeded');
    expect(epochRuns).toEqual(['tune-lr-2e-2 budget=end from=1']);
    expect(byId(resumed).get('pick')!.metrics.chosen).toBe('tune-lr-2e-2');
  });

  it('a first rung at or past every branch\'s end: no halving, every branch runs to the end', async () => {
    dir.write('p.yaml', halvingSweep({ halving: '{ min: 3 }' }));
    const summary = await run();
    expect(summary.status).toBe('succeeded');
    expect(statuses(summary)).toEqual(Object.fromEntries(TUNE.map((id) => [id, 'ran'])));
    expect([...epochRuns].sort()).toEqual(TUNE.map((id) => `${id} budget=end from=0`).sort());
    expect(byId(summary).get('pick')!.metrics).toMatchObject({ chosen: 'tune-lr-2e-2', passed: 4 });
    expect(byId(summary).get('pick')!.metrics.pruned).toBeUndefined();
  });

  it('the CLI: a halved sweep exits 0 and shows the pruned branches; one with a failed branch exits 1', async () => {
    const out = { stdout: '', stderr: '' };
    const io = { registry, stdout: (t: string) => (out.stdout += t), stderr: (t: string) => (out.stderr += t), env: { CI: 'true' }, isTTY: false };
    expect(await main(['run', dir.path('p.yaml'), '--artifacts', dir.path('artifacts')], io), out.stderr).toBe(0);
    expect(out.stderr).toMatch(/^✂ tune-lr-1e-2 pruned /m);
    expect(out.stderr).toMatch(/^✓ tune-lr-2e-2 ran /m);
    // the survivor starts once (at its rung), not again when it goes on
    expect(out.stderr.match(/^▶ tune-lr-2e-2 /gm)).toHaveLength(1);
    // the run's summary is readable: status lists the pruned branches with their metrics where they stopped
    out.stdout = '';
    out.stderr = '';
    expect(await main(['status', '--artifacts', dir.path('artifacts')], io)).toBe(0);
    expect(out.stderr).toBe('');
    expect(out.stdout).toMatch(/^ {4}pruned {2}tune-lr-1e-2 +val_acc=0\.6700 val_loss=0\.3300 epochs_run=1 budget=1$/m);
    expect(out.stdout).toMatch(/^ {4}ran {5}tune-lr-2e-2 +val_acc=0\.8233 val_loss=0\.1767 epochs_run=3$/m);
    expect(await main(['runs', '--artifacts', dir.path('artifacts')], io)).toBe(0);
    expect(out.stdout).not.toMatch(/no usable summary/);
    // the halving is a --set away from a full sweep, and each branch is then a failure of its own
    failing.add('tune-lr-0p1');
    out.stderr = '';
    epochRuns.length = 0;
    expect(await main(['run', dir.path('p.yaml'), '--artifacts', dir.path('cli2'), '--set', 'stages.pick.with.halving={ factor: 2 }', '--set', 'stages.tune.with.epochs=4'], io), out.stderr).toBe(1);
    expect(out.stderr).toMatch(/^✗ tune-lr-0p1 failed /m);
    expect(out.stderr).toMatch(/^✂ tune-lr-1e-2 pruned /m);
    // of the 3 left after the first rung, 1 (of every 2) goes on, from its rung to the 4th epoch
    expect(epochRuns.filter((r) => !r.startsWith('tune-lr-2e-2 '))).toEqual(['tune-lr-0p1 budget=1 from=0', 'tune-lr-5e-2 budget=1 from=0', 'tune-lr-1e-2 budget=1 from=0']);
    expect(epochRuns.filter((r) => r.startsWith('tune-lr-2e-2 '))).toEqual(['tune-lr-2e-2 budget=1 from=0', 'tune-lr-2e-2 budget=end from=1']);
  });

  it('through the executor seam (BullMQ workers compute final keys only): no halving, every branch trains to the end, and the summary warns', async () => {
    const store = openStore({ artifacts: dir.path('artifacts') });
    const dispatcher: StageDispatcher = {
      async compute(planned, request) {
        const byId = new Map(request.pipeline.stages.map((s) => [s.id, s]));
        const inputs: StageInput[] = await Promise.all(
          Object.entries(request.upstream).map(async ([id, key]) => {
            const check = await store.cache.check(key);
            return { id, kind: byId.get(id)!.kind, key, dir: await store.cache.materialize(key), provides: byId.get(id)!.definition.provides, metrics: check.state === 'ok' ? check.meta.metrics : {} };
          }),
        );
        return computeStage(planned.stage, { store, key: planned.key, inputs, downstream: planned.downstream, failedBranches: request.failedBranches, pipeline: request.pipeline, runId: request.runId, log: request.log, signal: request.signal, progress: request.progress });
      },
    };
    const summary = await runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), dispatcher });
    expect(summary.status).toBe('succeeded');
    expect(statuses(summary)).toEqual(Object.fromEntries(TUNE.map((id) => [id, 'ran'])));
    expect([...epochRuns].sort()).toEqual(TUNE.map((id) => `${id} budget=end from=0`).sort());
    expect(byId(summary).get('pick')!.metrics).toMatchObject({ chosen: 'tune-lr-2e-2', branches: 4, passed: 4 });
    expect(summary.warnings).toEqual([{ stage: 'pick', message: "'pick' halving is not done with --executor bullmq: every branch trains all its epochs" }]);
  });

  it('a branch that does not report the metric halving ranks by: every branch fails with halving_metric_missing, select is skipped', async () => {
    dir.write('p.yaml', halvingSweep().replace('metric: val_acc', 'metric: accuracy'));
    const summary = await run();
    expect(summary.status).toBe('failed');
    for (const id of TUNE) {
      const stage = byId(summary).get(id)!;
      expect(stage.status, id).toBe('failed');
      expect(stage.error!.code).toBe('halving_metric_missing');
      expect(stage.error!.message).toMatch(/^'pick' halves its sweep by 'accuracy', which 'tune-lr-0p1' \(fake-epochs\) does not report after 1 epoch\(s\); it reports: val_acc, val_loss, epochs_run, budget\. Rank by one of those, or set halving: false$/);
    }
    expect(byId(summary).get('pick')!).toMatchObject({ status: 'skipped', error: { code: 'dependency_failed' } });
  });
});

describe('halving errors (exit 2, at file:line)', () => {
  const issuesOf = (text: string) => {
    const result = loadPipelineText(text, 'p.yaml', registry);
    return result.ok ? [] : result.issues.map((i) => `${i.line}:${i.code}:${i.path}: ${i.message}`);
  };

  it('select halving over a stage with no budget (a score after the training stage)', () => {
    const text = halvingSweep().replace('    needs: [tune]\n    with: { metric: val_acc', '    needs: [score]\n    with: { metric: accuracy').replace('  pick:', '  score: { uses: fake-score, needs: [tune] }\n  pick:');
    expect(issuesOf(text)).toEqual([
      "13:halving_needs_budget:stages.pick.with.halving: stage 'pick' halves its sweep, which trains its needs in rungs of epochs, but 'score' (fake-score) has no epochs to stop and go on; make select need the training stage itself ('tune'), or set halving: false",
    ]);
    // the same sweep without halving is fine
    expect(issuesOf(text.replace('halving: true', 'halving: false'))).toEqual([]);
  });

  it('another stage that is no join needs a halved branch', () => {
    const text = halvingSweep({ extra: '  peek: { uses: fake-score, needs: [tune] }\n' });
    expect(issuesOf(text)).toEqual([
      "12:halving_needs_budget:stages.pick.with.halving: stage 'pick' halves its sweep, so it stops some branches of 'tune' early, but 'peek' also needs 'tune' and would have nothing to read; make them need 'pick' instead, or set halving: false",
    ]);
  });

  it('a second select over the halved branches (it would read branches the first one stops)', () => {
    const text = halvingSweep({ extra: '  pick-loss: { uses: select, needs: [tune], with: { metric: val_loss } }\n' });
    expect(issuesOf(text)).toEqual([
      "12:halving_needs_budget:stages.pick.with.halving: stage 'pick' halves its sweep, so it stops some branches of 'tune' early, but 'pick-loss' also needs 'tune' and would have nothing to read; make them need 'pick' instead, or set halving: false",
    ]);
  });

  it('the CLI: validate exits 2 with the file:line, and a --set halving on a bad sweep too', async () => {
    dir.write('p.yaml', halvingSweep({ halving: 'false', extra: '  peek: { uses: fake-score, needs: [tune] }\n' }));
    const out = { stdout: '', stderr: '' };
    const io = { registry, stdout: (t: string) => (out.stdout += t), stderr: (t: string) => (out.stderr += t), env: { CI: 'true' }, isTTY: false };
    expect(await main(['validate', dir.path('p.yaml')], io), out.stderr).toBe(0);
    out.stderr = '';
    expect(await main(['run', dir.path('p.yaml'), '--artifacts', dir.path('artifacts'), '--set', 'stages.pick.with.halving=true'], io)).toBe(2);
    expect(out.stderr).toMatch(/halving_needs_budget/);
    expect(out.stderr).toMatch(/'peek' also needs 'tune'/);
    expect(out.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(dir.path('artifacts', 'cache'))).toBe(false);
    out.stderr = '';
    dir.write('p.yaml', halvingSweep({ extra: '  peek: { uses: fake-score, needs: [tune] }\n' }));
    expect(await main(['validate', dir.path('p.yaml')], io)).toBe(2);
    expect(out.stderr).toMatch(/p\.yaml:12\b.*halving_needs_budget|halving_needs_budget.*p\.yaml:12\b/s);
  });
});
