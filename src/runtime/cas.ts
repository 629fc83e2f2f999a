/**
 * Content-addressed blobs: every file of every cache entry is kept once, named by its sha256,
 * under `cas/sha256/<first two hex>/<digest>`; an entry's folder holds hard links to them, so
 * a stage that writes the same bytes as another (a freeze that only flips flags keeps the
 * weights) costs a directory entry, not a copy (Bazel's CAS beside its action cache).
 *
 * Hard links share one inode, so linking a blob into a new entry moves its ctime, and with it
 * the stat every other entry sealed. The blob's last verified stat is therefore remembered here
 * (`state/cas-verified.json`: digest -> ino, size, mtime, ctime): a file whose stat equals it is
 * the verified blob, and nothing is re-read. A lost record (two processes saving at once) only
 * costs a re-hash; a record never vouches for bytes it did not see, because writing the file
 * moves its ctime and replacing it changes the inode.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, link, mkdir, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { writeJsonAtomic } from './fsutil.js';
import { parseJson } from './guards.js';
import { hashFile } from './hash.js';

/** The part of a stat that changes whenever the bytes (or the inode) behind a path do. */
export interface SealedStat {
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

/** How `adopt` placed a file: it became the blob, it is now a link to it, or it stays a copy. */
export type Placement = 'stored' | 'linked' | 'copied';

/** Errors of `link` that mean "no hard link here" rather than a fault: fall back to a copy. */
const NO_LINK = new Set(['EXDEV', 'EMLINK', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP']);

const DIGEST = /^[0-9a-f]{64}$/;

export function sameStat(a: SealedStat | undefined, b: { ino: number; size: number; mtimeMs: number; ctimeMs: number } | undefined): boolean {
  return !!a && !!b && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

export class BlobStore {
  private records: Map<string, SealedStat> | undefined;
  private dirty = false;

  /** `dir`: the `cas/` folder; `recordsFile`: where verified stats persist. */
  constructor(
    readonly dir: string,
    private readonly recordsFile: string,
  ) {}

  /** Where the blob `digest` lives (whether or not it is there). */
  blobPath(digest: string): string {
    return path.join(this.dir, 'sha256', digest.slice(0, 2), digest);
  }

  /**
   * Makes the file at `file` (whose content hashes to `digest`, as the caller just proved) part
   * of the CAS: it becomes the blob when there is none, or is replaced by a link to a sound
   * existing blob (a damaged blob is replaced by this file). Where hard links are not possible
   * (another file system, the link limit) the file stays a copy and the CAS gets its own copy.
   */
  async adopt(file: string, digest: string): Promise<Placement> {
    const blob = this.blobPath(digest);
    await mkdir(path.dirname(blob), { recursive: true });
    try {
      await link(file, blob);
      await this.note(digest, blob);
      return 'stored';
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? '';
      if (NO_LINK.has(code)) return this.copyIn(file, blob, digest);
      if (code !== 'EEXIST') throw error;
    }
    const [blobInfo, fileInfo] = await Promise.all([stat(blob), stat(file)]);
    if (blobInfo.ino === fileInfo.ino && blobInfo.dev === fileInfo.dev) return 'linked';
    if (!(await this.isIntact(digest, blobInfo))) {
      // A damaged blob (bytes changed behind the store's back): ours is proven, it takes over.
      await this.replaceWith(file, blob);
      await this.note(digest, blob);
      return 'stored';
    }
    try {
      await placeAt(file, (temp) => link(blob, temp));
    } catch (error) {
      if (NO_LINK.has((error as NodeJS.ErrnoException).code ?? '')) return 'copied';
      throw error;
    }
    await this.note(digest, blob);
    return 'linked';
  }

  /**
   * True when the blob holds `digest`'s bytes: its stat equals the last verified one, or it is
   * re-hashed (and the new stat remembered). False when it is missing or its bytes differ.
   */
  async isIntact(digest: string, info?: SealedStat): Promise<boolean> {
    const blob = this.blobPath(digest);
    const current = info ?? (await stat(blob).catch(() => undefined));
    if (!current) return false;
    if (sameStat((await this.load()).get(digest), current)) return true;
    if ((await hashFile(blob).catch(() => '')) !== digest) return false;
    (await this.load()).set(digest, pick(current));
    this.dirty = true;
    return true;
  }

  /** The blob's last verified stat, if any (a file with this stat is that blob, unchanged). */
  async verifiedStat(digest: string): Promise<SealedStat | undefined> {
    return (await this.load()).get(digest);
  }

  /** Records the blob's current stat as verified: call right after its bytes were proven. */
  async note(digest: string, blob = this.blobPath(digest)): Promise<void> {
    const info = await stat(blob).catch(() => undefined);
    if (!info) return;
    (await this.load()).set(digest, pick(info));
    this.dirty = true;
  }

  /** Removes a blob whose bytes no longer match its name (found by an entry check). */
  async removeIfDamaged(digest: string): Promise<boolean> {
    if (await this.isIntact(digest)) return false;
    await unlink(this.blobPath(digest)).catch(() => undefined);
    (await this.load()).delete(digest);
    this.dirty = true;
    return true;
  }

  /**
   * Every blob with its size, for gc. With `removeStrays`, files that are not blobs (the `.part`
   * of a write a killed process left) are removed on the way: call it only with the store locked.
   */
  async list(options: { removeStrays?: boolean } = {}): Promise<{ digest: string; size: number }[]> {
    const out: { digest: string; size: number }[] = [];
    const top = path.join(this.dir, 'sha256');
    for (const prefix of await readdir(top).catch(() => [] as string[])) {
      for (const name of await readdir(path.join(top, prefix)).catch(() => [] as string[])) {
        if (!DIGEST.test(name)) {
          if (options.removeStrays) await rm(path.join(top, prefix, name), { force: true });
          continue;
        }
        const info = await stat(path.join(top, prefix, name)).catch(() => undefined);
        if (info?.isFile()) out.push({ digest: name, size: info.size });
      }
    }
    return out;
  }

  /** Deletes a blob (gc, when no entry lists it). */
  async remove(digest: string): Promise<void> {
    await unlink(this.blobPath(digest)).catch(() => undefined);
    if ((await this.load()).delete(digest)) this.dirty = true;
  }

  /** Writes the verified stats when they changed. Best effort: they are only a cache. */
  async save(): Promise<void> {
    if (!this.dirty || !this.records) return;
    this.dirty = false;
    await writeJsonAtomic(this.recordsFile, Object.fromEntries(this.records)).catch(() => undefined);
  }

  private async load(): Promise<Map<string, SealedStat>> {
    if (this.records) return this.records;
    const records = new Map<string, SealedStat>();
    const parsed = parseJson(await readFile(this.recordsFile, 'utf8').catch(() => ''));
    if (parsed.ok && parsed.value && typeof parsed.value === 'object' && !Array.isArray(parsed.value)) {
      for (const [digest, value] of Object.entries(parsed.value as Record<string, unknown>)) {
        const v = value as Partial<SealedStat> | null;
        // Malformed records are dropped: they only save re-hashing.
        if (DIGEST.test(digest) && v && [v.ino, v.size, v.mtimeMs, v.ctimeMs].every((n) => typeof n === 'number' && Number.isFinite(n))) records.set(digest, v as SealedStat);
      }
    }
    this.records ??= records;
    return this.records;
  }

  private async copyIn(file: string, blob: string, digest: string): Promise<Placement> {
    if (!(await this.isIntact(digest))) {
      await placeAt(blob, (temp) => copyFile(file, temp));
      await this.note(digest, blob);
    }
    return 'copied';
  }

  /** Atomically puts `file`'s inode (or a copy) at `blob`, over what is there. */
  private async replaceWith(file: string, blob: string): Promise<void> {
    await placeAt(blob, (temp) =>
      link(file, temp).catch(async (error: NodeJS.ErrnoException) => {
        if (!NO_LINK.has(error.code ?? '')) throw error;
        await copyFile(file, temp);
      }),
    );
  }
}

/** Writes `dest` atomically: `write` fills a temp name beside it, which is renamed over `dest`. */
async function placeAt(dest: string, write: (temp: string) => Promise<void>): Promise<void> {
  const temp = `${dest}.${randomBytes(4).toString('hex')}.part`;
  try {
    await write(temp);
    await rename(temp, dest);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

function pick(info: SealedStat): SealedStat {
  return { ino: info.ino, size: info.size, mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs };
}
