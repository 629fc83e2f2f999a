/**
 * Review of successive halving through the real runtime with a fake budgeted stage (no TF.js):
 * `fake-epochs` trains `epochs` fake epochs, stops at `ctx.budget` leaving a state to go on
 * from (`ctx.resumeFrom`) and, like the real checkpoint (its epoch seconds, TF.js's
 * per-process weight names), a checkpoint file whose bytes differ from one run to the next.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readStageView, renderStageView } from '../../../src/commands/show.js';
import { renderPlan } from '../../../src/render.js';
import { ValidationError } from '../../../src/runtime/errors.js';
import { openStore, planPipeline, resolvePipeline, runPipeline } from '../../../src/runtime/run.js';
import type { StageDefinition } from '../../../src/runtime/types.js';
import { fineTune } from '../../../src/stages/fine-tune.js';
import { trainHead } from '../../../src/stages/train-head.js';
import { select } from '../../../src/stages/select.js';
import { fakeRegistry } from '../../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

const trained: string[] = [];
/** The branch whose first rung interrupts the run (as Ctrl-C would while it trains), if any. */
let interruptAt: { id: string; controller: AbortController } | undefined;

/** val_acc after `epoch` epochs at `lr`: 0.03 leads up to epoch 2, 0.01 after (halving by 2 from 1 epoch keeps 0.03). */
const accAt = (lr: number, epoch: number) => Math.round((0.5 + (lr === 0.03 ? 0.1 : 0) + epoch * (0.1 - 2 * Math.abs(lr - 0.01))) * 1e4) / 1e4;

const fakeEpochs: StageDefinition<{ lr: number; epochs: number; stop?: { lr: number; at: number } }> = {
  kind: 'fake-epochs',
  version: 1,
  budget: 'epochs',
  budgetMetrics: ['epochs_run', 'budget', 'val_acc'],
  description: 'test: a budgeted training stage',
  paramsSchema: { type: 'object', additionalProperties: false, properties: { lr: { type: 'number', default: 0.01 }, epochs: { type: 'integer', default: 4 }, stop: { type: 'object', properties: { lr: { type: 'number' }, at: { type: 'integer' } }, required: ['lr', 'at'], additionalProperties: false } } },
  consumes: ['data'],
  provides: ['model'],
  async run(ctx, params) {
    if (interruptAt?.id === ctx.id) interruptAt.controller.abort();
    const from = ctx.resumeFrom ? (JSON.parse(await readFile(path.join(ctx.resumeFrom, 'state.json'), 'utf8')) as { epochs: number }).epochs : 0;
    // stop: the branch of that lr stops by itself there (as early stopping does), and a rung says so.
    const until = Math.min(params.epochs, ctx.budget ?? params.epochs, params.stop?.lr === params.lr ? params.stop.at : Infinity);
    for (let e = from; e < until; e++) trained.push(`${ctx.id}:${e + 1}`);
    const val_acc = accAt(params.lr, until);
    if (ctx.budget !== undefined) {
      await writeFile(path.join(ctx.outDir, 'state.json'), JSON.stringify({ epochs: until }));
      await writeFile(path.join(ctx.outDir, 'checkpoint.json'), JSON.stringify({ epochs: until, seconds: performance.now(), pid: process.pid }));
      return { metrics: { epochs_run: until, budget: ctx.budget, val_acc, ...(until < Math.min(ctx.budget, params.epochs) ? { stopped: true } : {}) } };
    }
    await writeFile(path.join(ctx.outDir, 'model.json'), JSON.stringify({ lr: params.lr, epochs: until }));
    return { metrics: { epochs_run: until, val_acc } };
  },
};

const registry = { ...fakeRegistry, 'fake-epochs': fakeEpochs, select };

const PIPELINE = `name: halve
stages:
  src: { uses: source, with: { value: 3 } }
  tune:
    uses: fake-epochs
    needs: [src]
    with: { epochs: 4 }
    matrix: { lr: [0.1, 0.03, 0.01, 0.003] }
  pick:
    uses: select
    needs: [tune]
    with: { metric: val_acc, halving: { factor: 2, min: 1 } }
`;

