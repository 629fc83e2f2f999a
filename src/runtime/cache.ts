/**
 * The artifact cache's seam: what planning and execution need from wherever finished stage
 * results live. `LocalCache` (./local-cache.ts: entries over a content-addressed blob store on
 * local disk) is the default; `RemoteBackedCache` (src/remote/remote-cache.ts) adds an S3
 * remote behind the same interface through the `pull`/`push` hooks. One place picks the
 * implementation: `RunOptions.cache` (src/runtime/run.ts), set by the CLI.
 */
import { canonicalJson, sha256 } from './hash.js';
import type { ArtifactType, Metrics } from './types.js';

/** The record beside a finished artifact: `cache/<key>/_entry.json`. */
export const ENTRY_FILE = '_entry.json';

/** The record written beside a finished artifact (the action cache: key -> files by digest). */
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
   * Every file with its size, sha256 (the blob it is, in `cas/`) and the stat it was sealed
   * with: a file whose size, mtime, ctime or inode moved is re-hashed before reuse, unless its
   * stat is its blob's last verified one (ctime and inode cannot be put back by hand).
   */
  files: Record<string, { size: number; sha256: string; mtimeMs: number; ctimeMs?: number; ino?: number }>;
}

/** What a caller gives `commit`: the record without what the cache fills in. */
export type EntryDraft = Omit<EntryMeta, 'files' | 'created'>;

/** Options of `ArtifactCache.commit`. */
export interface CommitOptions {
  /** rel -> sha256 of files the caller already proved (a pull): they are not hashed again. */
  digests?: Record<string, string>;
  /** Keep an entry that is already there (return it) instead of replacing it. Default false. */
  keepExisting?: boolean;
}

export type EntryCheck = { state: 'ok'; meta: EntryMeta } | { state: 'missing' } | { state: 'corrupt'; reason: string };

/** A digest of an entry's bytes (paths + file hashes): what downstream keys are built from. */
export function entryDigest(meta: Pick<EntryMeta, 'files'>): string {
  return sha256(canonicalJson(Object.keys(meta.files).sort().map((rel) => [rel, meta.files[rel].sha256])));
}

/** What a `pull` brought. */
export interface PullOutcome {
  meta: EntryMeta;
  /** Where it came from (`s3://bucket/prefix`), for reasons and logs. */
  from: string;
  /** Blobs downloaded; the others were already in the local CAS. */
  downloaded: number;
  bytes: number;
}

/** What a `push` sent. */
export interface PushOutcome {
  to: string;
  uploaded: number;
  present: number;
  bytesUploaded: number;
  manifest: 'written' | 'exists';
}

/**
 * The cache as planning and execution see it. Every method that writes takes the key's lock
 * from the caller (`StoreLocks.claimKey`), except `pull`, whose result only lands when no entry
 * is there (a rename that fails when another process got there first).
 */
export interface ArtifactCache {
  /** Where entries are materialized (the store root), for messages. */
  readonly root: string;
  /** Present, sound and about this key; never throws for what it finds. */
  check(key: string): Promise<EntryCheck>;
  /** A fresh, empty directory for a stage (or a memo) to write `key` into. */
  createTempDir(key: string): Promise<string>;
  /** Removes temp dirs a killed run left for `key` (with the key's lock held). */
  clearTempOf(key: string): Promise<void>;
  /**
   * Seals a finished temp dir as the entry of `draft.key`: its files become blobs (identical
   * ones are linked, not copied) and the entry lists them by digest. Replaces an older entry
   * of the key (a forced re-run). `digests` (rel -> sha256) skips hashing files the caller proved.
   */
  commit(tempDir: string, draft: EntryDraft, options?: CommitOptions): Promise<EntryMeta>;
  /** Moves a corrupt entry out of the way (and any damaged blob it names), so it is recomputed. */
  discard(key: string): Promise<void>;
  /** The entry's files as a local directory a stage can read; call once `check` said `ok`. */
  materialize(key: string): Promise<string>;
  /** Where `materialize` puts the entry (synchronous, for paths in messages). */
  entryDir(key: string): string;
  /** The folder of checkpoints that survives a killed run of `key`. */
  workDir(key: string): string;
  /** The remote behind this cache, if any (`s3://bucket/prefix`). */
  readonly remote?: string;
  /** Fetches `key` from the remote into the local cache when the remote has it; `undefined` on a remote miss. */
  pull?(key: string): Promise<PullOutcome | undefined>;
  /** Sends the committed entry `key` to the remote (blobs the remote lacks, then its manifest). */
  push?(key: string): Promise<PushOutcome>;
  /** Writes what the cache keeps in memory (verified blob stats). */
  flush?(): Promise<void>;
}
