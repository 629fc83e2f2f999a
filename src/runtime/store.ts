/**
 * The artifact store: content-addressed cache entries, temp dirs renamed on completion, resume
 * work dirs, per-pipeline stage records (for `plan`'s reasons), run folders and the lock.
 *
 * Layout under the root (default ./artifacts):
 *   cache/<key>/            finished entries; `_entry.json` lists every file's size and sha256
 *   tmp/<key>.<rand>/       entries being written (never read as hits; removed by gc)
 *   work/<key>/             checkpoints that survive a killed run of the same key
 *   state/<pipeline>/<id>.json  what the last run of each stage used (key, params, inputs)
 *   runs/<run-id>/          plan.json (keys it uses, written first), log.jsonl, summary.json
 *   locks/keys/<key>/       one lock per key: one run computes it, the others wait and reuse it
 *   locks/store/            taken only by gc, which also waits for no run to be registered
 *   locks/runs/<run-id>.json  a registered (live) run; gc does not start while one is alive
 * Runs of any pipelines share the store at once; see lock.ts for how the locks work.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AbortedError, LockWaitTimeoutError, StoreLockedError } from './errors.js';
import { writeJsonAtomic } from './fsutil.js';
import { checkEntryMeta, checkRunPlan, checkRunSummary, checkStageRecord, parseJson, type Checked, type RunPlanRecord } from './guards.js';
import { canonicalJson, hashFile, sha256 } from './hash.js';
import { acquireLock, describeHolder, inspectLock, isHolderAlive, ownStartTicks, parseHolder, type HeldLock, type LockHolder } from './lock.js';
import type { RunSummary } from './execute.js';
import type { ArtifactType, Json, Metrics } from './types.js';

export const ENTRY_FILE = '_entry.json';

/** The record written beside a finished artifact. */
export interface EntryMeta {
  key: string;
  kind: string;
  /** Stage id that produced it (informative: the same key can serve other ids). */
  stage: string;
  provides: ArtifactType[];
  metrics: Metrics;
  /** Keys of intermediate (memo) entries this entry was built from; gc keeps them with it. */
  memo?: string[];
  /** ISO time it was committed. */
  created: string;
  /**
   * Every file with its size, sha256 and the stat it was sealed with: a file whose size, mtime,
   * ctime or inode moved is re-hashed before reuse (ctime and inode cannot be put back by hand).
   */
  files: Record<string, { size: number; sha256: string; mtimeMs: number; ctimeMs?: number; ino?: number }>;
}

/** A digest of an entry's bytes (paths + file hashes): what downstream keys are built from. */
export function entryDigest(meta: Pick<EntryMeta, 'files'>): string {
  return sha256(canonicalJson(Object.keys(meta.files).sort().map((rel) => [rel, meta.files[rel].sha256])));
}

/** How `gc` decides (see `ArtifactStore.gc`). */
export interface GcResult {
  removed: string[];
  kept: number;
  freedBytes: number;
  /** Work dirs (checkpoints) removed. */
  removedWork: string[];
  /** Runs whose summary and plan are unreadable: they keep nothing and count for nothing. */
  skippedRuns: { run: string; reason: string }[];
  dryRun: boolean;
}

/** What a stage used last time, to explain why it re-runs. */
export interface StageRecord {
  key: string;
  kind: string;
  version: number;
  /** The stage's derived seed (pipeline seed + stage id): it drives init, shuffling, splits. */
  seed?: number;
  params: Json;
  upstream: Record<string, string>;
  external: Record<string, string>;
  /** Hints of downstream stages, for stages with `lookahead` (see StageDefinition.hints). */
  downstream?: Json;
}

export type EntryCheck = { state: 'ok'; meta: EntryMeta } | { state: 'missing' } | { state: 'corrupt'; reason: string };

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

export class ArtifactStore {
  readonly root: string;
  /** Lease of a holder on another host (ms); tests shorten it. */
  staleMs?: number;
  constructor(root: string) {
    this.root = path.resolve(root);
  }

