/**
 * Sweeps through the real runtime with fake stages: `matrix:` expands a stage and everything
 * downstream of it into branches with readable, stable ids and their own keys; what is upstream
 * runs once; a memo shared by the branches is computed once; `select` joins the branches and
 * passes the best one's model on; bad matrices are exit-2 issues at their file:line.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { renderGrid, renderPlan } from '../../../src/render.js';
import { loadPipelineText } from '../../../src/runtime/load.js';
import { planPipeline, runPipeline } from '../../../src/runtime/run.js';
import { ValidationError } from '../../../src/runtime/errors.js';
import { calls } from '../../fixtures/fake-stages.js';
import { fakeSweep, sweepRegistry } from '../../fixtures/fake-sweep.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

const registry = sweepRegistry;
const sweep = fakeSweep;

let dir: TestDir;
beforeEach(() => {
  calls.length = 0;
  dir = testdir({ 'p.yaml': sweep() });
});
afterEach(() => dir.cleanup());

const options = (overrides: string[] = []) => ({ file: dir.path('p.yaml'), registry, artifacts: dir.path('artifacts'), overrides });
const run = (overrides: string[] = [], extra: Record<string, unknown> = {}) => runPipeline({ ...options(overrides), ...extra });
const count = (id: string) => calls.filter((c) => c === id).length;

const TUNE = ['tune-factor-1-lr-0p1', 'tune-factor-1-lr-1e-2', 'tune-factor-2-lr-0p1', 'tune-factor-2-lr-1e-2'];

describe('matrix expansion', () => {
  it('names each branch by its values and expands the stages downstream until select', async () => {
    const plan = await planPipeline(options());
    expect(plan.stages.map((p) => p.stage.id)).toEqual([
      'src',
      'depth-factor-1',
      'depth-factor-2',
      ...TUNE,
      ...TUNE.map((id) => id.replace('tune', 'score')),
      'pick',
      'ship',
    ]);
    expect(plan.pipeline.matrix!.branches).toEqual({ depth: ['depth-factor-1', 'depth-factor-2'], tune: TUNE, score: TUNE.map((id) => id.replace('tune', 'score')) });
    const byId = new Map(plan.stages.map((p) => [p.stage.id, p]));
    expect(byId.get('tune-factor-2-lr-1e-2')!.stage.coords).toEqual({ factor: 2, lr: 0.01 });
    expect(byId.get('tune-factor-2-lr-1e-2')!.stage.needs).toEqual(['depth-factor-2']);
    expect(byId.get('tune-factor-2-lr-1e-2')!.stage.params).toEqual({ lr: 0.01 });
    expect(byId.get('pick')!.stage.needs).toEqual(TUNE.map((id) => id.replace('tune', 'score')));
    // every branch has its own key; the branches of one stage share its seed (they differ only in the swept values)
    const keys = plan.stages.map((p) => p.key);
    expect(new Set(keys).size).toBe(keys.length);
    expect(new Set(TUNE.map((id) => byId.get(id)!.record.seed)).size).toBe(1);
    // ids and keys are a function of the file: a second load gives the same
    const again = await planPipeline(options());
    expect(again.stages.map((p) => [p.stage.id, p.key])).toEqual(plan.stages.map((p) => [p.stage.id, p.key]));
  });

  it('runs what is upstream once, a shared memo once, every branch once, and select passes the best model on', async () => {
    const first = await run();
    expect(first.status, JSON.stringify(first.stages.map((s) => s.error).filter(Boolean))).toBe('succeeded');
    expect(count('src')).toBe(1);
    expect(TUNE.map(count)).toEqual([1, 1, 1, 1]);
    expect(calls.filter((c) => c.endsWith(':memo'))).toHaveLength(1);
    const pick = first.stages.find((s) => s.id === 'pick')!;
    expect(pick.status).toBe('ran');
    expect(pick.metrics).toMatchObject({ chosen: 'score-factor-2-lr-1e-2', model: 'tune-factor-2-lr-1e-2', accuracy: 0.78, branches: 4, passed: 4, choice: { factor: 2, lr: 0.01 } });
    expect((pick.metrics.table as { id: string; value: number }[]).map((r) => [r.id, r.value])).toEqual([
      ['score-factor-1-lr-0p1', 0.49],
      ['score-factor-1-lr-1e-2', 0.63],
      ['score-factor-2-lr-0p1', 0.64],
      ['score-factor-2-lr-1e-2', 0.78],
    ]);
    // the stage after select ran once, on the chosen branch's model
    expect(first.stages.find((s) => s.id === 'ship')!.metrics).toMatchObject({ lr: 0.01, value: 6 });
    // the summary carries the grid; each branch its coordinates
    expect(first.matrix!.axes.map((a) => [a.stage, a.param, a.values])).toEqual([['depth', 'factor', [1, 2]], ['tune', 'lr', [0.1, 0.01]]]);
    expect(first.stages.find((s) => s.id === 'tune-factor-1-lr-0p1')!.branch).toEqual({ template: 'tune', coords: { factor: 1, lr: 0.1 } });
    const grid = renderGrid(first);
    expect(grid).toContain('grid: depth.factor [1, 2] x tune.lr [0.1, 1e-2]');
    expect(grid).toMatch(/2 +1e-2 +accuracy=0\.7800 +score-factor-2-lr-1e-2 +<- chosen/);

    // a second run: every stage cached, the same ids and keys
    calls.length = 0;
    const second = await run();
    expect(second.stages.every((s) => s.status === 'cached')).toBe(true);
    expect(calls).toEqual([]);
    expect(second.stages.map((s) => [s.id, s.key])).toEqual(first.stages.map((s) => [s.id, s.key]));
  });

  it('changing one value re-runs only the branches it names (and the join)', async () => {
    await run();
    calls.length = 0;
    dir.write('p.yaml', sweep('[0.1, 0.02]'));
    const plan = await planPipeline(options());
    const running = plan.stages.filter((p) => p.action === 'run').map((p) => p.stage.id);
    expect(running).toEqual(['tune-factor-1-lr-2e-2', 'tune-factor-2-lr-2e-2', 'score-factor-1-lr-2e-2', 'score-factor-2-lr-2e-2', 'pick', 'ship']);
    expect(plan.stages.find((p) => p.stage.id === 'tune-factor-1-lr-2e-2')!.reasons).toEqual(['no cached result (first run of this stage)']);
    const summary = await run();
    expect(calls.sort()).toEqual(['score-factor-1-lr-2e-2', 'score-factor-2-lr-2e-2', 'ship', 'tune-factor-1-lr-2e-2', 'tune-factor-2-lr-2e-2']);
    expect(summary.stages.filter((s) => s.status === 'ran').map((s) => s.id)).toEqual(running);
    expect(summary.stages.find((s) => s.id === 'pick')!.metrics.chosen).toBe('score-factor-2-lr-2e-2');
  });

  it('--force and --only take a swept stage id for all its branches; plan shows the expansion', async () => {
    await run();
    calls.length = 0;
    await run([], { selection: { force: ['tune'] } });
    expect(calls.filter((c) => c.startsWith('tune')).sort()).toEqual(TUNE);
    const text = renderPlan(await planPipeline({ ...options(), selection: { only: 'score' } }));
    expect(text).toContain('matrix: depth.factor [1, 2] x tune.lr [0.1, 1e-2] -> 4 branches');
    expect(text).toContain('tune -> tune-factor-1-lr-0p1, tune-factor-1-lr-1e-2, tune-factor-2-lr-0p1, tune-factor-2-lr-1e-2');
    expect(text).toMatch(/cached +score-factor-2-lr-1e-2 +fake-score +[0-9a-f]{12} +\[factor=2 lr=1e-2\]/);
    expect(text).not.toContain(' pick ');
  });

  it('a failing gate in select fails the stage with the table', async () => {
    dir.write('p.yaml', sweep().replace('with: { metric: accuracy }', 'with: { metric: accuracy, gate: { accuracy: 0.9 } }'));
    const summary = await run();
    const pick = summary.stages.find((s) => s.id === 'pick')!;
    expect(summary.status).toBe('failed');
    expect(pick.error!.code).toBe('select_none_passed');
    expect((pick.metrics.table as unknown[]).length).toBe(4);
    expect(summary.stages.find((s) => s.id === 'ship')!.status).toBe('skipped');
  });

  it('select with mode min on a loss, and a branch that lacks the metric is named', async () => {
    dir.write('p.yaml', sweep().replace('needs: [score]\n    with: { metric: accuracy }', 'needs: [tune]\n    with: { metric: val_loss }').replace('  score: { uses: fake-score, needs: [tune] }\n', ''));
    const summary = await run();
    expect(summary.stages.find((s) => s.id === 'pick')!.metrics).toMatchObject({ chosen: 'tune-factor-2-lr-1e-2', mode: 'min', model: 'tune-factor-2-lr-1e-2' });
    dir.write('p.yaml', sweep().replace('with: { metric: accuracy }', 'with: { metric: val_acc }'));
    const missing = await run();
    expect(missing.stages.find((s) => s.id === 'pick')!.error).toMatchObject({ code: 'select_metric_missing' });
    expect(missing.stages.find((s) => s.id === 'pick')!.error!.message).toMatch(/branch 'score-factor-1-lr-0p1' \(fake-score\) reports no number 'val_acc'; its metrics: accuracy, lr, value/);
  });
});

describe('matrix errors (exit 2, at file:line)', () => {
  const issuesOf = (text: string) => {
    const result = loadPipelineText(text, 'p.yaml', registry);
    expect(result.ok).toBe(false);
    return result.ok ? [] : result.issues.map((i) => `${i.line}:${i.code}:${i.path}: ${i.message}`);
  };

  it('an unknown param, an empty list, a param also in with:, a value twice', () => {
    expect(issuesOf(sweep('[0.1]').replace('matrix: { factor: [1, 2] }', 'matrix: { factr: [1, 2] }'))).toEqual([
      expect.stringMatching(/^7:matrix_unknown_param:stages\.depth\.matrix\.factr: stage 'depth' \(transform\) has no param 'factr' to sweep; a matrix names params of its own stage \(factor, sleepMs/),
    ]);
    expect(issuesOf(sweep('[]'))).toEqual([expect.stringMatching(/^11:matrix_empty:stages\.tune\.matrix\.lr: matrix\.lr of stage 'tune' is an empty list/)]);
    expect(issuesOf(sweep().replace("matrix: { lr: [0.1, 0.01] }", 'matrix: {}'))).toEqual([expect.stringMatching(/^11:matrix_empty:stages\.tune\.matrix: stage 'tune' has an empty matrix/)]);
    expect(issuesOf(sweep().replace('needs: [depth]', 'needs: [depth]\n    with: { lr: 0.5 }'))).toEqual([
      expect.stringMatching(/^11:matrix_collision:stages\.tune\.with\.lr: 'lr' of stage 'tune' is set both in with: and in matrix:; remove it from with:/),
    ]);
    expect(issuesOf(sweep('[0.1, 0.01, 1e-1]'))).toEqual([expect.stringMatching(/^11:matrix_collision:stages\.tune\.matrix\.lr\.2: matrix\.lr of stage 'tune' lists 0\.1 twice \(items 0 and 2\)/)]);
  });

  it('a matrix with too many combinations is refused before anything is expanded', () => {
    const many = JSON.stringify(Array.from({ length: 20 }, (_, i) => i + 1));
    const text = sweep().replace('matrix: { factor: [1, 2] }', `matrix: { factor: ${many}, sleepMs: ${many} }`);
    expect(issuesOf(text)).toEqual([expect.stringMatching(/^7:matrix_too_large:stages\.depth\.matrix: the matrix of stage 'depth' makes 400 combinations; a stage may sweep at most 256/)]);
    const chain = `name: wide\nstages:\n  src: { uses: source }\n${['a', 'b', 'c'].map((id, i) => `  ${id}: { uses: transform, needs: [${i ? ['a', 'b'][i - 1] : 'src'}], matrix: { factor: ${many} } }`).join('\n')}\n`;
    expect(issuesOf(chain)).toEqual([expect.stringMatching(/matrix_too_large:stages\.c\.uses: the sweeps would expand the pipeline to more than 2048 stages at 'c' \(8000 branches of it\)/)]);
  });

  it('a value its param does not accept is reported at that value', () => {
    expect(issuesOf(sweep('[0.1, -1]'))).toEqual([expect.stringMatching(/^11:out_of_range:stages\.tune\.matrix\.lr\.1: /)]);
  });

  it('a select with one branch, and a branch id that is already a stage', () => {
    const one = `name: one
stages:
  src: { uses: source }
  tune: { uses: fake-train, needs: [src] }
  pick: { uses: select, needs: [tune] }
`;
    expect(issuesOf(one)).toEqual([expect.stringMatching(/^5:join_without_branches:stages\.pick\.needs: stage 'pick' \(select\) picks among branches, but its needs give only 'tune'; need a stage with a matrix:/)]);
    expect(issuesOf(sweep('[0.1, 0.01]', '  tune-factor-1-lr-0p1: { uses: source }\n'))).toEqual([
      expect.stringMatching(/matrix_collision:stages\.tune-factor-1-lr-0p1\.uses: two stages would have the id 'tune-factor-1-lr-0p1' \(from 'tune' and from 'tune-factor-1-lr-0p1'\)/),
    ]);
  });

  it('the same param name swept on two stages is qualified by the stage in ids', async () => {
    const text = sweep().replace('matrix: { factor: [1, 2] }', 'matrix: { factor: [1, 2] }\n  again:\n    uses: transform\n    needs: [depth]\n    matrix: { factor: [3] }').replace('needs: [depth]\n    matrix: { lr', 'needs: [again]\n    matrix: { lr');
    const result = loadPipelineText(text, 'p.yaml', registry);
    expect(result.ok && result.pipeline.matrix!.branches.again).toEqual(['again-depth-factor-1-again-factor-3', 'again-depth-factor-2-again-factor-3']);
  });

  it('a --set of a swept param collides with the matrix, reported against the --set', async () => {
    await expect(planPipeline(options(['stages.tune.with.lr=0.3']))).rejects.toThrow(ValidationError);
    const result = loadPipelineText(readFileSync(dir.path('p.yaml'), 'utf8'), 'p.yaml', registry, ['stages.tune.with.lr=0.3']);
    expect(!result.ok && result.issues.map((i) => [i.file, i.code, i.message])).toEqual([['--set', 'matrix_collision', expect.stringMatching(/^--set stages\.tune\.with\.lr=0\.3: 'lr' of stage 'tune' is set both in with: and in matrix:/)]]);
  });
});
