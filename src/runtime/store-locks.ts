/**
 * The store's locks (see lock.ts for how one lock works):
 *   locks/keys/<key>/         one lock per key: one run computes it, the others wait and reuse it
 *   locks/store/              taken only by gc, which also waits for no run to be registered
 *   locks/runs/<run-id>.json  a registered (live) run; gc does not start while one is alive
 * Runs of any pipelines share the store at once; only gc excludes them.
 */
import { readdir, readFile, stat, unlink, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AbortedError, LockWaitTimeoutError, StoreLockedError } from './errors.js';
import { writeJsonAtomic } from './fsutil.js';
import { acquireLock, describeHolder, inspectLock, isHolderAlive, ownStartTicks, parseHolder, type HeldLock, type LockHolder } from './lock.js';

/** Options for waiting on the store (gc's lock, or a run waiting for gc). */
export interface StoreWaitOptions {
  /** Wait instead of throwing `StoreLockedError` (exit 3). */
  wait?: boolean;
  /** Stop waiting after this many ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called once when the wait starts, with whom we wait for. */
  onWait?(holder: string): void;
}

export class StoreLocks {
  readonly root: string;
  /** Lease of a holder on another host (ms); tests shorten it. */
  staleMs?: number;
  constructor(root: string) {
    this.root = path.resolve(root);
  }

  dir(...parts: string[]): string {
    return path.join(this.root, 'locks', ...parts);
  }

  /**
   * The lock of one key: whoever holds it computes the key; the others wait (always: waiting
   * for a key is waiting for a result, not for the store).
   */
  async claimKey(key: string, options: { signal?: AbortSignal; purpose?: string; onWait?(holder: LockHolder): void } = {}): Promise<HeldLock> {
    return acquireLock(this.dir('keys', key), { wait: true, signal: options.signal, purpose: options.purpose, onWait: options.onWait, staleMs: this.staleMs });
  }

  /**
   * Registers a run so that gc waits for it, after checking that gc does not hold the store.
   * Runs do not exclude each other. Returns the function that unregisters.
   */
  async enterRun(runId: string, options: StoreWaitOptions = {}): Promise<() => Promise<void>> {
    const file = this.dir('runs', `${runId}.json`);
    const started = Date.now();
    let waited = false;
    for (;;) {
      if (options.signal?.aborted) throw new AbortedError('interrupted while waiting for the artifact store');
      const me: LockHolder = { pid: process.pid, host: os.hostname(), startTicks: ownStartTicks(), since: new Date().toISOString(), token: runId, purpose: `run ${runId}` };
      await writeJsonAtomic(file, me);
      // Registered first, then look for gc: gc takes its lock first, then looks for runs, so one of
      // the two always sees the other.
      const gc = await inspectLock(this.dir('store'), this.staleMs);
      if (!gc.holder || !gc.alive) {
        const timer = setInterval(() => {
          const now = new Date();
          void utimes(file, now, now).catch(() => undefined);
        }, 5000);
        timer.unref();
        return async () => {
          clearInterval(timer);
          await unlink(file).catch(() => undefined);
        };
      }
      await unlink(file).catch(() => undefined);
      await this.waitOrThrow(gc.file!, gc.holder, started, options, waited);
      waited = true;
    }
  }

  /**
   * The store-wide lock, for gc: held when no run is registered and alive. Dead registrations
   * (killed runs) are removed.
   */
  async lockStore(options: StoreWaitOptions = {}): Promise<() => Promise<void>> {
    const started = Date.now();
    let waited = false;
    for (;;) {
      const remaining = options.timeoutMs === undefined ? undefined : Math.max(0, options.timeoutMs - (Date.now() - started));
      const held = await acquireLock(this.dir('store'), {
        wait: options.wait,
        timeoutMs: remaining,
        signal: options.signal,
        purpose: 'gc',
        staleMs: this.staleMs,
        onWait: (h) => options.onWait?.(describeHolder(h)),
      });
      const live = await this.liveRuns();
      if (!live.length) return () => held.release();
      await held.release();
      await this.waitOrThrow(this.dir('runs', `${live[0].token}.json`), live[0], started, options, waited);
      waited = true;
    }
  }

  /** Registered runs whose process is alive; dead registrations are removed on the way. */
  async liveRuns(): Promise<LockHolder[]> {
    const dir = this.dir('runs');
    const live: LockHolder[] = [];
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.endsWith('.json')) continue;
      const file = path.join(dir, name);
      const info = await stat(file).catch(() => undefined);
      if (!info) continue;
      const holder = parseHolder(await readFile(file, 'utf8').catch(() => ''));
      if (holder && isHolderAlive(holder, info.mtimeMs, this.staleMs)) live.push(holder);
      else await unlink(file).catch(() => undefined);
    }
    return live;
  }

  private async waitOrThrow(file: string, holder: LockHolder, started: number, options: StoreWaitOptions, waited: boolean): Promise<void> {
    if (!options.wait) throw new StoreLockedError(file, holder.pid, describeHolder(holder));
    if (!waited) options.onWait?.(describeHolder(holder));
    if (options.timeoutMs !== undefined && Date.now() - started >= options.timeoutMs) throw new LockWaitTimeoutError(file, holder.pid, options.timeoutMs);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 200);
      options.signal?.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
    });
  }
}