  entryDir(key: string): string {
    return path.join(this.root, 'cache', key);
  }
  workDir(key: string): string {
    return path.join(this.root, 'work', key);
  }
  runDir(runId: string): string {
    return path.join(this.root, 'runs', runId);
  }
  statCacheFile(): string {
    return path.join(this.root, 'state', 'stat-cache.json');
  }
  private locksDir(...parts: string[]): string {
    return path.join(this.root, 'locks', ...parts);
  }

  /**
   * Checks an entry: present, `_entry.json` well formed and about this key, exactly the files it
   * lists (none missing, none extra), each the size it was sealed with; a file whose mtime,
   * ctime or inode moved is re-hashed. Never throws for what it finds on disk.
   */
  async checkEntry(key: string): Promise<EntryCheck> {
    const dir = this.entryDir(key);
    const dirInfo = await lstat(dir).catch(() => undefined);
    if (!dirInfo) return { state: 'missing' };
    if (!dirInfo.isDirectory()) return { state: 'corrupt', reason: 'the entry is not a folder' };
    let text: string;
    try {
      text = await readFile(path.join(dir, ENTRY_FILE), 'utf8');
    } catch (error) {
      return { state: 'corrupt', reason: (error as NodeJS.ErrnoException).code === 'ENOENT' ? `${ENTRY_FILE} is missing` : `${ENTRY_FILE} is unreadable` };
    }
    const parsed = parseJson(text);
    const checked = parsed.ok ? checkEntryMeta(parsed.value, key) : parsed;
    if (!checked.ok) return { state: 'corrupt', reason: `${ENTRY_FILE} ${checked.reason}` };
    const meta = checked.value;
    const present = await listFiles(dir, '', true).catch(() => undefined);
    if (!present) return { state: 'corrupt', reason: 'the entry cannot be listed' };
    const extra = present.find((rel) => rel !== ENTRY_FILE && !(rel in meta.files));
    if (extra) return { state: 'corrupt', reason: `${extra} is not part of the entry` };
    for (const [rel, expected] of Object.entries(meta.files)) {
      const file = path.join(dir, rel);
      const info = await stat(file).catch(() => undefined);
      if (!info || !info.isFile()) return { state: 'corrupt', reason: `${rel} is missing` };
      if (info.size !== expected.size) return { state: 'corrupt', reason: `${rel} is ${info.size} bytes, expected ${expected.size}` };
      const moved = info.mtimeMs !== expected.mtimeMs || info.ctimeMs !== expected.ctimeMs || info.ino !== expected.ino;
      if (moved && (await hashFile(file).catch(() => '')) !== expected.sha256) return { state: 'corrupt', reason: `${rel} was modified (content hash differs)` };
    }
    return { state: 'ok', meta };
  }

  /** Moves a corrupt entry out of the way so it is recomputed, never reused. Call with the key's lock. */
  async discardEntry(key: string): Promise<void> {
    const dir = this.entryDir(key);
    const trash = path.join(this.root, 'tmp', `${key}.corrupt.${randomBytes(4).toString('hex')}`);
    await mkdir(path.dirname(trash), { recursive: true });
    await rename(dir, trash).catch(() => undefined);
    await rm(trash, { recursive: true, force: true });
  }

