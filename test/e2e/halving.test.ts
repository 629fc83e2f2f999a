/**
 * Successive halving on the real demo sweep (pipelines/sweep-finetune.yaml, real TF.js, the
 * built CLI): `--set stages.select.with.halving=true` trains each of the four fine-tune branches
 * one epoch, lets the best go on from its rung's checkpoint and prunes the other three; the
 * branch that goes on is the same bytes as that branch in a full sweep of the same file, one at
 * a time and with `--tf-jobs 2` (rungs computed in child processes too).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rungKey } from '../../src/runtime/halving.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const FILE = path.join(root, 'pipelines', 'sweep-finetune.yaml');
const EPOCHS = 3;

interface Stage {
  id: string;
  uses: string;
  status: string;
  key: string;
  metrics: Record<string, unknown>;
  reasons?: string[];
}
interface Summary {
  status: string;
  stages: Stage[];
}

let dir: TestDir;
beforeAll(() => {
  dir = testdir({});
});
afterAll(() => dir.cleanup());

/** The demo sweep, small: 2 head epochs, `epochs` fine-tune epochs, no gates, its export in the temp dir. */
function cli(store: string, extra: string[], epochs = EPOCHS): Summary {
  const sets = ['stages.train-head.with.epochs=2', `stages.fine-tune.with.epochs=${epochs}`, 'stages.select.with.gate={}', 'stages.evaluate.with.gate={}', `stages.export.with.dir=${dir.path(`export-${store}`)}`].flatMap((s) => ['--set', s]);
  const result = spawnSync(process.execPath, [path.join(root, 'bin', 'pipeline.js'), 'run', FILE, '--json', '--artifacts', dir.path(store), ...sets, ...extra], { encoding: 'utf8', env: { ...process.env, PIPELINE_QUIET: '1' }, timeout: 180_000 });
  expect(result.status, result.stderr.slice(-4000)).toBe(0);
  return JSON.parse(result.stdout) as Summary;
}

/** Every file of an entry but _entry.json (its metadata: times, inodes), by path, as sha256. */
function entryFiles(store: string, key: string): Record<string, string> {
  const top = dir.path(store, 'cache', key);
  const out: Record<string, string> = {};
  const walk = (folder: string) => {
    for (const item of readdirSync(folder, { withFileTypes: true })) {
      const full = path.join(folder, item.name);
      if (item.isDirectory()) walk(full);
      else if (full !== path.join(top, '_entry.json')) out[path.relative(top, full)] = createHash('sha256').update(readFileSync(full)).digest('hex');
    }
  };
  walk(top);
  return out;
}

