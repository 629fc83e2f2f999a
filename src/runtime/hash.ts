/**
 * Content hashing for cache keys: canonical JSON, files and folders. Folders are hashed from
 * their files' hashes; a stat cache (size + mtime + inode) lets an unchanged 10,000-file
 * dataset be re-keyed without reading a byte of it.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { writeJsonAtomic } from './fsutil.js';
import { checkStatCache, parseJson, type StatRecord } from './guards.js';

/** JSON with object keys sorted, so equal values always serialise to the same string. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined) out[key] = sortKeys(v);
    }
    return out;
  }
  return value;
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Streams a file through sha256. */
export function hashFile(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(file)
      .on('error', reject)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')));
  });
}


/**
 * Remembers file hashes by path, size, mtime, ctime and inode. A file whose stat is unchanged is
 * not re-read (ctime catches a rewrite whose mtime was put back). Persisted as one JSON file in
 * the artifact store; malformed records in it are dropped.
 */
export class StatCache {
  private entries = new Map<string, StatRecord>();
  private dirty = false;
  /** Files whose content was actually read this session (for tests and the bench). */
  hashedFiles = 0;

  constructor(private readonly file?: string) {}

  async load(): Promise<void> {
    if (!this.file) return;
    try {
      const parsed = parseJson(await readFile(this.file, 'utf8'));
      this.entries = parsed.ok ? checkStatCache(parsed.value) : new Map();
    } catch {
      this.entries = new Map(); // missing or corrupt: it is only a cache
    }
  }

  async save(): Promise<void> {
    if (!this.file || !this.dirty) return;
    await writeJsonAtomic(this.file, Object.fromEntries(this.entries));
    this.dirty = false;
  }

  /** sha256 of a file, read only when its size, mtime, ctime or inode changed. */
  async hash(file: string, info?: { size: number; mtimeMs: number; ctimeMs: number; ino: number }): Promise<string> {
    const s = info ?? (await stat(file));
    const known = this.entries.get(file);
    if (known && known.size === s.size && known.mtimeMs === s.mtimeMs && known.ctimeMs === s.ctimeMs && known.ino === s.ino) return known.sha256;
    const digest = await hashFile(file);
    this.hashedFiles++;
    this.entries.set(file, { size: s.size, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs, ino: s.ino, sha256: digest });
    this.dirty = true;
    return digest;
  }
}

/**
 * Hash of a file or a folder's content (relative paths + file hashes, hidden files included so
 * that nothing can change unnoticed). Symlinks are followed for files.
 */
export async function hashPath(target: string, cache: StatCache): Promise<string> {
  const s = await stat(target);
  if (s.isFile()) return cache.hash(target, s);
  if (!s.isDirectory()) throw new Error(`not a file or folder: ${target}`);
  const lines: string[] = [];
  await walk(target, '', lines, cache);
  lines.sort();
  return sha256(lines.join('\n'));
}

async function walk(root: string, rel: string, lines: string[], cache: StatCache): Promise<void> {
  const dir = path.join(root, rel);
  const entries = await readdir(dir, { withFileTypes: true });
  // Stat and hash in bounded parallel batches: 10,000 sequential stats cost more than Node's start-up.
  const batch = 64;
  for (let i = 0; i < entries.length; i += batch) {
    await Promise.all(
      entries.slice(i, i + batch).map(async (entry) => {
        const childRel = rel ? `${rel}/${entry.name}` : entry.name;
        const full = path.join(root, childRel);
        if (entry.isDirectory()) return walk(root, childRel, lines, cache);
        const info = entry.isSymbolicLink() ? await stat(full).catch(() => null) : await lstat(full);
        if (!info || !info.isFile()) return;
        lines.push(`${childRel}\t${await cache.hash(full, info)}`);
      }),
    );
  }
}
