/** Shared pieces of the fault suite: the fake CLI as a child process, zombies, dead pids. */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export const root = path.resolve(import.meta.dirname, '../..');
const tsx = pathToFileURL(path.join(root, 'node_modules/tsx/dist/loader.mjs')).href;
/** `node --import tsx FILE`: one process (the tsx CLI would fork a child that SIGKILL orphans). */
export const tsNode = (file: string, ...args: string[]) => ['--import', tsx, path.join(root, file), ...args];
export const fakeCli = (...args: string[]) => tsNode('test/fixtures/fake-cli.ts', ...args);

export function runCli(cwd: string, args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, fakeCli(...args), { cwd, env: { ...process.env, PIPELINE_QUIET: '1', ...env }, encoding: 'utf8', timeout: 60_000 });
}

export function startCli(cwd: string, args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess & { output: () => { stdout: string; stderr: string }; exited: Promise<number | null> } {
  const child = spawn(process.execPath, fakeCli(...args), { cwd, env: { ...process.env, PIPELINE_QUIET: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c) => (stdout += c));
  child.stderr!.on('data', (c) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  return Object.assign(child, { output: () => ({ stdout, stderr }), exited });
}

export function procState(pid: number): string | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

export function procStartTicks(pid: number): number | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return undefined;
  }
}

/**
 * A zombie: `sh` forks `true` and then execs `sleep`, which never reaps it. Returns its pid and
 * a function that ends the parent (init then reaps the zombie).
 */
export async function makeZombie(): Promise<{ pid: number; startTicks?: number; end: () => void }> {
  const parent = spawn('sh', ['-c', 'true & echo $!; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const pid = await new Promise<number>((resolve) => parent.stdout!.once('data', (c) => resolve(Number(String(c).trim()))));
  for (let i = 0; i < 200 && procState(pid) !== 'Z'; i++) await new Promise((r) => setTimeout(r, 5));
  return { pid, startTicks: procStartTicks(pid), end: () => parent.kill('SIGKILL') };
}

/** A pid with no process (above the usual pid_max of 4,194,304). */
export const deadPid = 2 ** 22 + 12_345;
export const host = os.hostname();

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(predicate: () => boolean, timeoutMs = 30_000, stepMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await sleep(stepMs);
  }
}
