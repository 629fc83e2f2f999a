/**
 * `pipeline run --tf-jobs N`: TF.js stages beyond the one computing in the run's process go to
 * child processes (`src/distributed/local-pool.ts`). Through the fake CLI (its `fake-tf` stage
 * reports the pid it ran in and when): branches overlap in two processes, the results and keys
 * are those of a one-at-a-time run, a child's failure is its stage's, a child that dies fails
 * only its stage (out of memory: its message quotes V8's FATAL ERROR), an interrupt stops the children (also Ctrl-C's SIGINT to the whole process
 * group: they stop at their next step, not die), a SIGTERM to one child stops its stage only, a
 * bad `--tf-jobs` or `tfJobs` is refused, and a child that finds another key refuses.
 * Then the real demo sweep: the same bytes with children as without.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LocalProcessPool, tellingLine } from '../../src/distributed/local-pool.js';
import { ComputeFailure } from '../../src/runtime/compute.js';
import { StageError } from '../../src/runtime/errors.js';
import { planPipeline } from '../../src/runtime/run.js';
import { cliRegistry } from '../fixtures/fake-stages.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { fakeCli, procState, root, runCli, startCli, waitFor } from '../faults/helpers.js';

let dir: TestDir | undefined;
afterEach(() => dir?.cleanup());

type Summary = { status: string; stages: { id: string; status: string; key: string; metrics: Record<string, number>; error?: { code: string; message: string } }[] };

/** source -> three fake-tf branches (factor 2, 3, 5), each sleeping `sleepMs`. */
function sweep(extra = '', sleepMs = 1200): string {
  return [
    'name: par',
    'stages:',
    '  src: { uses: source, with: { value: 1 } }',
    '  work:',
    '    uses: fake-tf',
    '    needs: [src]',
    `    with: { sleepMs: ${sleepMs}${extra} }`,
    '    matrix: { factor: [2, 3, 5] }',
    '',
  ].join('\n');
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null; summary: Summary; stderr: string } {
  const result = runCli(dir!.root, ['run', 'p.yaml', '--json', '--artifacts', 'store', ...args], env);
  return { code: result.status, summary: JSON.parse(result.stdout.trim().split('\n').at(-1) || '{}') as Summary, stderr: result.stderr };
}

/** The log.jsonl of the newest run in the test's `store` ('' until it exists). */
function runLog(): string {
  const runs = path.join(dir!.root, 'store', 'runs');
  const id = existsSync(runs) ? readdirSync(runs).sort().at(-1) : undefined;
  const file = id && path.join(runs, id, 'log.jsonl');
  return file && existsSync(file) ? readFileSync(file, 'utf8') : '';
}

const branches = (summary: Summary) => summary.stages.filter((s) => s.id.startsWith('work-'));

