/** The built CLI as child processes: `pipeline run`, `pipeline worker`, waiting on their output. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';

export const root = path.resolve(import.meta.dirname, '../..');
const bin = path.join(root, 'bin/pipeline.js');
const env = { ...process.env, CI: 'true' };

export interface Cli {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  /** Resolves with the exit code (or the signal's name). */
  exited: Promise<number | string>;
}

/** Starts `pipeline ARGS…` from the repository root (`extraEnv` added to the environment). */
export function cli(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Cli {
  const child = spawn(process.execPath, [bin, ...args], { cwd: root, env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  const run: Cli = { child, stdout: '', stderr: '', exited: undefined as never };
  child.stdout!.on('data', (d) => (run.stdout += d));
  child.stderr!.on('data', (d) => (run.stderr += d));
  run.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return run;
}

/** Polls `check` every 50 ms until it returns a value, or throws after `ms` with `what`. */
export async function until<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const started = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() - started > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A worker: started, and ready once it says it serves its queues. */
export async function startWorker(redis: string, artifacts: string, extra: string[] = [], extraEnv: NodeJS.ProcessEnv = {}): Promise<Cli> {
  const worker = cli(['worker', '--redis', redis, '--artifacts', artifacts, '--stall-seconds', '4', ...extra], extraEnv);
  await until('the worker to serve its queues', () => worker.stderr.includes(': serving ') || worker.child.exitCode !== null, 30_000);
  if (worker.child.exitCode !== null) throw new Error(`worker exited: ${worker.stderr}`);
  return worker;
}

/** Stops a worker with SIGTERM (it finishes running jobs) and waits for it. */
export async function stopWorker(worker: Cli): Promise<void> {
  if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill('SIGTERM');
  await worker.exited;
}

/** The run log's lines (`runs/<id>/log.jsonl`), parsed; [] while it does not exist. */
export function runLog(artifacts: string, runId: string): Record<string, any>[] {
  try {
    return readFileSync(path.join(artifacts, 'runs', runId, 'log.jsonl'), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}
