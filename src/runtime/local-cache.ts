/**
 * `LocalCache`: the default `ArtifactCache`, on local disk under the store root.
 *   cache/<key>/            finished entries: `_entry.json` (files by digest) + hard links into cas/
 *   cas/sha256/<xx>/<digest> every file's bytes, once (./cas.ts)
 *   tmp/<key>.<rand>/       entries being written (never read as hits; removed by gc)
 *   work/<key>/             checkpoints that survive a killed run of the same key
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { BlobStore, sameStat } from './cas.js';
import { ENTRY_FILE, type ArtifactCache, type CommitOptions, type EntryCheck, type EntryDraft, type EntryMeta } from './cache.js';
import { writeJsonAtomic } from './fsutil.js';
import { checkEntryMeta, parseJson } from './guards.js';
import { hashFile } from './hash.js';

export class LocalCache implements ArtifactCache {
  readonly root: string;
  readonly blobs: BlobStore;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.blobs = new BlobStore(path.join(this.root, 'cas'), path.join(this.root, 'state', 'cas-verified.json'));
  }

  entryDir(key: string): string {
    return path.join(this.root, 'cache', key);
  }
  workDir(key: string): string {
    return path.join(this.root, 'work', key);
  }
  async materialize(key: string): Promise<string> {
    return this.entryDir(key);
  }
  async flush(): Promise<void> {
    await this.blobs.save();
  }

  /**
   * Checks an entry: present, `_entry.json` well formed and about this key, exactly the files it
   * lists (none missing, none extra), each the size it was sealed with; a file whose stat moved
   * (and is not its blob's verified stat) is re-hashed. Never throws for what it finds on disk.
   */
  async check(key: string): Promise<EntryCheck> {
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
    try {
      for (const [rel, expected] of Object.entries(meta.files)) {
        const file = path.join(dir, rel);
        const info = await stat(file).catch(() => undefined);
        if (!info || !info.isFile()) return { state: 'corrupt', reason: `${rel} is missing` };
        if (info.size !== expected.size) return { state: 'corrupt', reason: `${rel} is ${info.size} bytes, expected ${expected.size}` };
        const sealed = { ino: expected.ino ?? -1, size: expected.size, mtimeMs: expected.mtimeMs, ctimeMs: expected.ctimeMs ?? -1 };
        if (sameStat(sealed, info) || sameStat(await this.blobs.verifiedStat(expected.sha256), info)) continue;
        if ((await hashFile(file).catch(() => '')) !== expected.sha256) return { state: 'corrupt', reason: `${rel} was modified (content hash differs)` };
        // Proven again: when it is the blob itself (a link), the blob's stat is verified too.
        const blob = await stat(this.blobs.blobPath(expected.sha256)).catch(() => undefined);
        if (blob && blob.ino === info.ino && blob.dev === info.dev) await this.blobs.note(expected.sha256);
      }
    } finally {
      await this.blobs.save();
    }
    return { state: 'ok', meta };
  }

  /**
   * Moves a corrupt entry out of the way so it is recomputed, never reused, and removes any
   * blob it names whose bytes changed (a damaged link is a damaged blob). Call with the key's lock.
   */
  async discard(key: string): Promise<void> {
    const dir = this.entryDir(key);
    const parsed = parseJson(await readFile(path.join(dir, ENTRY_FILE), 'utf8').catch(() => ''));
    const meta = parsed.ok ? checkEntryMeta(parsed.value, key) : parsed;
    if (meta.ok) for (const file of Object.values(meta.value.files)) await this.blobs.removeIfDamaged(file.sha256);
    await this.blobs.save();
    const trash = path.join(this.root, 'tmp', `${key}.corrupt.${randomBytes(4).toString('hex')}`);
    await mkdir(path.dirname(trash), { recursive: true });
    await rename(dir, trash).catch(() => undefined);
    await rm(trash, { recursive: true, force: true });
  }

  async createTempDir(key: string): Promise<string> {
    const dir = path.join(this.root, 'tmp', `${key}.${randomBytes(4).toString('hex')}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  async clearTempOf(key: string): Promise<void> {
    const tmp = path.join(this.root, 'tmp');
    for (const name of await readdir(tmp).catch(() => [] as string[])) if (name.startsWith(`${key}.`)) await rm(path.join(tmp, name), { recursive: true, force: true });
  }

  /**
   * Seals a finished temp dir: hashes its files (unless `digests` vouches for them), puts each
   * in the CAS (an identical blob is linked, not copied), writes `_entry.json` with the stats
   * taken after linking, then renames the dir into the cache. An older entry with the same key
   * (a forced re-run) is renamed away first, so a reader sees the old entry, the new one or a miss.
   * Call with the key's lock held.
   */
  async commit(tempDir: string, draft: EntryDraft, options: CommitOptions = {}): Promise<EntryMeta> {
    // Only regular files are part of an entry; anything else (a link a stage left) goes, so the
    // entry holds exactly what it lists.
    const regular = new Set(await listFiles(tempDir));
    for (const rel of await listFiles(tempDir, '', true)) if (!regular.has(rel)) await rm(path.join(tempDir, rel), { force: true });
    const digests = new Map<string, string>();
    for (const rel of regular) {
      if (rel === ENTRY_FILE) continue;
      const full = path.join(tempDir, rel);
      const digest = options.digests?.[rel] ?? (await hashFile(full));
      await this.blobs.adopt(full, digest);
      digests.set(rel, digest);
    }
    // Stats last: every link made above moved the ctime of the inode it shares.
    const files: EntryMeta['files'] = {};
    for (const [rel, digest] of digests) {
      const info = await stat(path.join(tempDir, rel));
      files[rel] = { size: info.size, sha256: digest, mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs, ino: info.ino };
    }
    await this.blobs.save();
    const entry: EntryMeta = { ...draft, created: new Date().toISOString(), files };
    await writeJsonAtomic(path.join(tempDir, ENTRY_FILE), entry);
    const target = this.entryDir(draft.key);
    await mkdir(path.dirname(target), { recursive: true });
    if (options.keepExisting) return this.landUnlessPresent(tempDir, target, entry);
    const old = `${tempDir}.old`;
    const replaced = await rename(target, old).then(() => true, () => false);
    await rename(tempDir, target);
    if (replaced) await rm(old, { recursive: true, force: true });
    return entry;
  }

  /**
   * The rename of a commit that must not replace anything (a pull, made without the key's lock):
   * when an entry got there first, that one stays and is returned if it is sound.
   */
  private async landUnlessPresent(tempDir: string, target: string, entry: EntryMeta): Promise<EntryMeta> {
    try {
      await rename(tempDir, target);
      return entry;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      await rm(tempDir, { recursive: true, force: true });
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
      const there = await this.check(entry.key);
      if (there.state === 'ok') return there.meta;
      throw new Error(`${target} appeared while it was being pulled and is ${there.state}`, { cause: error });
    }
  }

  /** Keys of every entry folder (sound or not), for gc. */
  async keys(): Promise<string[]> {
    return readdir(path.join(this.root, 'cache')).catch(() => [] as string[]);
  }

  /** The entry's record if it is readable and about `key` (files unchecked), for gc and push. */
  async readMeta(key: string): Promise<EntryMeta | undefined> {
    const parsed = parseJson(await readFile(path.join(this.entryDir(key), ENTRY_FILE), 'utf8').catch(() => ''));
    const meta = parsed.ok ? checkEntryMeta(parsed.value, key) : parsed;
    return meta.ok ? meta.value : undefined;
  }

  /**
   * Removes an entry folder (gc); returns the bytes that freed at once: files that are not
   * links into the CAS (copies). Linked bytes are freed when their blob goes (`sweepBlobs`).
   */
  async removeEntry(key: string, dryRun: boolean): Promise<number> {
    let freed = 0;
    const dir = this.entryDir(key);
    for (const rel of await listFiles(dir).catch(() => [])) {
      const info = await stat(path.join(dir, rel)).catch(() => undefined);
      if (info && info.nlink <= 1) freed += info.size;
    }
    if (!dryRun) await rm(dir, { recursive: true, force: true });
    return freed;
  }

  /**
   * Removes the blobs no entry in `kept` lists (gc counts references from the entries' records;
   * an entry whose record is unreadable is being removed anyway). Returns what it freed.
   */
  async sweepBlobs(kept: string[], dryRun: boolean): Promise<{ removed: number; freedBytes: number; referenced: number }> {
    const referenced = new Map<string, number>();
    for (const key of kept) for (const file of Object.values((await this.readMeta(key))?.files ?? {})) referenced.set(file.sha256, (referenced.get(file.sha256) ?? 0) + 1);
    let removed = 0;
    let freedBytes = 0;
    for (const blob of await this.blobs.list({ removeStrays: !dryRun })) {
      if (referenced.has(blob.digest)) continue;
      removed++;
      freedBytes += blob.size;
      if (!dryRun) await this.blobs.remove(blob.digest);
    }
    await this.blobs.save();
    return { removed, freedBytes, referenced: referenced.size };
  }
}

/** Relative paths of all files under `dir`, sorted. With `all`, anything that is not a folder (links, sockets) is listed too. */
export async function listFiles(dir: string, rel = '', all = false): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const childRel = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await listFiles(dir, childRel, all)));
    else if (entry.isFile() || all) out.push(childRel);
  }
  return out.sort();
}
