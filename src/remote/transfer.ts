/**
 * Moves whole cache entries between the local store and a `RemoteCache`, by the entry's own
 * record (`_entry.json`: every file's size and sha256). Files travel as content-addressed blobs,
 * so an entry that shares files with one already pushed uploads only what is new; the manifest
 * goes up LAST, so a remote that has a manifest has every blob it names.
 *
 *   pushEntry(remote, key, entryDir)  -> { uploaded, present, bytesUploaded, manifest }
 *   pullEntry(remote, key, tmpDir)    -> null (remote miss) | { files, bytes, entry }
 *
 * Neither touches the store: `pullEntry` fills a directory the caller made and the caller
 * renames it into the cache, exactly as a stage's output is committed.
 *
 * ## Wiring
 *
 * `RemoteBackedCache` (./remote-cache.ts) calls these through the `ArtifactCache` hooks:
 * `pull(key)` on a local miss (the planner's `lookUp`, also for memo entries) runs `pullEntry`
 * with `localBlob` pointing at the local CAS, then commits the dir with the verified digests
 * and `keepExisting`; `push(key)` after each stage's (and memo's) commit runs `pushEntry`, with
 * `replace` naming blobs a pull found corrupt. `pipeline cache push|pull` (src/commands/cache.ts)
 * uses the same hooks. A failed pull is a reason and the stage runs; a failed push is a warning.
 *
 * Errors: everything thrown here is a `RemoteError` (`src/remote/remote.ts`, a `PipelineError`
 * whose codes can join the catalogue in `src/runtime/errors.ts`) or a local file system error;
 * `cli.ts` maps `remote_auth` / `remote_config` to the usage exit code (2) and the rest to 1,
 * printing the message (it names the bucket and the variable to set). Only `cache push|pull`
 * exit on them; `run` logs them and goes on without the remote.
 */
import { copyFile, link, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ENTRY_FILE } from '../runtime/cache.js';
import { isCacheKey, isDigest, isSafeRelativePath, MANIFEST_FORMAT, RemoteError, type ManifestFile, type RemoteCache, type RemoteManifest } from './remote.js';

export interface TransferOptions {
  /** Blobs moved at once. Default 4. */
  concurrency?: number;
  /** Push: blobs to upload even when the remote has an object of that name (found corrupt). */
  replace?: ReadonlySet<string>;
  /**
   * Pull: a local file already holding the blob `digest` (the store's CAS), verified by the
   * caller, or undefined: it is linked (or copied) instead of downloaded.
   */
  localBlob?(digest: string): Promise<string | undefined>;
}

export interface PushResult {
  key: string;
  /** Blobs sent. */
  uploaded: number;
  /** Blobs the remote already had (skipped). */
  present: number;
  /** Bytes sent. */
  bytesUploaded: number;
  /** `exists` when another writer's manifest for this key was there first (it is kept). */
  manifest: 'written' | 'exists';
}

export interface PullResult {
  key: string;
  /** Files written into the directory. */
  files: number;
  /** Their total size in bytes. */
  bytes: number;
  /** The `_entry.json` written, with this machine's mtimes. */
  entry: Record<string, unknown>;
  /** Blobs downloaded (the others came from `localBlob`). */
  downloaded: number;
}

/**
 * Uploads the finished entry in `entryDir` (a `cache/<key>/` dir with its `_entry.json`): each
 * file as a blob by its sha256, skipping blobs the remote has, then the manifest.
 * The remote checks each upload against its digest, so a file changed since commit fails with
 * `remote_corrupt` and no manifest is written.
 */
export async function pushEntry(remote: RemoteCache, key: string, entryDir: string, options: TransferOptions = {}): Promise<PushResult> {
  const entry = await readEntry(remote, key, entryDir);
  const files = entryFiles(remote, key, entry);
  const byDigest = new Map<string, { file: string; size: number }>();
  for (const [rel, file] of Object.entries(files)) {
    const full = path.join(entryDir, rel);
    const info = await stat(full);
    if (info.size !== file.size)
      throw new RemoteError('remote_corrupt', `${full} is ${info.size} bytes but ${ENTRY_FILE} says ${file.size}: the local entry is damaged, re-run its stage`, { remote: remote.url, operation: 'push_entry', objectKey: key });
    byDigest.set(file.sha256, { file: full, size: file.size }); // identical files are one blob
  }
  const result: PushResult = { key, uploaded: 0, present: 0, bytesUploaded: 0, manifest: 'exists' };
  await forEachLimited([...byDigest], options.concurrency ?? 4, async ([digest, { file, size }]) => {
    if ((await remote.putBlob(digest, file, { replace: options.replace?.has(digest) ?? false })) === 'present') result.present++;
    else {
      result.uploaded++;
      result.bytesUploaded += size;
    }
  });
  const manifest: RemoteManifest = { format: MANIFEST_FORMAT, key, files, entry };
  result.manifest = await remote.putManifest(key, manifest);
  return result;
}

