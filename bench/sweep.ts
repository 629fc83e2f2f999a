/**
 * `npm run bench sweep`: what a 2x2 sweep (pipelines/sweep-finetune.yaml: unfreeze depth x
 * fine-tune lr) costs against one branch of it. Each run is the real CLI as a child process on a
 * fresh artifact store (cold: ingest, preprocess, the frozen pass and train-head included):
 *
 * - one branch: the same file with each matrix replaced by one of its values and the `select`
 *   stage dropped (what a user runs to try one setting), once per cell of the grid;
 * - the sweep: the file as it is, all four branches in one run, twice: `--tf-jobs 1` (every
 *   TF.js stage in the run's one process, one after the other) and the default `--tf-jobs auto`
 *   (on wasm/cpu one per core: a branch in the run's process, another in a child process);
 * - the sweep halved: the same file with `select` set to `halving: true` (successive halving,
 *   factor 3 from 1 epoch: every branch trains 1 epoch, the best one goes on to the end), default
 *   `--tf-jobs`. It trains fewer epochs and may choose another branch than the full grid: the
 *   chosen branch and its val_acc are printed beside the full grid's.
 *
 * Each run's CPU seconds (user + system, children included, from /usr/bin/time when present)
 * are printed beside its wall time: running branches at once saves wall time, not CPU.
 *
 * Prints one JSON line and a table; the target is a sweep under 2x the mean single branch
 * (four separate runs cost 4x: the sweep shares ingest, preprocess, load-base, the frozen pass
 * and train-head, and each extra branch costs only its fine-tune and evaluate).
 * Options: `--file F` sweeps another pipeline file (bench/sweep-mobilenet.yaml: the real MobileNetV2); `--repeat N` (default 1) runs the whole set N times and reports medians; `--set
 * path=value` (repeatable) is passed to every run, e.g. `--set stages.fine-tune.with.epochs=5`.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_FILE = path.join(ROOT, 'pipelines', 'sweep-finetune.yaml');

type Stage = { uses: string; needs?: string[]; with?: Record<string, unknown>; matrix?: Record<string, unknown[]> };
type Doc = { name: string; stages: Record<string, Stage> };
type Summary = { status: string; seconds: number; stages: { id: string; status: string; seconds: number; metrics: Record<string, unknown>; branch?: { template: string } }[] };

/** One run's figures. */
interface RunFigures {
  label: string;
  wallS: number;
  /** User + system CPU seconds of the run and its child processes (undefined without /usr/bin/time). */
  cpuS?: number;
  pipelineS: number;
  branches: number;
  frozenForwards: number;
  stageSeconds: Record<string, number>;
  /** The branch select chose, and its value; the branches pruned (halving). */
  chosen?: { id: string; value: number };
  pruned: number;
  /** Seconds of the stages that are not branches (run once), and of the branch stages (summed). */
  onceS: number;
  branchS: number;
  accuracy: Record<string, number>;
}

/** The sweep file with local paths made absolute (the variants are written elsewhere) and export in `exportDir`. */
function readSweep(file: string, exportDir: string): Doc {
  const doc = YAML.parse(readFileSync(file, 'utf8')) as Doc;
  for (const stage of Object.values(doc.stages)) {
    if (stage.uses === 'ingest') stage.with!.path = path.resolve(path.dirname(file), stage.with!.path as string);
    if (stage.uses === 'load-base') stage.with!.model = path.resolve(path.dirname(file), stage.with!.model as string);
    if (stage.uses === 'export') stage.with!.dir = exportDir;
  }
  return doc;
}

/** The cells of the grid: one value per swept param of each swept stage. */
function cellsOf(doc: Doc): Record<string, Record<string, unknown>>[] {
  let cells: Record<string, Record<string, unknown>>[] = [{}];
  for (const [id, stage] of Object.entries(doc.stages)) {
    for (const [param, values] of Object.entries(stage.matrix ?? {})) {
      cells = cells.flatMap((cell) => values.map((value) => ({ ...cell, [id]: { ...cell[id], [param]: value } })));
    }
  }
  return cells;
}

