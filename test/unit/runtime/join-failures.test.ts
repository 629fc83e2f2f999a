/**
 * A sweep where some branches fail, through the real runtime with fake stages: `select` still
 * runs and chooses among the branches that succeeded, lists the failed ones (metrics,
 * selection.json, the status grid, the run summary's lines), the run still fails; its key covers
 * the survivors, so a rerun with the same failure reuses it and one where the branch now
 * succeeds runs it again. Every branch failing, or a need that is not a branch, skips it.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../../src/cli.js';
import { renderGrid, renderPlan, renderSummary } from '../../../src/render.js';
import { ComputeFailure, computeStage } from '../../../src/runtime/compute.js';
import { listSome } from '../../../src/runtime/join.js';
import type { StageDispatcher } from '../../../src/runtime/execute.js';
import { stageRecordOf } from '../../../src/runtime/plan.js';
import { openStore, planPipeline, runPipeline } from '../../../src/runtime/run.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { calls, failing } from '../../fixtures/fake-stages.js';
import { fakeSweep, sweepRegistry } from '../../fixtures/fake-sweep.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

const registry = sweepRegistry;
const SWEEP = fakeSweep();

const SCORES = ['score-factor-1-lr-0p1', 'score-factor-1-lr-1e-2', 'score-factor-2-lr-0p1', 'score-factor-2-lr-1e-2'];

let dir: TestDir;
beforeEach(() => {
  calls.length = 0;
  failing.clear();
  dir = testdir({ 'p.yaml': SWEEP });
});
afterEach(() => {
  failing.clear();
  dir.cleanup();
});

const options = () => ({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts') });
const run = () => runPipeline(options());
const count = (id: string) => calls.filter((c) => c === id).length;

describe('a sweep with failed branches', () => {
  it('select chooses among the branches that succeeded, lists the failed one, and the run fails', async () => {
    // the best branch fails: select must choose the best of the others
    failing.add('tune-factor-2-lr-1e-2');
    const summary = await run();
    const byId = new Map(summary.stages.map((s) => [s.id, s]));
    expect(summary.status).toBe('failed');
    expect(byId.get('tune-factor-2-lr-1e-2')!.status).toBe('failed');
    expect(byId.get('score-factor-2-lr-1e-2')!.status).toBe('skipped');
    const pick = byId.get('pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.metrics).toMatchObject({ chosen: 'score-factor-2-lr-0p1', model: 'tune-factor-2-lr-0p1', branches: 4, passed: 3 });
    expect((pick.metrics.table as { id: string }[]).map((r) => r.id)).toEqual(SCORES.slice(0, 3));
    const failed = [{ id: 'score-factor-2-lr-1e-2', coords: { factor: 2, lr: 0.01 }, status: 'skipped', stage: 'tune-factor-2-lr-1e-2', code: 'fake_failure', message: 'stage tune-factor-2-lr-1e-2 failed on purpose' }];
    expect(pick.metrics.failed).toEqual(failed);
    expect(pick.reasons!.at(-1)).toBe("chooses among the 3 of 4 branches that succeeded ('score-factor-2-lr-1e-2' skipped ('tune-factor-2-lr-1e-2' failed))");
    const selection = JSON.parse(readFileSync(path.join(dir.path('artifacts'), 'cache', pick.key, 'selection.json'), 'utf8'));
    expect(selection).toMatchObject({ chosen: 'score-factor-2-lr-0p1', failed });
    // the stage after select ran, on the chosen model
    expect(byId.get('ship')!).toMatchObject({ status: 'ran', metrics: { lr: 0.1, value: 6 } });

    // the grid shows the failed branch; the summary says select chose among 3 of 4
    const grid = renderGrid(summary);
    expect(grid).toContain('pick (select): chose score-factor-2-lr-0p1 by accuracy (max) among 3 of 4 branches');
    expect(grid).toMatch(/2 +1e-2 +accuracy=- +score-factor-2-lr-1e-2 +\(skipped: 'tune-factor-2-lr-1e-2' failed \[fake_failure\]\)/);
    expect(grid).toMatch(/2 +0\.1 +accuracy=0\.6400 +score-factor-2-lr-0p1 +<- chosen/);
    const text = renderSummary(summary);
    expect(text).toContain('pick chose score-factor-2-lr-0p1 among the 3 of 4 branches that succeeded; failed: score-factor-2-lr-1e-2 (skipped: ');
    expect(text).toMatch(/\nfailed in /);
  });

  it('a rerun with the same failure reuses select; one where the branch succeeds runs it again', async () => {
    failing.add('tune-factor-1-lr-0p1');
    const first = await run();
    const firstPick = first.stages.find((s) => s.id === 'pick')!;
    expect(firstPick.metrics.chosen).toBe('score-factor-2-lr-1e-2');

    // the same branch fails again: the same survivors, so select (and ship) come from the cache
    calls.length = 0;
    const again = await run();
    expect(count('tune-factor-1-lr-0p1')).toBe(1);
    const againPick = again.stages.find((s) => s.id === 'pick')!;
    expect(againPick).toMatchObject({ status: 'cached', key: firstPick.key });
    expect(againPick.metrics.failed).toHaveLength(1);
    expect(again.stages.find((s) => s.id === 'ship')!.status).toBe('cached');
    expect(again.status).toBe('failed');

    // the plan says why select may run again
    failing.clear();
    const plan = await planPipeline(options());
    const planned = plan.stages.find((p) => p.stage.id === 'pick')!;
    expect(planned.reasons).toEqual(["branch 'score-factor-1-lr-0p1' failed last time and runs first (its output decides)"]);
    expect(renderPlan(plan)).toContain('pick joins 4 branches: if some fail, it chooses among those that succeed (the run still fails); if all fail, it is skipped');

    // fixed: the branch runs, select runs again on all four, with a new key
    calls.length = 0;
    const fixed = await run();
    expect(fixed.status).toBe('succeeded');
    expect(calls.sort()).toEqual(['score-factor-1-lr-0p1', 'ship', 'tune-factor-1-lr-0p1']);
    const pick = fixed.stages.find((s) => s.id === 'pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.key).not.toBe(firstPick.key);
    expect(pick.metrics).toMatchObject({ branches: 4, passed: 4 });
    expect(pick.metrics.failed).toBeUndefined();
    expect(renderSummary(fixed)).not.toContain('among the');
  });

  it('a failed stage upstream of two branches takes both out; select chooses among the other two', async () => {
    failing.add('depth-factor-2');
    const summary = await run();
    const pick = summary.stages.find((s) => s.id === 'pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.metrics.chosen).toBe('score-factor-1-lr-1e-2');
    expect((pick.metrics.failed as { id: string; stage: string }[]).map((f) => [f.id, f.stage])).toEqual([
      ['score-factor-2-lr-0p1', 'depth-factor-2'],
      ['score-factor-2-lr-1e-2', 'depth-factor-2'],
    ]);
  });

  it('every branch failed: select and what follows are skipped', async () => {
    for (const id of ['tune-factor-1-lr-0p1', 'tune-factor-1-lr-1e-2', 'tune-factor-2-lr-0p1', 'tune-factor-2-lr-1e-2']) failing.add(id);
    const summary = await run();
    const pick = summary.stages.find((s) => s.id === 'pick')!;
    expect(summary.status).toBe('failed');
    expect(pick.status).toBe('skipped');
    expect(pick.error).toMatchObject({ code: 'dependency_failed', message: expect.stringMatching(/^every branch it joins failed: 'score-factor-1-lr-0p1' skipped, /) });
    expect(summary.stages.find((s) => s.id === 'ship')!.status).toBe('skipped');
    expect(count('ship')).toBe(0);
    // a sweep of hundreds of branches keeps its lines short
    expect(listSome(['a', 'b', 'c'], 2)).toBe('a, b and 1 more');
  });

  it('a need of select that is not a branch must succeed', async () => {
    dir.write('p.yaml', SWEEP.replace('needs: [score]', 'needs: [score, extra]').replace('  pick:', '  extra: { uses: fake-train, needs: [src] }\n  pick:'));
    failing.add('extra');
    const summary = await run();
    expect(summary.stages.find((s) => s.id === 'pick')!).toMatchObject({ status: 'skipped', error: { code: 'dependency_failed', message: "'extra' failed" } });
  });

  it('through the executor seam (BullMQ): the job rebuilds select\'s key from its record and is told the failed branches', async () => {
    failing.add('tune-factor-1-lr-1e-2');
    const store = openStore({ artifacts: dir.path('artifacts') });
    const seen: Record<string, unknown> = {};
    // What src/distributed/processor.ts does with a job: recompute the key from the job's
    // `upstream` (the planned record), read the inputs by key, compute with the failed branches.
    const dispatcher: StageDispatcher = {
      async compute(planned, request) {
        const record = stageRecordOf(request.pipeline, planned.stage, planned.record.upstream, {});
        if (record.key !== planned.key) throw new Error(`key skew for ${planned.stage.id}`);
        const byId = new Map(request.pipeline.stages.map((s) => [s.id, s]));
        const inputs: StageInput[] = await Promise.all(
          Object.entries(request.upstream).map(async ([id, key]) => {
            const check = await store.cache.check(key);
            return { id, kind: byId.get(id)!.kind, key, dir: await store.cache.materialize(key), provides: byId.get(id)!.definition.provides, metrics: check.state === 'ok' ? check.meta.metrics : {} };
          }),
        );
        if (planned.stage.id === 'pick') seen.failed = request.failedBranches;
        // A worker reports the stage's own error (its code), not the wrapper.
        return computeStage(planned.stage, { store, key: planned.key, inputs, downstream: planned.downstream, failedBranches: request.failedBranches, pipeline: request.pipeline, runId: request.runId, log: request.log, signal: request.signal, progress: request.progress }).catch((failure) => {
          throw failure instanceof ComputeFailure ? failure.error : failure;
        });
      },
    };
    const summary = await runPipeline({ ...options(), dispatcher });
    const pick = summary.stages.find((s) => s.id === 'pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.metrics.chosen).toBe('score-factor-2-lr-1e-2');
    expect(seen.failed).toEqual([expect.objectContaining({ id: 'score-factor-1-lr-1e-2', status: 'skipped', error: expect.objectContaining({ stage: 'tune-factor-1-lr-1e-2', code: 'fake_failure' }) })]);
    expect((pick.metrics.failed as { id: string }[]).map((f) => f.id)).toEqual(['score-factor-1-lr-1e-2']);
    // the same pipeline run in-process keys select alike
    dir.write('p.yaml', SWEEP);
    const local = await runPipeline({ ...options(), artifacts: dir.path('local') });
    expect(local.stages.find((s) => s.id === 'pick')!.key).toBe(pick.key);
  });

  it('the CLI: run exits 1 and says what select chose among; status lists the failed branch and its grid row', async () => {
    failing.add('tune-factor-2-lr-1e-2');
    const out = { stdout: '', stderr: '' };
    const io = { registry, stdout: (t: string) => (out.stdout += t), stderr: (t: string) => (out.stderr += t), env: { CI: 'true' }, isTTY: false };
    expect(await main(['run', dir.path('p.yaml'), '--artifacts', dir.path('artifacts')], io)).toBe(1);
    expect(out.stderr).toMatch(/^pick chose score-factor-2-lr-0p1 among the 3 of 4 branches that succeeded; failed: score-factor-2-lr-1e-2 \(skipped: 'tune-factor-2-lr-1e-2' failed \[fake_failure\]: stage tune-factor-2-lr-1e-2 failed on purpose\)$/m);
    expect(out.stderr).toMatch(/^✓ ship ran /m);
    out.stdout = '';
    expect(await main(['status', '--artifacts', dir.path('artifacts')], io)).toBe(0);
    expect(out.stdout).toMatch(/^ {4}failed {2}tune-factor-2-lr-1e-2 +stage tune-factor-2-lr-1e-2 failed on purpose \[fake_failure\]$/m);
    expect(out.stdout).toMatch(/^ {4}skipped score-factor-2-lr-1e-2 'tune-factor-2-lr-1e-2' failed \[dependency_failed\]$/m);
    expect(out.stdout).toMatch(/^ {8}2 +1e-2 +accuracy=- +score-factor-2-lr-1e-2 +\(skipped: 'tune-factor-2-lr-1e-2' failed \[fake_failure\]\)$/m);
  });
});
