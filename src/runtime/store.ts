/**
 * The artifact store: one root folder (default ./artifacts) holding three parts, each its own
 * module, and gc over all three:
 *   the cache    `ArtifactCache` (./cache.ts), by default `LocalCache` (./local-cache.ts):
 *                cache/<key>/ entries listing files by digest, cas/ the blobs, tmp/, work/
 *   run history  `RunHistory` (./history.ts): state/ records, runs/<run-id>/
 *   the locks    `StoreLocks` (./store-locks.ts): locks/keys, locks/store, locks/runs
 * The cache is injected (`new ArtifactStore(root, { cache })`): a `RemoteBackedCache` adds an
 * S3 remote behind the same interface. The methods below the parts delegate to them, so code
 * that held the one class keeps working (`store.checkEntry(key)` is `store.cache.check(key)`).
 */
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ArtifactCache, CommitOptions, EntryCheck, EntryDraft, EntryMeta } from './cache.js';
import type { RunSummary } from './execute.js';
import type { Checked, RunPlanRecord } from './guards.js';
import { RunHistory, type StageRecord } from './history.js';
import { LocalCache } from './local-cache.js';
import type { HeldLock, LockHolder } from './lock.js';
import { StoreLocks, type StoreWaitOptions } from './store-locks.js';

export { ENTRY_FILE, entryDigest, type EntryCheck, type EntryMeta } from './cache.js';
export { listFiles } from './local-cache.js';
export type { StageRecord } from './history.js';
export type { StoreWaitOptions } from './store-locks.js';

/** How `gc` decides (see `ArtifactStore.gc`). */
export interface GcResult {
  removed: string[];
  kept: number;
  /** Bytes freed: copies in removed entries and the blobs no kept entry lists. */
  freedBytes: number;
  /** Blobs (content-addressed files in cas/) removed because no kept entry lists them. */
  removedBlobs: number;
  /** Work dirs (checkpoints) removed. */
  removedWork: string[];
  /** Runs whose summary and plan are unreadable: they keep nothing and count for nothing. */
  skippedRuns: { run: string; reason: string }[];
  dryRun: boolean;
}

export class ArtifactStore {
  readonly root: string;
  /** Where entries live: the local cache, or one with a remote behind it. */
  readonly cache: LocalCache;
  readonly history: RunHistory;
  readonly locks: StoreLocks;

  constructor(root: string, options: { cache?: LocalCache } = {}) {
    this.root = path.resolve(root);
    this.cache = options.cache ?? new LocalCache(this.root);
    this.history = new RunHistory(this.root);
    this.locks = new StoreLocks(this.root);
  }

  /** Lease of a holder on another host (ms); tests shorten it. */
  get staleMs(): number | undefined {
    return this.locks.staleMs;
  }
  set staleMs(ms: number | undefined) {
    this.locks.staleMs = ms;
  }

  // The cache (`ArtifactCache`).
  entryDir(key: string): string {
    return this.cache.entryDir(key);
  }
  workDir(key: string): string {
    return this.cache.workDir(key);
  }
  checkEntry(key: string): Promise<EntryCheck> {
    return this.cache.check(key);
  }
  discardEntry(key: string): Promise<void> {
    return this.cache.discard(key);
  }
  createTempDir(key: string): Promise<string> {
    return this.cache.createTempDir(key);
  }
  clearTempOf(key: string): Promise<void> {
    return this.cache.clearTempOf(key);
  }
  commit(tempDir: string, draft: EntryDraft, options?: CommitOptions): Promise<EntryMeta> {
    return this.cache.commit(tempDir, draft, options);
  }

  // Run history.
  runDir(runId: string): string {
    return this.history.runDir(runId);
  }
  statCacheFile(): string {
    return this.history.statCacheFile();
  }
  readRecord(pipeline: string, stageId: string): Promise<StageRecord | undefined> {
    return this.history.readRecord(pipeline, stageId);
  }
  writeRecord(pipeline: string, stageId: string, record: StageRecord): Promise<void> {
    return this.history.writeRecord(pipeline, stageId, record);
  }
  listRuns(): Promise<string[]> {
    return this.history.listRuns();
  }
  readSummary(runId: string): Promise<Checked<RunSummary>> {
    return this.history.readSummary(runId);
  }
  readRunPlan(runId: string): Promise<Checked<RunPlanRecord>> {
    return this.history.readRunPlan(runId);
  }
  writeRunPlan(record: RunPlanRecord): Promise<void> {
    return this.history.writeRunPlan(record);
  }

  // The locks.
  /** The key's lock (see `StoreLocks.claimKey`); leftover temp dirs of the key (a killed run's) are removed once it is held. */
  async claimKey(key: string, options: { signal?: AbortSignal; purpose?: string; onWait?(holder: LockHolder): void } = {}): Promise<HeldLock> {
    const held = await this.locks.claimKey(key, options);
    await this.cache.clearTempOf(key);
    return held;
  }
  enterRun(runId: string, options: StoreWaitOptions = {}): Promise<() => Promise<void>> {
    return this.locks.enterRun(runId, options);
  }
  lockStore(options: StoreWaitOptions = {}): Promise<() => Promise<void>> {
    return this.locks.lockStore(options);
  }
  liveRuns(): Promise<LockHolder[]> {
    return this.locks.liveRuns();
  }

  /**
   * Removes cache entries that none of the kept runs uses (`RunHistory.keptKeys`), with the
   * memo entries those were built from, then every blob no remaining entry lists, every temp
   * dir, and work dirs no kept run needs. Call with `lockStore()` held; `dryRun` only reports.
   */
  async gc(keep: number, options: { dryRun?: boolean } = {}): Promise<GcResult> {
    const dryRun = options.dryRun ?? false;
    const { wanted, skippedRuns } = await this.history.keptKeys(keep);
    // Memo entries (cached features) live as long as an entry that was built from them.
    for (const key of [...wanted]) for (const memo of (await this.cache.readMeta(key))?.memo ?? []) wanted.add(memo);
    const removed: string[] = [];
    const kept: string[] = [];
    let freedBytes = 0;
    for (const key of await this.cache.keys()) {
      if (wanted.has(key)) {
        kept.push(key);
        continue;
      }
      freedBytes += await this.cache.removeEntry(key, dryRun);
      removed.push(key);
    }
    const blobs = await this.cache.sweepBlobs(kept, dryRun);
    freedBytes += blobs.freedBytes;
    const removedWork: string[] = [];
    for (const key of await readdir(path.join(this.root, 'work')).catch(() => [] as string[])) {
      if (wanted.has(key)) continue;
      removedWork.push(key);
      if (!dryRun) await rm(this.cache.workDir(key), { recursive: true, force: true });
    }
    if (!dryRun) {
      await rm(path.join(this.root, 'tmp'), { recursive: true, force: true });
      // No run is registered while gc holds the store, so no key lock is being contended.
      await rm(this.locks.dir('keys'), { recursive: true, force: true });
    }
    return { removed, kept: kept.length, freedBytes, removedBlobs: blobs.removed, removedWork, skippedRuns, dryRun };
  }
}

/** The cache interface, for code that should not reach past it. */
export type { ArtifactCache };