/** The pipeline of one cell: its values in `with:`, no matrix, the select stage replaced by what it needs. */
function singleBranch(doc: Doc, cell: Record<string, Record<string, unknown>>): Doc {
  const out = structuredClone(doc);
  out.name = `${doc.name}-one`;
  const joins = new Map<string, string[]>();
  for (const [id, stage] of Object.entries(out.stages)) {
    if (stage.uses === 'select') {
      joins.set(id, stage.needs ?? []);
      delete out.stages[id];
      continue;
    }
    if (stage.matrix) stage.with = { ...stage.with, ...cell[id] };
    delete stage.matrix;
  }
  for (const stage of Object.values(out.stages)) stage.needs = stage.needs?.flatMap((need) => joins.get(need) ?? [need]);
  return out;
}

const TIME = '/usr/bin/time';

async function runCli(file: string, artifacts: string, sets: string[], extra: string[]): Promise<{ wallS: number; cpuS?: number; summary: Summary }> {
  const started = performance.now();
  const command = [process.execPath, path.join(ROOT, 'bin', 'pipeline.js'), 'run', file, '--json', '--artifacts', artifacts, ...sets.flatMap((set) => ['--set', set]), ...extra];
  const timeFile = `${artifacts}.time`;
  const timed = existsSync(TIME) ? [TIME, '-o', timeFile, '-f', '%U %S', ...command] : command;
  const child = spawn(timed[0], timed.slice(1), { cwd: ROOT, env: { ...process.env, PIPELINE_QUIET: '1', CI: 'true' }, stdio: ['ignore', 'pipe', 'ignore'] });
  let stdout = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const wallS = (performance.now() - started) / 1000;
  const cpuS = existsSync(timeFile) ? readFileSync(timeFile, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number).reduce((a, b) => a + b, 0) : undefined;
  const summary = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Summary;
  if (code !== 0 || summary.status !== 'succeeded') throw new Error(`${file}: exit ${code}, status ${summary.status}: ${stdout.slice(0, 2000)}`);
  return { wallS, cpuS, summary };
}

async function measure(label: string, doc: Doc, work: string, sets: string[], extra: string[] = []): Promise<RunFigures> {
  const file = path.join(work, `${label}.yaml`);
  writeFileSync(file, YAML.stringify(doc));
  const artifacts = path.join(work, `${label}-artifacts`);
  const { wallS, cpuS, summary } = await runCli(file, artifacts, sets, extra);
  rmSync(artifacts, { recursive: true, force: true });
  const stageSeconds: Record<string, number> = {};
  const accuracy: Record<string, number> = {};
  for (const stage of summary.stages) {
    const template = stage.branch?.template ?? stage.id;
    stageSeconds[template] = round((stageSeconds[template] ?? 0) + stage.seconds, 2);
    if (typeof stage.metrics.accuracy === 'number') accuracy[stage.id] = stage.metrics.accuracy;
  }
  const select = summary.stages.find((s) => typeof s.metrics.chosen === 'string');
  const metric = select ? String(select.metrics.metric) : '';
  const swept = new Set(['unfreeze', 'fine-tune']);
  const branchS = summary.stages.filter((s) => s.branch || swept.has(s.id)).reduce((n, s) => n + s.seconds, 0);
  return {
    label,
    wallS: round(wallS, 2),
    ...(cpuS !== undefined ? { cpuS: round(cpuS, 1) } : {}),
    onceS: round(summary.stages.reduce((n, s) => n + s.seconds, 0) - branchS, 2),
    branchS: round(branchS, 2),
    pipelineS: summary.seconds,
    branches: Math.max(1, summary.stages.filter((s) => s.branch?.template === 'fine-tune').length),
    frozenForwards: summary.stages.reduce((n, s) => n + ((s.metrics.frozen_forwards as number | undefined) ?? 0), 0),
    stageSeconds,
    accuracy,
    ...(select ? { chosen: { id: String(select.metrics.chosen), value: select.metrics[metric] as number } } : {}),
    pruned: summary.stages.filter((s) => s.status === 'pruned').length,
  };
}