  /** A fresh, empty directory for a stage to write into. */
  async createTempDir(key: string): Promise<string> {
    const dir = path.join(this.root, 'tmp', `${key}.${randomBytes(4).toString('hex')}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** Removes temp dirs a killed run left for `key`. Call with the key's lock held (nobody else writes them). */
  async clearTempOf(key: string): Promise<void> {
    const tmp = path.join(this.root, 'tmp');
    for (const name of await readdir(tmp).catch(() => [] as string[])) if (name.startsWith(`${key}.`)) await rm(path.join(tmp, name), { recursive: true, force: true });
  }

  /**
   * Seals a finished temp dir: hashes its files into `_entry.json`, then renames it into the
   * cache. An older entry with the same key (a forced re-run) is replaced atomically enough:
   * it is renamed away first, so a reader sees either the old or the new entry (or a miss).
   * Call with the key's lock held.
   */
  async commit(tempDir: string, meta: Omit<EntryMeta, 'files' | 'created'>): Promise<EntryMeta> {
    const files: EntryMeta['files'] = {};
    // Only regular files are part of an entry; anything else (a link a stage left) goes, so the
    // entry holds exactly what it lists.
    const regular = new Set(await listFiles(tempDir));
    for (const rel of await listFiles(tempDir, '', true)) if (!regular.has(rel)) await rm(path.join(tempDir, rel), { force: true });
    for (const rel of regular) {
      if (rel === ENTRY_FILE) continue;
      const full = path.join(tempDir, rel);
      const info = await stat(full);
      files[rel] = { size: info.size, sha256: await hashFile(full), mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs, ino: info.ino };
    }
    const entry: EntryMeta = { ...meta, created: new Date().toISOString(), files };
    await writeJsonAtomic(path.join(tempDir, ENTRY_FILE), entry);
    const target = this.entryDir(meta.key);
    await mkdir(path.dirname(target), { recursive: true });
    const old = `${tempDir}.old`;
    const replaced = await rename(target, old).then(() => true, () => false);
    await rename(tempDir, target);
    if (replaced) await rm(old, { recursive: true, force: true });
    return entry;
  }

  /** What a stage used last time; a missing or malformed record is `undefined` (it only explains). */
  async readRecord(pipeline: string, stageId: string): Promise<StageRecord | undefined> {
    const checked = await readChecked(path.join(this.root, 'state', pipeline, `${stageId}.json`), checkStageRecord);
    return checked.ok ? checked.value : undefined;
  }
  async writeRecord(pipeline: string, stageId: string, record: StageRecord): Promise<void> {
    await writeJsonAtomic(path.join(this.root, 'state', pipeline, `${stageId}.json`), record);
  }

  /**
   * The lock of one key: whoever holds it computes the key; the others wait (always: waiting
   * for a key is waiting for a result, not for the store), then find the entry and reuse it.
   * Leftover temp dirs of the key (a killed run's) are removed once it is held.
   */
  async claimKey(key: string, options: { signal?: AbortSignal; purpose?: string; onWait?(holder: LockHolder): void } = {}): Promise<HeldLock> {
    const held = await acquireLock(this.locksDir('keys', key), { wait: true, signal: options.signal, purpose: options.purpose, onWait: options.onWait, staleMs: this.staleMs });
    await this.clearTempOf(key);
    return held;
  }

  /**
   * Registers a run so that gc waits for it, after checking that gc does not hold the store.
   * Runs do not exclude each other. Returns the function that unregisters.
   */
  async enterRun(runId: string, options: StoreWaitOptions = {}): Promise<() => Promise<void>> {
    const file = this.locksDir('runs', `${runId}.json`);
    const started = Date.now();
    let waited = false;
    for (;;) {
      if (options.signal?.aborted) throw new AbortedError('interrupted while waiting for the artifact store');
      const me: LockHolder = { pid: process.pid, host: os.hostname(), startTicks: ownStartTicks(), since: new Date().toISOString(), token: runId, purpose: `run ${runId}` };
      await writeJsonAtomic(file, me);
      // Registered first, then look for gc: gc takes its lock first, then looks for runs, so one of
      // the two always sees the other.
      const gc = await inspectLock(this.locksDir('store'), this.staleMs);
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
      const held = await acquireLock(this.locksDir('store'), {
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
      await this.waitOrThrow(this.locksDir('runs', `${live[0].token}.json`), live[0], started, options, waited);
      waited = true;
    }
  }

  /** Registered runs whose process is alive; dead registrations are removed on the way. */
  async liveRuns(): Promise<LockHolder[]> {
    const dir = this.locksDir('runs');
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

  /** Run ids, newest first. */
  async listRuns(): Promise<string[]> {
    const names = await readdir(path.join(this.root, 'runs')).catch(() => [] as string[]);
    return names.sort().reverse();
  }

  /** A run's summary, shape-checked; a missing or malformed one is a reason. */
  async readSummary(runId: string): Promise<Checked<RunSummary>> {
    return readChecked(path.join(this.runDir(runId), 'summary.json'), checkRunSummary);
  }

  /** What a run was going to use, written before it ran anything. */
  async readRunPlan(runId: string): Promise<Checked<RunPlanRecord>> {
    return readChecked(path.join(this.runDir(runId), 'plan.json'), checkRunPlan);
  }
  async writeRunPlan(record: RunPlanRecord): Promise<void> {
    await writeJsonAtomic(path.join(this.runDir(record.run), 'plan.json'), record);
  }

  /**
   * Removes cache entries that none of the kept runs uses, with the memo entries those were
   * built from, every temp dir, and work dirs no kept run needs. Kept: per pipeline, the newest
   * `keep` runs with a readable summary, plus every run without a summary (killed, or still
   * running) newer than its pipeline's newest summary: what it used and its checkpoints stay,
   * so it can resume. A run with neither a readable summary nor a plan keeps and counts nothing.
   * Call with `lockStore()` held; `dryRun` only reports.
   */
  async gc(keep: number, options: { dryRun?: boolean } = {}): Promise<GcResult> {
    const wanted = new Set<string>();
    const skippedRuns: GcResult['skippedRuns'] = [];
    const keptPerPipeline = new Map<string, number>();
    const newestSummary = new Map<string, string>();
    const unfinished: RunPlanRecord[] = [];
    for (const run of await this.listRuns()) {
      const summary = await this.readSummary(run);
      if (summary.ok) {
        const name = summary.value.pipeline;
        if (!newestSummary.has(name)) newestSummary.set(name, run);
        const count = keptPerPipeline.get(name) ?? 0;
        if (count >= keep) continue;
        keptPerPipeline.set(name, count + 1);
        for (const stage of summary.value.stages) wanted.add(stage.key);
        continue;
      }
      const plan = await this.readRunPlan(run);
      if (plan.ok) unfinished.push(plan.value);
      else skippedRuns.push({ run, reason: `summary.json ${summary.reason}; plan.json ${plan.reason}` });
    }
    for (const plan of unfinished) {
      const newest = newestSummary.get(plan.pipeline);
      if (!newest || plan.run > newest) for (const key of plan.keys) wanted.add(key);
    }
    // Memo entries (cached features) live as long as an entry that was built from them.
    for (const key of [...wanted]) {
      const meta = await readChecked(path.join(this.entryDir(key), ENTRY_FILE), (v) => checkEntryMeta(v, key));
      for (const memo of meta.ok ? (meta.value.memo ?? []) : []) wanted.add(memo);
    }
    const removed: string[] = [];
    let freedBytes = 0;
    let kept = 0;
    for (const key of await readdir(path.join(this.root, 'cache')).catch(() => [] as string[])) {
      if (wanted.has(key)) {
        kept++;
        continue;
      }
      freedBytes += await sizeOf(this.entryDir(key));
      if (!options.dryRun) await rm(this.entryDir(key), { recursive: true, force: true });
      removed.push(key);
    }
    const removedWork: string[] = [];
    for (const key of await readdir(path.join(this.root, 'work')).catch(() => [] as string[])) {
      if (wanted.has(key)) continue;
      removedWork.push(key);
      if (!options.dryRun) await rm(this.workDir(key), { recursive: true, force: true });
    }
    if (!options.dryRun) {
      await rm(path.join(this.root, 'tmp'), { recursive: true, force: true });
      // No run is registered while gc holds the store, so no key lock is being contended.
      await rm(this.locksDir('keys'), { recursive: true, force: true });
    }
    return { removed, kept, freedBytes, removedWork, skippedRuns, dryRun: options.dryRun ?? false };
  }
}

async function readChecked<T>(file: string, check: (value: unknown) => Checked<T>): Promise<Checked<T>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    return { ok: false, reason: (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : 'is unreadable' };
  }
  const parsed = parseJson(text);
  return parsed.ok ? check(parsed.value) : parsed;
}

/** Relative paths of all files under `dir`, sorted. */
/** With `all`, anything that is not a folder (links, sockets) is listed too. */
export async function listFiles(dir: string, rel = '', all = false): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const childRel = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await listFiles(dir, childRel, all)));
    else if (entry.isFile() || all) out.push(childRel);
  }
  return out.sort();
}

async function sizeOf(dir: string): Promise<number> {
  let total = 0;
  for (const rel of await listFiles(dir).catch(() => [])) total += (await stat(path.join(dir, rel)).catch(() => ({ size: 0 }))).size;
  return total;
}