/** The lines of the newest run's log.jsonl in `store`. */
function runLog(store: string): Record<string, unknown>[] {
  const runs = dir.path(store, 'runs');
  const newest = readdirSync(runs).sort().at(-1)!;
  return readFileSync(path.join(runs, newest, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

const fineTunes = (summary: Summary) => summary.stages.filter((s) => s.uses === 'fine-tune');

describe('select halving: true on the demo sweep', () => {
  let full: Summary;
  beforeAll(() => {
    full = cli('full', []);
  }, 200_000);

  for (const jobs of ['1', '2']) {
    it(`prunes 3 of the 4 fine-tune branches after 1 epoch; the 4th is the bytes of a full sweep's (--tf-jobs ${jobs})`, () => {
      const store = `half-${jobs}`;
      const half = cli(store, ['--set', 'stages.select.with.halving=true', '--tf-jobs', jobs]);
      expect(half.status).toBe('succeeded');
      const branches = fineTunes(half);
      expect(branches).toHaveLength(4);
      const pruned = branches.filter((s) => s.status === 'pruned');
      const ran = branches.filter((s) => s.status === 'ran');
      expect(pruned).toHaveLength(3);
      expect(ran).toHaveLength(1);
      const survivor = ran[0];
      for (const stage of pruned) {
        expect(stage.metrics, stage.id).toMatchObject({ epochs_run: 1, budget: 1 });
        expect(stage.reasons!.at(-1)).toMatch(new RegExp(`^pruned by 'select' after 1 of ${EPOCHS} epochs \\(val_acc [0-9.]+, rank [234] of 4; 1 went on\\)$`));
        // ranked below the survivor at the rung
        const rungOf = (s: Stage) => JSON.parse(readFileSync(dir.path(store, 'cache', rungKey(s.key, 1), '_entry.json'), 'utf8')).metrics.val_acc as number;
        expect(rungOf(stage)).toBeLessThanOrEqual(rungOf(survivor));
      }
      expect(survivor.metrics.epochs_run).toBe(EPOCHS);

      // select chose the survivor and lists the pruned three with where they stopped
      const select = half.stages.find((s) => s.id === 'select')!;
      expect(select.metrics).toMatchObject({ chosen: survivor.id, branches: 4, passed: 1 });
      expect((select.metrics.pruned as { id: string; budget: number; of: number }[]).map((r) => [r.id, r.budget, r.of])).toEqual(pruned.map((s) => [s.id, 1, EPOCHS]));
      expect(half.stages.find((s) => s.id === 'evaluate')!.status).toBe('ran');

      // the run's log: 4 rungs of 1 epoch, then the survivor's last 2 epochs from its rung's checkpoint (6 fine-tune epochs, not 4 + 3)
      const log = runLog(store);
      const epochs = log.filter((l) => l.msg === 'epoch done' && fineTunes(half).some((s) => s.id === l.stage));
      expect(epochs.map((l) => [l.stage, l.epoch]).sort()).toEqual([...pruned.map((s) => [s.id, 0]), [survivor.id, 0], [survivor.id, 1], [survivor.id, 2]].sort());
      expect(log.find((l) => l.msg === 'resuming from checkpoint' && l.stage === survivor.id)).toMatchObject({ epoch: 1, from: dir.path(store, 'cache', rungKey(survivor.key, 1)) });
      // with a second TF.js job, rungs are computed in a child process too
      if (jobs === '2') expect(log.some((l) => l.msg === 'stage computing in a child process' && l.rung === 1)).toBe(true);

      // the run's summary is readable: `pipeline status` lists the pruned branches
      const status = spawnSync(process.execPath, [path.join(root, 'bin', 'pipeline.js'), 'status', '--artifacts', dir.path(store)], { encoding: 'utf8', env: { ...process.env, PIPELINE_QUIET: '1' } });
      expect(status.status, status.stderr).toBe(0);
      expect(status.stderr).not.toMatch(/without a usable summary/);
      for (const stage of pruned) expect(status.stdout).toMatch(new RegExp(`^ {4}pruned {2}${stage.id} `, 'm'));

      // the same branch in the full sweep: the same key and every file the same bytes
      const same = fineTunes(full).find((s) => s.id === survivor.id)!;
      expect(same.status).toBe('ran');
      expect(survivor.key).toBe(same.key);
      const files = entryFiles(store, survivor.key);
      expect(Object.keys(files)).toEqual(expect.arrayContaining(['model.json', 'weights.bin']));
      expect(files).toEqual(entryFiles('full', same.key));
      const scores = (m: Record<string, unknown>) => [m.loss, m.acc, m.val_loss, m.val_acc];
      expect(scores(survivor.metrics)).toEqual(scores(same.metrics));
    }, 200_000);
  }

  it('factor 2 with early stopping: the survivor goes on through rungs of 1 and 2 epochs, its stopper kept, to the bytes of a full sweep\'s', () => {
    const sets = ['--set', 'stages.fine-tune.with.early_stopping={ patience: 1, min_delta: 0.01 }'];
    const fullStopping = cli('full-es', sets, 6);
    const half = cli('half-es', [...sets, '--set', 'stages.select.with.halving={ factor: 2 }'], 6);
    expect(half.status).toBe('succeeded');
    const branches = fineTunes(half);
    expect(branches.filter((s) => s.status === 'pruned')).toHaveLength(3);
    const survivor = branches.find((s) => s.status === 'ran')!;
    // 4 went to 1 epoch, 2 of them on to 2, the best of those on to the end (early stopping decides where)
    expect(branches.filter((s) => s.status === 'pruned').map((s) => s.metrics.budget).sort()).toEqual([1, 1, 2]);
    const log = runLog('half-es');
    expect(log.filter((l) => l.msg === 'rung start' && l.stage === survivor.id).map((l) => l.budget)).toEqual([1, 2]);
    const same = fineTunes(fullStopping).find((s) => s.id === survivor.id)!;
    expect(survivor.key).toBe(same.key);
    expect(entryFiles('half-es', survivor.key)).toEqual(entryFiles('full-es', same.key));
    expect([survivor.metrics.epochs_run, survivor.metrics.best_epoch]).toEqual([same.metrics.epochs_run, same.metrics.best_epoch]);
  }, 200_000);
});