let dir: TestDir;
beforeEach(() => {
  trained.length = 0;
  interruptAt = undefined;
  dir = testdir({ 'p.yaml': PIPELINE });
});
afterEach(() => dir.cleanup());

const run = (artifacts = 'artifacts', force?: string[], only?: string) => runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path(artifacts), selection: { ...(force ? { force } : {}), ...(only ? { only } : {}) } });
const plan = (only?: string) => planPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), ...(only ? { selection: { only } } : {}) });
const byId = (summary: Awaited<ReturnType<typeof run>>) => new Map(summary.stages.map((s) => [s.id, s]));

describe('halving, reviewed', () => {
  it('prunes by the rungs and keeps the best', async () => {
    const summary = await run();
    const stages = byId(summary);
    expect(summary.status).toBe('succeeded');
    expect(stages.get('pick')!.metrics.chosen).toBe('tune-lr-3e-2');
    expect(stages.get('tune-lr-0p1')!.status).toBe('pruned');
    expect(stages.get('tune-lr-1e-2')!.status).toBe('pruned');
    expect(trained.filter((t) => t.startsWith('tune-lr-3e-2:'))).toEqual(['tune-lr-3e-2:1', 'tune-lr-3e-2:2', 'tune-lr-3e-2:3', 'tune-lr-3e-2:4']);
    expect(trained).toHaveLength(4 + 2 + 2);
  });

  it("the join's key does not depend on the bytes of a pruned branch's checkpoint: two stores, one key; --force of the branches keeps it cached", async () => {
    const first = byId(await run('a'));
    const second = byId(await run('b'));
    expect(second.get('pick')!.key).toBe(first.get('pick')!.key);
    const forced = byId(await run('a', ['tune']));
    expect(forced.get('tune-lr-0p1')!.status).toBe('pruned');
    expect(forced.get('pick')!.status).toBe('cached');
  });

  it('gc keeps the rungs of a kept run: a rerun after gc trains nothing', async () => {
    await run();
    trained.length = 0;
    const store = openStore({ artifacts: dir.path('artifacts') });
    const gc = await store.gc(10);
    expect(gc.removed).toEqual([]);
    const again = byId(await run());
    expect(trained).toEqual([]);
    expect(again.get('tune-lr-0p1')!.status).toBe('pruned');
    expect(again.get('pick')!.status).toBe('cached');
  });

  it('plan replays the decisions from the cached rungs: nothing to run after a run, and --only the join works', async () => {
    const before = renderPlan(await plan());
    expect(before).toMatch(/6 to run, 0 cached\n/);
    await run();
    trained.length = 0;
    const planned = await plan();
    const actions = Object.fromEntries(planned.stages.map((p) => [p.stage.id, p.action]));
    expect(actions).toEqual({ src: 'cached', 'tune-lr-0p1': 'cached', 'tune-lr-3e-2': 'cached', 'tune-lr-1e-2': 'cached', 'tune-lr-3e-3': 'cached', pick: 'cached' });
    const text = renderPlan(planned);
    expect(text).toMatch(/pruned\s+tune-lr-0p1 .*pruned by 'pick' after 1 of 4 epochs .*rank 4 of 4/);
    expect(text).toMatch(/pruned\s+tune-lr-1e-2 .*pruned by 'pick' after 2 of 4 epochs/);
    expect(text).toMatch(/0 to run, 3 cached, 3 pruned/);
    const only = byId(await run('artifacts', undefined, 'pick'));
    expect(only.get('pick')!.status).toBe('cached');
    expect(only.get('pick')!.metrics.chosen).toBe('tune-lr-3e-2');
    expect(only.get('tune-lr-1e-2')!.status).toBe('pruned');
    expect(only.get('tune-lr-1e-2')!.reasons).toEqual([expect.stringMatching(/^pruned by 'pick' after 2 of 4 epochs/)]);
    expect(trained).toEqual([]);
    // Without the join in the run, a branch is no longer halved: --only it trains it to the end.
    const alone = (await plan('tune-lr-0p1')).stages.find((p) => p.stage.id === 'tune-lr-0p1')!;
    expect([alone.action, alone.pruned]).toEqual(['run', undefined]);
  });

  it('a bad halving map names the key at fault, not "must be true or false, or a map with factor, min, got a map"', () => {
    const issuesOf = (halving: string) => {
      dir.write('bad.yaml', PIPELINE.replace('halving: { factor: 2, min: 1 }', `halving: ${halving}`));
      try {
        resolvePipeline({ file: dir.path('bad.yaml'), registry });
      } catch (error) {
        if (error instanceof ValidationError) return error.issues.map((i) => ({ code: i.code, line: i.line, message: i.message }));
        throw error;
      }
      throw new Error('no error');
    };
    expect(issuesOf('{ factor: 1 }')).toEqual([{ code: 'out_of_range', line: 12, message: expect.stringMatching(/^halving\.factor must be >= 2, got number 1/) }]);
    expect(issuesOf('{ factor: 2, min: 0 }')).toEqual([{ code: 'out_of_range', line: 12, message: expect.stringMatching(/^halving\.min must be >= 1, got number 0/) }]);
    expect(issuesOf('{ fact: 2 }')).toEqual([{ code: 'unknown_key', line: 12, message: expect.stringMatching(/unknown key 'fact'.*did you mean 'factor'/) }]);
    // A value that fits no alternative still lists them.
    expect(issuesOf('"yes"')).toEqual([{ code: 'wrong_type', line: 12, message: 'halving must be true or false, or a map with factor, min, got the string "yes"' }]);
  });

  it("plan says when a branch's final entry is cached (a full sweep ran) but its first rung is not: it trains that rung to be ranked", async () => {
    dir.write('full.yaml', PIPELINE.replace('halving: { factor: 2, min: 1 }', 'halving: false'));
    await runPipeline({ file: dir.path('full.yaml'), registry, artifacts: dir.path('artifacts') });
    const planned = await plan();
    const tune = planned.stages.find((p) => p.stage.id === 'tune-lr-1e-2')!;
    expect(tune.action).toBe('cached');
    expect(tune.reasons).toEqual(['inputs unchanged', "its halving rung (epoch 1) is not cached: 'pick' trains it to rank this branch, then reuses this entry if it goes on"]);
    trained.length = 0;
    const halved = byId(await run());
    expect(halved.get('tune-lr-3e-2')!.status).toBe('cached');
    expect(trained).toEqual(['tune-lr-0p1:1', 'tune-lr-3e-2:1', 'tune-lr-1e-2:1', 'tune-lr-3e-3:1', 'tune-lr-3e-2:2', 'tune-lr-1e-2:2']);
  });

  it('a gate no finished branch reaches says how many were pruned', async () => {
    dir.write('p.yaml', PIPELINE.replace('halving: { factor: 2, min: 1 }', 'halving: { factor: 2, min: 1 }, gate: { val_acc: 0.99 }'));
    const pick = byId(await run()).get('pick')!;
    expect(pick.status).toBe('failed');
    expect(pick.error!.message).toMatch(/^no branch of 1 \(3 more pruned by halving\) reached the gate \(val_acc >= 0\.99\)/);
  });

  it('show of a pruned branch shows its rung (where it stopped), not a missing artifact', async () => {
    await run();
    const view = await readStageView(dir.path('artifacts'), 'tune-lr-1e-2', undefined, registry);
    expect(view.status).toBe('pruned');
    expect(view.artifact.present).toBe(true);
    expect(view.artifact.files.map((f) => f.name)).toContain('state.json');
    const text = renderStageView(view);
    expect(text).not.toContain('removed by gc');
    expect(text).toMatch(/artifact: .*\(its halving rung: where it stopped, after 2 epochs\)/);
  });

  it('a pruned branch ends (its ✂ line) when it is decided, before the survivor trains on', async () => {
    await runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), observer: { stageFinished: (summary) => trained.push(`end:${summary.id}:${summary.status}`) } });
    expect(trained.indexOf('end:tune-lr-0p1:pruned')).toBeGreaterThan(-1);
    expect(trained.indexOf('end:tune-lr-0p1:pruned')).toBeLessThan(trained.indexOf('tune-lr-3e-2:2'));
    expect(trained.indexOf('end:tune-lr-1e-2:pruned')).toBeLessThan(trained.indexOf('tune-lr-3e-2:3'));
  });

  it('an interrupt during a rung decides nothing: no branch of the interrupted run is pruned by the rungs that finished', async () => {
    interruptAt = { id: 'tune-lr-1e-2', controller: new AbortController() };
    const summary = await runPipeline({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), signal: interruptAt.controller.signal });
    expect(summary.status).toBe('interrupted');
    const statuses = Object.fromEntries(summary.stages.map((s) => [s.id, [s.status, s.error?.code]]));
    expect(statuses['tune-lr-0p1']).toEqual(['skipped', 'aborted']);
    expect(statuses['tune-lr-3e-2']).toEqual(['skipped', 'aborted']);
    expect(summary.stages.find((s) => s.id === 'tune-lr-3e-2')!.error!.message).toBe("interrupted before 'pick' ranked its rung (epoch 1)");
    interruptAt = undefined;
    trained.length = 0;
    const again = byId(await run());
    expect(again.get('pick')!.metrics.chosen).toBe('tune-lr-3e-2');
    expect(trained.filter((t) => t.endsWith(':1'))).toEqual(['tune-lr-1e-2:1', 'tune-lr-3e-3:1']);
  });

  it("a metric a training stage never reports after a rung is a validation error at select's metric, before any epoch", () => {
    dir.write('bad.yaml', PIPELINE.replace('metric: val_acc', 'metric: accuracy'));
    try {
      resolvePipeline({ file: dir.path('bad.yaml'), registry });
      throw new Error('no error');
    } catch (error) {
      if (!(error instanceof ValidationError)) throw error;
      expect(error.issues.map((i) => [i.code, i.line])).toEqual([['halving_metric_unknown', 12]]);
      expect(error.issues[0].message).toBe("stage 'pick' halves its sweep by 'accuracy', which 'tune' (fake-epochs) does not report after a rung; it reports epochs_run, budget, val_acc: rank by one of those, or set halving: false");
    }
    // The real training stages say what a rung reports.
    for (const stage of [fineTune, trainHead]) expect(stage.budgetMetrics).toEqual(expect.arrayContaining(['loss', 'acc', 'val_loss', 'val_acc']));
  });

  it('a branch that stops by itself within a rung (early stopping) is done, not pruned: it ends and is ranked by its final metrics', async () => {
    // lr 0.003 stops after 1 epoch, inside the first rung (2 epochs): it is as done as in a full sweep.
    dir.write('p.yaml', PIPELINE.replace('halving: { factor: 2, min: 1 }', 'halving: { factor: 2, min: 2 }').replace('with: { epochs: 4 }', 'with: { epochs: 8, stop: { lr: 0.003, at: 1 } }'));
    const stages = byId(await run());
    const stopped = stages.get('tune-lr-3e-3')!;
    expect([stopped.status, stopped.metrics.epochs_run]).toEqual(['ran', 1]);
    const pick = stages.get('pick')!;
    expect((pick.metrics.table as { id: string }[]).map((row) => row.id)).toContain('tune-lr-3e-3');
    expect((pick.metrics.pruned as { id: string }[]).map((row) => row.id)).not.toContain('tune-lr-3e-3');
    // plan replays it as done (its final entry), nothing to run
    expect(renderPlan(await plan())).toMatch(/0 to run, \d+ cached, 2 pruned/);
  });
});
