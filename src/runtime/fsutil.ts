/** Small file-system helpers that keep every write atomic. */
import { randomBytes } from 'node:crypto';
import { existsSync, realpathSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from './errors.js';

/** Kernel pseudo-filesystems: nothing of ours can live there (and a recursive mkdir under /proc spins forever). */
const PSEUDO_ROOTS = ['/proc', '/sys', '/dev'];

/**
 * Refuses a folder we would create or write under /proc, /sys or /dev, also through a symlink
 * (the nearest existing ancestor is resolved). `what` names it in the message (`--artifacts`).
 * @throws UsageError `path_special`
 */
export function refusePseudoLocation(dir: string, what: string): void {
  const absolute = path.resolve(dir);
  let existing = absolute;
  while (!existsSync(existing) && path.dirname(existing) !== existing) existing = path.dirname(existing);
  let real = absolute;
  try {
    real = path.join(realpathSync(existing), path.relative(existing, absolute));
  } catch {
    // unreadable ancestor: judge the path as written
  }
  for (const candidate of [absolute, real]) {
    const root = PSEUDO_ROOTS.find((r) => candidate === r || candidate.startsWith(r + path.sep));
    if (root) throw new UsageError(`${what} ${dir}: lies under ${root}, a kernel pseudo-filesystem where nothing can be stored; choose a folder on a disk`, 'path_special');
  }
}

/** Writes JSON to a temp file beside `file`, then renames it over: readers never see half a file. */
export async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, JSON.stringify(value, null, 1) + '\n');
    await rename(tmp, file);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
}

/** Reads JSON, or returns `undefined` when the file is missing or not valid JSON. */
export async function readJsonMaybe<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}
