/**
 * Cross-process locks on a local (or shared) file system, with no native code.
 *
 * A lock is a folder `locks/<name>/` of numbered *generation* files (`1`, `2`, …). Whoever
 * creates generation N+1 after finding N dead or released holds the lock:
 *   - a generation file is created complete: its record is written to a temp file first and
 *     `link()`ed into place, which fails when the name exists (so a reader never sees an empty
 *     or half-written holder, and two contenders never both create the same generation);
 *   - after creating N+1 the winner lists the folder again: a higher generation means it lost a
 *     race with a contender that saw an older state, and it withdraws;
 *   - the highest generation is never deleted (only the winner of a higher one removes lower
 *     ones), so a stale view can never re-create a generation that looks current.
 * Taking over a dead holder is therefore as atomic as taking a free lock: there is no
 * "delete the stale file, then create mine" window in which a second contender slips in.
 *
 * A holder is dead when (same host) /proc/PID/stat is gone, says zombie (`Z`) or dead (`X`),
 * or shows another start time than the one recorded (the PID was reused); on another host, when
 * its lease ran out (the holder touches its file every `heartbeatMs`; stale after `staleMs`).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { link, lstat, mkdir, readdir, readFile, rename, rm, stat, truncate, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AbortedError, LockPathError, LockWaitTimeoutError, StoreLockedError } from './errors.js';

/** What a generation file says about its holder. */
export interface LockHolder {
  pid: number;
  host: string;
  /** Process start time in clock ticks since boot (/proc/PID/stat field 22), when known. */
  startTicks?: number;
  /** ISO time the lock was taken. */
  since: string;
  /** Unique per acquisition. */
  token: string;
  /** What holds it (`run 2026…-ab12`, `gc`), for messages. */
  purpose?: string;
  /** Set when the holder let go; the next contender takes the next generation. */
  released?: boolean;
}

export interface LockOptions {
  /** Wait for a live holder instead of throwing `StoreLockedError`. Default false. */
  wait?: boolean;
  /** Give up waiting after this many ms (`LockWaitTimeoutError`). Default: no limit. */
  timeoutMs?: number;
  /** Stops waiting (`AbortedError`). */
  signal?: AbortSignal;
  /** Written into the holder record. */
  purpose?: string;
  /** Called once when the lock is found held and we start to wait. */
  onWait?(holder: LockHolder): void;
  /** Lease of a holder on another host, ms. Default 30 s. */
  staleMs?: number;
  /** How often a holder touches its file, ms. Default 5 s. */
  heartbeatMs?: number;
}

export interface HeldLock {
  readonly holder: LockHolder;
  readonly file: string;
  /** False once another process took the lock over (our lease ran out). */
  held(): Promise<boolean>;
  release(): Promise<void>;
}

const GENERATION = /^\d+$/;
export const DEFAULT_STALE_MS = 30_000;
export const DEFAULT_HEARTBEAT_MS = 5_000;