export async function benchSweep(args: string[] = []): Promise<void> {
  const at = args.indexOf('--repeat');
  const repeat = at >= 0 ? Math.max(1, Number(args[at + 1]) || 1) : 1;
  const file = args.includes('--file') ? path.resolve(args[args.indexOf('--file') + 1]) : DEFAULT_FILE;
  const sets = args.flatMap((arg, i) => (arg === '--set' && args[i + 1] ? [args[i + 1]] : []));
  const work = mkdtempSync(path.join(tmpdir(), 'bench-sweep-'));
  try {
    const sweep = readSweep(file, path.join(work, 'export'));
    const cells = cellsOf(sweep);
    const singles: RunFigures[] = [];
    const serialSweeps: RunFigures[] = [];
    const sweeps: RunFigures[] = [];
    const halved: RunFigures[] = [];
    const halving = halvedSweep(sweep);
    for (let r = 0; r < repeat; r++) {
      for (const [i, cell] of cells.entries()) singles.push(await measure(`one-${i}`, singleBranch(sweep, cell), work, sets));
      serialSweeps.push(await measure('sweep-serial', sweep, work, sets, ['--tf-jobs', '1']));
      sweeps.push(await measure('sweep', sweep, work, sets));
      if (halving) halved.push(await measure('sweep-halving', halving, work, sets));
    }
    const halvedWall = halved.length ? median(halved.map((s) => s.wallS)) : undefined;
    const oneMean = mean(singles.map((s) => s.wallS));
    const sweepWall = median(sweeps.map((s) => s.wallS));
    const serialWall = median(serialSweeps.map((s) => s.wallS));
    const cpuOf = (runs: RunFigures[]) => (runs.every((s) => s.cpuS !== undefined) ? runs.map((s) => s.cpuS!) : undefined);
    const oneCpu = cpuOf(singles);
    const sweepCpu = cpuOf(sweeps);
    const serialCpu = cpuOf(serialSweeps);
    const result = {
      bench: 'sweep',
      pipeline: path.relative(ROOT, file),
      grid: cells.map((cell) => Object.entries(cell).map(([id, params]) => `${id}.${Object.entries(params).map(([k, v]) => `${k}=${v}`).join(',')}`).join(' ')),
      repeat,
      sets,
      one_branch_wall_s: singles.map((s) => s.wallS),
      one_branch_mean_s: round(oneMean, 2),
      sweep_wall_s: sweeps.map((s) => s.wallS),
      sweep_over_one_branch: round(sweepWall / oneMean, 2),
      sweep_tf_jobs_1_wall_s: serialSweeps.map((s) => s.wallS),
      sweep_tf_jobs_1_over_one_branch: round(serialWall / oneMean, 2),
      cpu_s: oneCpu && sweepCpu && serialCpu ? { one_branch: oneCpu, sweep: sweepCpu, sweep_tf_jobs_1: serialCpu, sweep_over_one_branch: round(median(sweepCpu) / mean(oneCpu), 2), sweep_tf_jobs_1_over_one_branch: round(median(serialCpu) / mean(oneCpu), 2) } : undefined,
      four_separate_runs_s: round(oneMean * cells.length, 2),
      frozen_forwards: { one_branch: singles[0].frozenForwards, sweep: sweeps[0].frozenForwards, four_separate_runs: singles.slice(0, cells.length).reduce((n, s) => n + s.frozenForwards, 0) },
      stage_seconds: { one_branch: singles.map((s) => s.stageSeconds), sweep: sweeps.map((s) => s.stageSeconds) },
      // The model: sweep = once + sum of branches; one branch = once + one branch; under 2x needs branches < once.
      once_s: { one_branch: singles.map((s) => s.onceS), sweep: sweeps.map((s) => s.onceS), sweep_tf_jobs_1: serialSweeps.map((s) => s.onceS) },
      branch_s: { one_branch: singles.map((s) => s.branchS), sweep: sweeps.map((s) => s.branchS), sweep_tf_jobs_1: serialSweeps.map((s) => s.branchS) },
      accuracy: sweeps[0].accuracy,
      chosen: { sweep: sweeps[0].chosen, ...(halved.length ? { sweep_halving: halved[0].chosen } : {}) },
      ...(halvedWall !== undefined ? { sweep_halving_wall_s: halved.map((s) => s.wallS), sweep_halving_over_one_branch: round(halvedWall / oneMean, 2), sweep_halving_pruned: halved[0].pruned, ...(halved.every((s) => s.cpuS !== undefined) && oneCpu ? { sweep_halving_cpu_over_one_branch: round(median(halved.map((s) => s.cpuS!)) / mean(oneCpu), 2) } : {}) } : {}),
      target: { sweep_under_2x_one_branch: sweepWall < 2 * oneMean, ...(halvedWall !== undefined ? { sweep_halving_under_2x_one_branch: halvedWall < 2 * oneMean } : {}) },
    };
    console.log(JSON.stringify(result));
    console.log(`\nsweep (${path.relative(ROOT, file)}, ${cells.length} branches): one branch ${singles.map((s) => s.wallS.toFixed(1)).join(' / ')} s (mean ${oneMean.toFixed(1)} s); 2x2 sweep ${sweeps.map((s) => s.wallS.toFixed(1)).join(' / ')} s, with --tf-jobs 1 ${serialSweeps.map((s) => s.wallS.toFixed(1)).join(' / ')} s`);
    console.log(`  sweep / one branch = ${result.sweep_over_one_branch} (target < 2: ${result.target.sweep_under_2x_one_branch ? 'pass' : 'FAIL'}); with --tf-jobs 1: ${result.sweep_tf_jobs_1_over_one_branch}; four separate runs would take ${result.four_separate_runs_s.toFixed(1)} s`);
    if (result.cpu_s) console.log(`  CPU seconds: one branch ${result.cpu_s.one_branch.join(' / ')}, sweep ${result.cpu_s.sweep.join(' / ')} (${result.cpu_s.sweep_over_one_branch}x), with --tf-jobs 1 ${result.cpu_s.sweep_tf_jobs_1.join(' / ')} (${result.cpu_s.sweep_tf_jobs_1_over_one_branch}x)`);
    if (halvedWall !== undefined) {
      const [full, half] = [result.chosen.sweep, result.chosen.sweep_halving];
      console.log(`  halved sweep (select halving: true) ${halved.map((s) => s.wallS.toFixed(1)).join(' / ')} s = ${result.sweep_halving_over_one_branch}x one branch (target < 2: ${result.target.sweep_halving_under_2x_one_branch ? 'pass' : 'FAIL'}), ${halved[0].pruned} of ${cells.length} branches pruned; chose ${half?.id} (${half?.value.toFixed(4)}), the full grid chose ${full?.id} (${full?.value.toFixed(4)})`);
    }
    console.log(`  frozen forwards: one branch ${result.frozen_forwards.one_branch}, sweep ${result.frozen_forwards.sweep}, four separate runs ${result.frozen_forwards.four_separate_runs}`);
    console.log(`  stages run once: one branch ${result.once_s.one_branch.join(' / ')} s, sweep ${result.once_s.sweep.join(' / ')} s; branch stages (unfreeze + fine-tune): one branch ${result.branch_s.one_branch.join(' / ')} s, sweep ${result.branch_s.sweep.join(' / ')} s (all four)`);
    console.log(`  seconds per stage (sweep, branches summed): ${JSON.stringify(result.stage_seconds.sweep[0])}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The sweep with its select halving (successive halving, factor 3 from 1 epoch); undefined when it has no select. */
function halvedSweep(doc: Doc): Doc | undefined {
  const out = structuredClone(doc);
  const select = Object.values(out.stages).find((stage) => stage.uses === 'select');
  if (!select) return undefined;
  select.with = { ...select.with, halving: true };
  out.name = `${doc.name}-halving`;
  return out;
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function round(value: number, digits: number): number {
  return Math.round(value * 10 ** digits) / 10 ** digits;
}
