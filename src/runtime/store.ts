/**
 * The artifact store: content-addressed cache entries, temp dirs renamed on completion, resume
 * work dirs, per-pipeline stage records (for `plan`'s reasons), run folders and the lock.
 *
 * Layout under the root (default ./artifacts):
 *   cache/<key>/            finished entries; `_entry.json` lists every file's size and sha256
 *   tmp/<key>.<rand>/       entries being written (never read as hits; removed by gc)
 *   work/<key>/             checkpoints that survive a killed run of the same key
 *   state/<pipeline>/<id>.json  what the last run of each stage used (key, params, inputs)
 *   runs/<run-id>/          log.jsonl, summary.json
 *   lock                    {pid, host}: one run at a time
 */
import { randomBytes } from 'node:crypto';
import { open, mkdir, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { StoreLockedError } from './errors.js';
import { readJsonMaybe, writeJsonAtomic } from './fsutil.js';
import { hashFile } from './hash.js';
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
  files: Record<string, { size: number; sha256: string; mtimeMs: number }>;
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

export class ArtifactStore {
  readonly root: string;
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

  /**
   * Checks an entry: present, complete, and every file the size it was written with; a file
   * whose mtime moved is re-hashed. Half-written entries cannot be here (they live in tmp/).
   */
  async checkEntry(key: string): Promise<EntryCheck> {
    const dir = this.entryDir(key);
    let meta: EntryMeta | undefined;
    try {
      meta = JSON.parse(await readFile(path.join(dir, ENTRY_FILE), 'utf8')) as EntryMeta;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        const exists = await stat(dir).then(() => true, () => false);
        return exists ? { state: 'corrupt', reason: `${ENTRY_FILE} is missing` } : { state: 'missing' };
      }
      return { state: 'corrupt', reason: `${ENTRY_FILE} is unreadable` };
    }
    if (meta.key !== key || !meta.files) return { state: 'corrupt', reason: `${ENTRY_FILE} does not describe this key` };
    for (const [rel, expected] of Object.entries(meta.files)) {
      const file = path.join(dir, rel);
      const info = await stat(file).catch(() => undefined);
      if (!info) return { state: 'corrupt', reason: `${rel} is missing` };
      if (info.size !== expected.size) return { state: 'corrupt', reason: `${rel} is ${info.size} bytes, expected ${expected.size}` };
      if (info.mtimeMs !== expected.mtimeMs && (await hashFile(file)) !== expected.sha256)
        return { state: 'corrupt', reason: `${rel} was modified (content hash differs)` };
    }
    return { state: 'ok', meta };
  }

  /** Moves a corrupt entry out of the way so it is recomputed, never reused. */
  async discardEntry(key: string): Promise<void> {
    const dir = this.entryDir(key);
    const trash = path.join(this.root, 'tmp', `${key}.corrupt.${randomBytes(4).toString('hex')}`);
    await mkdir(path.dirname(trash), { recursive: true });
    await rename(dir, trash).catch(() => undefined);
    await rm(trash, { recursive: true, force: true });
  }

  /** Removes temp dirs (half-written entries of killed runs). Call with the lock held. */
  async clearTemp(): Promise<void> {
    await rm(path.join(this.root, 'tmp'), { recursive: true, force: true });
  }

  /** A fresh, empty directory for a stage to write into. */
  async createTempDir(key: string): Promise<string> {
    const dir = path.join(this.root, 'tmp', `${key}.${randomBytes(4).toString('hex')}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /**
   * Seals a finished temp dir: hashes its files into `_entry.json`, then renames it into the
   * cache. An older entry with the same key (a forced re-run) is replaced atomically enough:
   * it is renamed away first, so a reader sees either the old or the new entry.
   */
  async commit(tempDir: string, meta: Omit<EntryMeta, 'files' | 'created'>): Promise<EntryMeta> {
    const files: EntryMeta['files'] = {};
    for (const rel of await listFiles(tempDir)) {
      if (rel === ENTRY_FILE) continue;
      const full = path.join(tempDir, rel);
      const info = await stat(full);
      files[rel] = { size: info.size, sha256: await hashFile(full), mtimeMs: info.mtimeMs };
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

  async readRecord(pipeline: string, stageId: string): Promise<StageRecord | undefined> {
    return readJsonMaybe<StageRecord>(path.join(this.root, 'state', pipeline, `${stageId}.json`));
  }
  async writeRecord(pipeline: string, stageId: string, record: StageRecord): Promise<void> {
    await writeJsonAtomic(path.join(this.root, 'state', pipeline, `${stageId}.json`), record);
  }

  /**
   * Takes the store lock. A lock left by a dead process (same host, pid gone) is taken over;
   * a live one throws `StoreLockedError`, or is waited for when `wait` is set.
   */
  async lock(options: { wait?: boolean; pollMs?: number } = {}): Promise<() => Promise<void>> {
    const file = path.join(this.root, 'lock');
    await mkdir(this.root, { recursive: true });
    const mine = JSON.stringify({ pid: process.pid, host: os.hostname(), started: new Date().toISOString() });
    for (;;) {
      try {
        const handle = await open(file, 'wx');
        await handle.writeFile(mine);
        await handle.close();
        return async () => {
          const current = await readFile(file, 'utf8').catch(() => '');
          if (current === mine) await unlink(file).catch(() => undefined);
        };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holder = await readJsonMaybe<{ pid: number; host: string }>(file);
      if (!holder || (holder.host === os.hostname() && !isAlive(holder.pid))) {
        await unlink(file).catch(() => undefined); // stale or unreadable: take it over
        continue;
      }
      if (!options.wait) throw new StoreLockedError(file, holder.pid);
      await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 500));
    }
  }

  /** Run ids, newest first. */
  async listRuns(): Promise<string[]> {
    const names = await readdir(path.join(this.root, 'runs')).catch(() => [] as string[]);
    return names.sort().reverse();
  }

  /**
   * Removes cache entries that none of the newest `keep` runs uses (with the memo entries those
   * were built from), every temp dir, and work dirs of keys no longer wanted.
   */
  async gc(keep: number): Promise<{ removed: string[]; kept: number; freedBytes: number }> {
    const wanted = new Set<string>();
    for (const run of (await this.listRuns()).slice(0, keep)) {
      const summary = await readJsonMaybe<{ stages?: { key?: string }[] }>(path.join(this.runDir(run), 'summary.json'));
      for (const stage of summary?.stages ?? []) if (stage.key) wanted.add(stage.key);
    }
    // Memo entries (cached features) live as long as an entry that was built from them.
    for (const key of [...wanted]) {
      const meta = await readJsonMaybe<EntryMeta>(path.join(this.entryDir(key), ENTRY_FILE));
      for (const memo of meta?.memo ?? []) wanted.add(memo);
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
      await rm(this.entryDir(key), { recursive: true, force: true });
      removed.push(key);
    }
    await rm(path.join(this.root, 'tmp'), { recursive: true, force: true });
    for (const key of await readdir(path.join(this.root, 'work')).catch(() => [] as string[]))
      if (!wanted.has(key)) await rm(this.workDir(key), { recursive: true, force: true });
    return { removed, kept, freedBytes };
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Relative paths of all files under `dir`, sorted. */
export async function listFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const childRel = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await listFiles(dir, childRel)));
    else if (entry.isFile()) out.push(childRel);
  }
  return out.sort();
}

async function sizeOf(dir: string): Promise<number> {
  let total = 0;
  for (const rel of await listFiles(dir).catch(() => [])) total += (await stat(path.join(dir, rel)).catch(() => ({ size: 0 }))).size;
  return total;
}