/**
 * Downloads the entry `key` into `tmpDir` (made if needed; normally `store.createTempDir(key)`),
 * laid out as the entry with its `_entry.json`, every file verified against its sha256.
 * Returns null when the remote has no manifest for the key. On an error the directory may hold
 * some files: the caller removes it (as it does a failed stage's temp dir).
 */
export async function pullEntry(remote: RemoteCache, key: string, tmpDir: string, options: TransferOptions = {}): Promise<PullResult | null> {
  const manifest = await remote.getManifest(key);
  if (!manifest) return null;
  const root = path.resolve(tmpDir);
  await mkdir(root, { recursive: true });
  const entries = Object.entries(manifest.files);
  for (const [rel] of entries) {
    // The manifest was shape-checked; this also refuses a path that resolves outside.
    const full = path.resolve(root, rel);
    if (!isSafeRelativePath(rel) || !full.startsWith(root + path.sep) || rel === ENTRY_FILE)
      throw new RemoteError('remote_corrupt', `manifest of ${key} on ${remote.url} names the file ${JSON.stringify(rel)}, which is not allowed in an entry; delete that manifest`, { remote: remote.url, operation: 'pull_entry', objectKey: key });
  }
  const localFiles: Record<string, ManifestFile & { mtimeMs: number }> = {};
  let bytes = 0;
  let downloaded = 0;
  await forEachLimited(entries, options.concurrency ?? 4, async ([rel, file]) => {
    const full = path.join(root, rel);
    await mkdir(path.dirname(full), { recursive: true });
    const local = await options.localBlob?.(file.sha256);
    if (local) await link(local, full).catch(() => copyFile(local, full));
    else {
      await remote.getBlob(file.sha256, full);
      downloaded++;
    }
    const info = await stat(full);
    // The digest matched, so the size does too, unless the manifest lies about it.
    if (info.size !== file.size)
      throw new RemoteError('remote_corrupt', `manifest of ${key} on ${remote.url} says ${rel} is ${file.size} bytes; its blob is ${info.size}; delete that manifest`, { remote: remote.url, operation: 'pull_entry', objectKey: key });
    localFiles[rel] = { size: file.size, sha256: file.sha256, mtimeMs: info.mtimeMs };
    bytes += file.size;
  });
  // The record as pushed, with this machine's mtimes: the store's check then trusts the files
  // without re-hashing them (they were just verified).
  const sorted = Object.fromEntries(Object.keys(localFiles).sort().map((rel) => [rel, localFiles[rel]]));
  const entry = { ...manifest.entry, key, files: sorted };
  await writeFile(path.join(root, ENTRY_FILE), JSON.stringify(entry, null, 1) + '\n');
  return { key, files: entries.length, bytes, entry, downloaded };
}

async function readEntry(remote: RemoteCache, key: string, entryDir: string): Promise<Record<string, unknown>> {
  if (!isCacheKey(key)) throw new RemoteError('remote_config', `not a cache key: ${JSON.stringify(key)}`, { remote: remote.url, operation: 'push_entry' });
  const file = path.join(entryDir, ENTRY_FILE);
  let value: unknown;
  try {
    value = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new RemoteError('remote_corrupt', `cannot push ${key}: ${file} is missing or not JSON (is ${entryDir} a finished cache entry?)`, { remote: remote.url, operation: 'push_entry', objectKey: key }, { cause: error });
  }
  if (!value || typeof value !== 'object' || Array.isArray(value) || (value as { key?: unknown }).key !== key)
    throw new RemoteError('remote_corrupt', `cannot push ${key}: ${file} does not describe that key`, { remote: remote.url, operation: 'push_entry', objectKey: key });
  return value as Record<string, unknown>;
}

/** The entry record's file list, reduced to what the remote keeps (size and sha256). */
function entryFiles(remote: RemoteCache, key: string, entry: Record<string, unknown>): Record<string, ManifestFile> {
  const out: Record<string, ManifestFile> = {};
  const files = entry.files;
  const bad = (why: string) => new RemoteError('remote_corrupt', `cannot push ${key}: its ${ENTRY_FILE} ${why}`, { remote: remote.url, operation: 'push_entry', objectKey: key });
  if (!files || typeof files !== 'object' || Array.isArray(files)) throw bad('has no files list');
  for (const rel of Object.keys(files).sort()) {
    const { size, sha256 } = (files as Record<string, { size?: unknown; sha256?: unknown }>)[rel] ?? {};
    if (!isSafeRelativePath(rel) || rel === ENTRY_FILE) throw bad(`lists a file outside the entry: ${JSON.stringify(rel)}`);
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || !isDigest(sha256)) throw bad(`has no size/sha256 for ${rel}`);
    out[rel] = { size, sha256 };
  }
  return out;
}

/** Runs `work` on every item, at most `limit` at a time; the first failure rejects (after in-flight ones settle). */
async function forEachLimited<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: { error: unknown } | undefined;
  const worker = async () => {
    while (!failed && next < items.length) {
      const item = items[next++] as T;
      try {
        await work(item);
      } catch (error) {
        failed ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw failed.error;
}
