/**
 * Every use a BullMQ worker makes of the artifact store and of the remote cache, in one place:
 * find an input (locally, else pulled from the remote), take a key's lock, find a finished
 * entry, and publish a computed one (push to the remote). `computeStage` (the one code path
 * that computes a stage) receives `store` itself, as the local executor gives it.
 */
import { rm } from 'node:fs/promises';
import { StageError } from '../runtime/errors.js';
import { ArtifactStore, entryDigest, type EntryMeta } from '../runtime/store.js';
import type { HeldLock } from '../runtime/lock.js';
import type { RemoteCache } from '../remote/remote.js';
import { S3Remote } from '../remote/s3.js';
import { pullEntry, pushEntry } from '../remote/transfer.js';

export class WorkerStore {
  readonly store: ArtifactStore;
  /** The remote cache shared with other machines, when `--remote` was given. */
  readonly remote: RemoteCache | undefined;

  constructor(artifacts: string, remoteUrl?: string) {
    this.store = new ArtifactStore(artifacts);
    this.remote = remoteUrl ? new S3Remote({ url: remoteUrl }) : undefined;
  }

  entryDir(key: string): string {
    return this.store.entryDir(key);
  }
  statCacheFile(): string {
    return this.store.statCacheFile();
  }

  /** Holds `key`'s lock: the one process computing (or pulling) it. */
  claim(key: string, purpose: string, signal?: AbortSignal): Promise<HeldLock> {
    return this.store.claimKey(key, { purpose, signal });
  }

  /**
   * A finished entry of `key`: in the local store (`reused`), else pulled from the remote
   * (`pulled`); undefined when neither has it. Call with the key's lock held. A corrupt local
   * entry is set aside, as the local executor does.
   */
  async existing(key: string): Promise<{ entry: EntryMeta; outcome: 'reused' | 'pulled' } | undefined> {
    const check = await this.store.checkEntry(key);
    if (check.state === 'ok') return { entry: check.meta, outcome: 'reused' };
    if (check.state === 'corrupt') await this.store.discardEntry(key);
    const pulled = await this.pull(key);
    return pulled ? { entry: pulled, outcome: 'pulled' } : undefined;
  }

  /**
   * An input entry that must exist (the coordinator has it as finished), checked against the
   * output digest the stage's key was built from when one is given.
   */
  async input(id: string, key: string, digest: string | undefined, purpose: string): Promise<EntryMeta> {
    const claim = await this.claim(key, purpose);
    let found;
    try {
      found = await this.existing(key);
    } finally {
      await claim.release();
    }
    if (!found)
      throw new StageError('worker_input_missing', `input '${id}' (${key}) is neither in this worker's store (${this.store.root}) nor on ${this.remote ? this.remote.url : 'a remote (none given)'}: give the worker the coordinator's --artifacts, or the same --remote on both`, { input: id, key });
    if (digest !== undefined && entryDigest(found.entry) !== digest)
      throw new StageError('version_skew', `input '${id}' (${key}) holds other bytes here than the coordinator keyed the stage with: the worker's store or remote differs from the coordinator's`, { input: id, key });
    return found.entry;
  }

  /** Pushes a computed entry to the remote (no-op without one). */
  async publish(key: string): Promise<void> {
    if (this.remote) await pushEntry(this.remote, key, this.store.entryDir(key));
  }

  close(): void {
    (this.remote as S3Remote | undefined)?.close();
  }

  /** Downloads `key` from the remote into the local store; undefined when the remote lacks it. */
  private async pull(key: string): Promise<EntryMeta | undefined> {
    if (!this.remote) return undefined;
    const tmp = await this.store.createTempDir(key);
    try {
      const pulled = await pullEntry(this.remote, key, tmp);
      if (!pulled) return undefined;
      const record = pulled.entry as unknown as EntryMeta;
      // Sealed like a computed entry: re-hashed into a fresh `_entry.json` and renamed in.
      return await this.store.commit(tmp, { key, kind: record.kind, stage: record.stage, provides: record.provides ?? [], metrics: record.metrics ?? {}, ...(record.memo ? { memo: record.memo } : {}) });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
}