describe('--tf-jobs', () => {
  it('computes branches at once in child processes, with the keys and results of a one-at-a-time run', () => {
    // 3 s a branch: under load a child's start-up (tsx compiling the stages) takes seconds, and the
    // run's own process must still be busy when the child's first branch begins
    dir = testdir({ 'p.yaml': sweep('', 3000) });
    const parallel = run(['--tf-jobs', '2']);
    expect(parallel.code, parallel.stderr).toBe(0);
    const work = branches(parallel.summary);
    expect(work.map((s) => s.metrics.value)).toEqual([2, 3, 5]);
    // two processes, and two branches whose times overlap
    expect(new Set(work.map((s) => s.metrics.pid)).size).toBe(2);
    const overlap = work.some((a) => work.some((b) => a !== b && a.metrics.started_ms < b.metrics.ended_ms && b.metrics.started_ms < a.metrics.ended_ms));
    expect(overlap).toBe(true);
    // no child outlives the run (the run waits for them: their CPU time is the run's)
    for (const pid of work.map((s) => s.metrics.pid)) expect(procState(pid) ?? 'gone').toMatch(/gone|Z/);
    // the children's lines are in the run's log, with their pid, and their progress reached it
    const runs = readFileSync(path.join(dir.root, 'store', 'runs', readdirOne(path.join(dir.root, 'store', 'runs')), 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const childPid = work.map((s) => s.metrics.pid).find((pid) => runs.some((l) => l.msg === 'fake-tf working' && l.pid === pid));
    expect(childPid).toBeDefined();
    expect(runs.some((l) => l.msg === 'stage computing in a child process' && l.pid === childPid)).toBe(true);
    expect(runs.some((l) => l.msg === 'progress' && l.stage === work.find((s) => s.metrics.pid === childPid)!.id)).toBe(true);

    // one at a time, in one process: the same keys and values (and cached on a rerun either way)
    dir.write('p.yaml', sweep('', 3000));
    const serial = runCli(dir.root, ['run', 'p.yaml', '--json', '--artifacts', 'serial', '--tf-jobs', '1']);
    const one = JSON.parse(serial.stdout) as Summary;
    expect(branches(one).map((s) => [s.key, s.metrics.value])).toEqual(work.map((s) => [s.key, s.metrics.value]));
    expect(new Set(branches(one).map((s) => s.metrics.pid)).size).toBe(1);
    expect(branches(run(['--tf-jobs', '2']).summary).map((s) => s.status)).toEqual(['cached', 'cached', 'cached']);
  }, 90_000);

  it("a child's stage error is the stage's, and the other branches finish", () => {
    dir = testdir({ 'p.yaml': sweep(', fail: true', 300) });
    const result = run(['--tf-jobs', '3']);
    expect(result.code).toBe(1);
    for (const stage of branches(result.summary)) {
      expect(stage.status).toBe('failed');
      expect(stage.error).toEqual({ code: 'fake_failure', message: `stage ${stage.id} failed on purpose`, details: { id: stage.id } });
    }
    expect(new Set(branches(result.summary).map((s) => s.id)).size).toBe(3);
  }, 60_000);

  it('a child that dies fails its stage only (stage_process_died), and the next run computes it', () => {
    // crash: true kills the process only when it is a child (in the run's process it just works)
    dir = testdir({ 'p.yaml': sweep('', 800).replace('matrix: { factor: [2, 3, 5] }', 'matrix: { factor: [2, 3, 5], crash: [false, true] }') });
    const result = run(['--tf-jobs', '2']);
    expect(result.code).toBe(1);
    const work = branches(result.summary);
    const died = work.filter((s) => s.status === 'failed');
    expect(died.length).toBeGreaterThan(0);
    for (const stage of died) {
      expect(stage.id).toMatch(/crash-true/);
      expect(stage.error!.code).toBe('stage_process_died');
      expect(stage.error!.message).toMatch(/exited on SIGKILL before it finished; its checkpoints are kept: run again to resume/);
    }
    expect(work.filter((s) => s.id.includes('crash-false')).every((s) => s.status === 'ran')).toBe(true);
    // the dead ones left nothing in the store: one at a time (in this process), they run now
    const again = run(['--tf-jobs', '1']);
    expect(again.code).toBe(0);
    expect(branches(again.summary).filter((s) => s.status === 'ran').map((s) => s.id).sort()).toEqual(died.map((s) => s.id).sort());
  }, 90_000);

  it("a child that runs out of memory: its stage's message says so, not a native stack frame", () => {
    dir = testdir({ 'p.yaml': sweep(', oom: true', 300) });
    const result = run(['--tf-jobs', '3'], { NODE_OPTIONS: '--max-old-space-size=96' });
    expect(result.code).toBe(1);
    const died = branches(result.summary).filter((s) => s.status === 'failed');
    expect(died.length).toBeGreaterThan(0);
    for (const stage of died) {
      expect(stage.error!.code).toBe('stage_process_died');
      expect(stage.error!.message).toMatch(/exited on SIGABRT before it finished \(FATAL ERROR: .*JavaScript heap out of memory\); its checkpoints are kept/);
    }
    // an uncaught error, as Node prints it: the error, not the stack or the version line
    expect(tellingLine("file:///x.js:3\n  throw new Error('boom');\n  ^\n\nError: boom\n    at file:///x.js:3:9\n    at process.processImmediate (node:internal/timers:483:21)\n\nNode.js v20.20.2\n")).toBe('Error: boom');
  }, 90_000);

  it('an interrupt stops the children and exits 130', async () => {
    dir = testdir({ 'p.yaml': sweep('', 60_000) });
    const child = startCli(dir.root, ['run', 'p.yaml', '--json', '--artifacts', 'store', '--tf-jobs', '3']);
    const log = runLog;
    await waitFor(() => (log().match(/fake-tf working/g) ?? []).length === 3, 60_000, 50);
    const pids = [...log().matchAll(/"pid":(\d+),[^\n]*"msg":"fake-tf working"/g)].map((m) => Number(m[1]));
    child.kill('SIGTERM');
    expect(await child.exited).toBe(130);
    await waitFor(() => pids.every((pid) => pid === child.pid || procState(pid) === undefined || procState(pid) === 'Z'), 10_000, 50);
    expect((JSON.parse(child.output().stdout) as Summary).status).toBe('interrupted');
  }, 90_000);

  it('Ctrl-C in a terminal (SIGINT to the process group) stops the children at their next step, not by killing them', async () => {
    dir = testdir({ 'p.yaml': sweep('', 60_000) });
    // A terminal sends Ctrl-C's SIGINT to every process of its foreground group: the run and its children.
    const child = spawn(process.execPath, fakeCli('run', 'p.yaml', '--json', '--artifacts', 'store', '--tf-jobs', '3'), { cwd: dir.root, env: { ...process.env, PIPELINE_QUIET: '1' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    child.stdout!.on('data', (c) => (stdout += c));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const log = runLog;
    await waitFor(() => (log().match(/fake-tf working/g) ?? []).length === 3, 60_000, 50);
    const pids = [...log().matchAll(/"pid":(\d+),[^\n]*"msg":"fake-tf working"/g)].map((m) => Number(m[1]));
    process.kill(-child.pid!, 'SIGINT');
    expect(await exited).toBe(130);
    for (const pid of pids) expect(procState(pid) ?? 'gone').toMatch(/gone|Z/);
    const summary = JSON.parse(stdout) as Summary & { stages: { error?: { details?: unknown } }[] };
    expect(summary.status).toBe('interrupted');
    // each branch stopped as the one in the run's process does: aborted, no process that died
    for (const stage of branches(summary)) expect(stage.error, stage.id).toEqual({ code: 'aborted', message: 'interrupted' });
  }, 90_000);

  it('a SIGTERM to one child stops its stage, which says so; the run goes on', async () => {
    dir = testdir({ 'p.yaml': sweep('', 4000) });
    const child = startCli(dir.root, ['run', 'p.yaml', '--json', '--artifacts', 'store', '--tf-jobs', '2']);
    const log = runLog;
    await waitFor(() => /"pid":\d+,[^\n]*"msg":"fake-tf working"/.test(log()), 60_000, 50);
    const pid = Number(/"pid":(\d+),[^\n]*"msg":"fake-tf working"/.exec(log())![1]);
    process.kill(pid, 'SIGTERM');
    expect(await child.exited).toBe(1);
    const work = branches(JSON.parse(child.output().stdout) as Summary);
    const stopped = work.filter((s) => s.status === 'failed');
    expect(stopped).toHaveLength(1);
    expect(stopped[0].error).toEqual({ code: 'aborted', message: `the child process (pid ${pid}) computing stage '${stopped[0].id}' got SIGTERM and stopped; its checkpoints are kept: run again to resume` });
    expect(work.filter((s) => s.status === 'ran')).toHaveLength(2);
  }, 90_000);

  it('refuses a bad --tf-jobs with exit 2', () => {
    dir = testdir({ 'p.yaml': sweep() });
    for (const bad of ['0', 'two', '1.5']) {
      const result = runCli(dir.root, ['run', 'p.yaml', '--tf-jobs', bad]);
      expect(result.status, result.stderr).toBe(2);
      expect(result.stderr).toMatch(/--tf-jobs must be a whole number of at least 1 or auto/);
    }
  });

  it('the library refuses a bad tfJobs with a UsageError and writes nothing', async () => {
    dir = testdir({});
    const { runPipeline, UsageError } = await import('../../src/index.js');
    for (const bad of [0, 1.5, -2, 'two'] as const) {
      const error = await runPipeline(path.join(root, 'pipelines', 'sweep-finetune.yaml'), { artifacts: dir.path('store'), tfJobs: bad as number }).catch((e: unknown) => e);
      expect(error, String(bad)).toBeInstanceOf(UsageError);
      expect((error as Error).message).toBe(`tfJobs must be a whole number of at least 1 or 'auto', got ${JSON.stringify(bad)}`);
    }
    expect(existsSync(dir.path('store'))).toBe(false);
  });

  it('a child that computes another key than the run refuses (pipeline_changed) and writes nothing', async () => {
    dir = testdir({ 'p.yaml': sweep('', 0) });
    const plan = await planPipeline({ file: dir.path('p.yaml'), registry: cliRegistry, artifacts: dir.path('store') });
    const work = plan.stages.find((p) => p.stage.id === 'work-factor-2')!;
    const pool = new LocalProcessPool({ file: dir.path('p.yaml'), overrides: [], artifacts: dir.path('store'), registry: { url: new URL('../fixtures/fake-stages.ts', import.meta.url).href, name: 'cliRegistry' }, backend: 'cpu', slots: 1 });
    const request = { inputs: [], downstream: [], runId: 'r', log: pino({ level: 'silent' }), signal: new AbortController().signal, progress: () => undefined };
    const failure = await pool.compute({ ...work, key: 'f'.repeat(64) }, request).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ComputeFailure);
    const error = (failure as ComputeFailure).error as StageError;
    expect(error.code).toBe('pipeline_changed');
    expect(error.message).toMatch(/p\.yaml changed while the run was going: stage 'work-factor-2' now has the key [0-9a-f]{12}…, not ffffffffffff…; run again/);
    expect(existsSync(dir.path('store', 'cache', 'f'.repeat(64)))).toBe(false);
    await pool.close();
  }, 60_000);
});

describe('--tf-jobs on the real demo sweep', () => {
  it('gives the bytes of a one-at-a-time run', () => {
    dir = testdir({});
    const sets = ['stages.train-head.with.epochs=2', 'stages.fine-tune.with.epochs=2', 'stages.select.with.gate={}', 'stages.evaluate.with.gate={}', `stages.export.with.dir=${dir.path('export')}`].flatMap((s) => ['--set', s]);
    const cli = (store: string, jobs: string) => {
      const result = spawnSync(process.execPath, [path.join(root, 'bin', 'pipeline.js'), 'run', path.join(root, 'pipelines', 'sweep-finetune.yaml'), '--json', '--artifacts', dir!.path(store), '--tf-jobs', jobs, ...sets], { encoding: 'utf8', env: { ...process.env, PIPELINE_QUIET: '1' }, timeout: 240_000 });
      expect(result.status, result.stderr).toBe(0);
      return JSON.parse(result.stdout) as Summary & { stages: { files?: unknown }[] };
    };
    const serial = cli('one', '1');
    const parallel = cli('two', '2');
    expect(parallel.stages.map((s) => [s.id, s.key])).toEqual(serial.stages.map((s) => [s.id, s.key]));
    // every file of every entry: the same content (sha256) in both stores; export.json alone
    // holds the time it was written (README "Guarantees")
    const digest = (store: string, key: string) =>
      Object.entries(JSON.parse(readFileSync(dir!.path(store, 'cache', key, '_entry.json'), 'utf8')).files as Record<string, { sha256: string }>)
        .filter(([name]) => name !== 'export.json')
        .map(([name, file]) => [name, file.sha256]);
    for (const stage of serial.stages) expect(digest('two', stage.key), stage.id).toEqual(digest('one', stage.key));
    const log = readFileSync(path.join(dir.path('two', 'runs'), readdirOne(dir.path('two', 'runs')), 'log.jsonl'), 'utf8');
    expect(log).toMatch(/stage computing in a child process/);
  }, 300_000);
});

/** The newest entry of a folder (run ids sort by time). */
function readdirOne(folder: string): string {
  return readdirSync(folder).sort().at(-1)!;
}