/** Takes the lock in folder `dir`; see the module comment. */
export async function acquireLock(dir: string, options: LockOptions = {}): Promise<HeldLock> {
  const started = Date.now();
  let waited = false;
  let pollMs = 20;
  for (;;) {
    if (options.signal?.aborted) throw new AbortedError('interrupted while waiting for a lock');
    const state = await inspectLock(dir, options.staleMs);
    if (state.holder && state.alive) {
      if (!options.wait) throw new StoreLockedError(state.file!, state.holder.pid, describeHolder(state.holder));
      if (!waited) options.onWait?.(state.holder);
      waited = true;
      if (options.timeoutMs !== undefined && Date.now() - started >= options.timeoutMs) throw new LockWaitTimeoutError(state.file!, state.holder.pid, options.timeoutMs);
      await sleep(pollMs, options.signal);
      pollMs = Math.min(pollMs * 2, 500);
      continue;
    }
    const generation = state.generation + 1;
    const holder: LockHolder = { pid: process.pid, host: os.hostname(), startTicks: ownStartTicks(), since: new Date().toISOString(), token: randomBytes(8).toString('hex'), ...(options.purpose ? { purpose: options.purpose } : {}) };
    const file = path.join(dir, String(generation));
    const tmp = path.join(dir, `.${generation}.${process.pid}.${holder.token}.tmp`);
    await writeFile(tmp, JSON.stringify(holder));
    try {
      await link(tmp, file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') continue; // another contender took this generation
      throw error;
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    // A contender that saw an older state may have created a lower generation; one that saw a
    // newer state than ours created a higher one, and then we lost.
    if ((await generations(dir)).some((g) => g > generation)) {
      await unlink(file).catch(() => undefined);
      continue;
    }
    await removeBelow(dir, generation);
    return heldLock(dir, file, generation, holder, options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS, options.staleMs);
  }
}

/** The current holder of a lock, whether it is alive, and the highest generation. Writes nothing. */
export async function inspectLock(dir: string, staleMs = DEFAULT_STALE_MS): Promise<{ generation: number; holder?: LockHolder; alive: boolean; file?: string }> {
  const found = await generations(dir);
  if (!found.length) return { generation: 0, alive: false };
  const generation = Math.max(...found);
  const file = path.join(dir, String(generation));
  const info = await lstat(file).catch(() => undefined);
  if (!info) return { generation, alive: false }; // withdrawn between the listing and now: look again
  if (!info.isFile()) throw new LockPathError(file, `is not a regular file (a ${kindOf(info)})`);
  const holder = parseHolder(await readFile(file, 'utf8').catch(() => ''));
  // Generation files are linked in complete, so an unreadable one was damaged: nobody holds it.
  if (!holder || holder.released) return { generation, holder, alive: false, file };
  return { generation, holder, alive: isHolderAlive(holder, info.mtimeMs, staleMs), file };
}

/** Whether the process a holder record names still runs (see the module comment). */
export function isHolderAlive(holder: Pick<LockHolder, 'pid' | 'host' | 'startTicks'>, mtimeMs: number, staleMs = DEFAULT_STALE_MS): boolean {
  if (holder.host !== os.hostname()) return Date.now() - mtimeMs < staleMs;
  const proc = readProcStat(holder.pid);
  if (proc === 'no-proc') {
    try {
      process.kill(holder.pid, 0);
      return true;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
  if (!proc) return false;
  if (proc.state === 'Z' || proc.state === 'X' || proc.state === 'x') return false;
  return holder.startTicks === undefined || holder.startTicks === proc.startTicks;
}

/** `state` (field 3) and `starttime` (field 22) of /proc/PID/stat; undefined when there is no such process. */
export function readProcStat(pid: number): { state: string; startTicks: number } | undefined | 'no-proc' {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return procAvailable() ? undefined : 'no-proc';
  }
  // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0], startTicks: Number(fields[19]) };
}

let procChecked: boolean | undefined;
function procAvailable(): boolean {
  if (procChecked === undefined) {
    try {
      readFileSync('/proc/self/stat');
      procChecked = true;
    } catch {
      procChecked = false;
    }
  }
  return procChecked;
}

let ownTicks: number | undefined | null = null;
/** This process's start time in clock ticks (/proc/self/stat field 22), when there is a /proc. */
export function ownStartTicks(): number | undefined {
  if (ownTicks === null) {
    const proc = readProcStat(process.pid);
    ownTicks = proc && proc !== 'no-proc' ? proc.startTicks : undefined;
  }
  return ownTicks;
}

/** Parses a holder record; anything that is not one is `undefined`. */
export function parseHolder(text: string): LockHolder | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  if (!Number.isInteger(v.pid) || typeof v.host !== 'string' || typeof v.token !== 'string') return undefined;
  if (v.startTicks !== undefined && typeof v.startTicks !== 'number') return undefined;
  return {
    pid: v.pid as number,
    host: v.host,
    token: v.token,
    since: typeof v.since === 'string' ? v.since : '',
    ...(typeof v.startTicks === 'number' ? { startTicks: v.startTicks } : {}),
    ...(typeof v.purpose === 'string' ? { purpose: v.purpose } : {}),
    ...(v.released === true ? { released: true } : {}),
  };
}

export function describeHolder(holder: LockHolder): string {
  return `${holder.purpose ?? 'a process'} (pid ${holder.pid} on ${holder.host}, since ${holder.since})`;
}

async function generations(dir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      await mkdir(dir, { recursive: true }).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'EEXIST' || e.code === 'ENOTDIR') throw new LockPathError(dir, 'is not a folder');
        throw e;
      });
      return [];
    }
    if (code === 'ENOTDIR') throw new LockPathError(dir, 'is not a folder');
    throw error;
  }
  return names.filter((n) => GENERATION.test(n)).map(Number);
}

async function removeBelow(dir: string, generation: number): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (GENERATION.test(name) && Number(name) < generation) await rm(path.join(dir, name), { force: true }).catch(() => undefined);
    else if (name.endsWith('.tmp')) {
      // A temp record a killed contender left behind (it dies between write and link).
      const info = await stat(path.join(dir, name)).catch(() => undefined);
      if (info && Date.now() - info.mtimeMs > 60_000) await rm(path.join(dir, name), { force: true }).catch(() => undefined);
    }
  }
}

function heldLock(dir: string, file: string, generation: number, holder: LockHolder, heartbeatMs: number, staleMs?: number): HeldLock {
  let released = false;
  const held = async (): Promise<boolean> => {
    if ((await generations(dir).catch(() => [])).some((g) => g > generation)) return false;
    const current = parseHolder(await readFile(file, 'utf8').catch(() => ''));
    return current?.token === holder.token && !current.released;
  };
  // The lease: a holder on another host is alive while its file's mtime is fresh.
  const timer = setInterval(() => {
    const now = new Date();
    void utimes(file, now, now).catch(() => undefined);
  }, Math.min(heartbeatMs, Math.max(1000, (staleMs ?? DEFAULT_STALE_MS) / 3)));
  timer.unref();
  return {
    holder,
    file,
    held,
    async release() {
      if (released) return;
      released = true;
      clearInterval(timer);
      if (!(await held())) return; // taken over meanwhile: the file is someone else's business now
      // Mark released in place (rename over is atomic); the generation file stays the highest.
      const tmp = path.join(dir, `.${generation}.${process.pid}.${holder.token}.release.tmp`);
      try {
        await writeFile(tmp, JSON.stringify({ ...holder, released: true }));
        await rename(tmp, file);
      } catch {
        // No room for a new record (disk full): empty ours in place, which needs no space; an
        // empty record holds nothing.
        await unlink(tmp).catch(() => undefined);
        await truncate(file, 0).catch(() => undefined);
      }
    },
  };
}

function kindOf(info: { isDirectory(): boolean; isSymbolicLink(): boolean }): string {
  return info.isDirectory() ? 'folder' : info.isSymbolicLink() ? 'symbolic link' : 'special file';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
