/**
 * Finding a dataset's images before they are read: walking ImageFolder-style class folders
 * (optionally under `train/`, `val/`, `test/`), parsing CSV/JSONL label manifests, and the
 * seeded stratified split. Pure file-system listing; no image is decoded here.
 */
import { createHash } from 'node:crypto';
import { realpathSync, type Stats } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, extname, join, relative, resolve, sep } from 'node:path';
import { StageError } from '../runtime/errors.js';
import { SPLITS, type SplitName } from './dataset.js';

/** Extensions `ingest` looks at by default (compared case-insensitively). */
export const DEFAULT_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif'];

/** An image file found by a scan, not yet read. */
export interface Candidate {
  /** Path relative to the root, `/`-separated. */
  path: string;
  /** Its class name. */
  className: string;
  /** Its split when the layout or the manifest says; otherwise decided by `assignSplits`. */
  split?: SplitName;
}

/** A file or folder the scan passed over, and why. */
export interface IgnoredPath {
  path: string;
  reason: 'hidden' | 'unsupported_extension' | 'outside_class_folder' | 'special_file';
}

/** What a scan found. */
export interface ScanResult {
  /** Absolute directory candidate paths are relative to. */
  root: string;
  /** `folders`: `train/`,`val/`… inside; `classes`: class folders directly; `manifest`. */
  layout: 'folders' | 'classes' | 'manifest';
  candidates: Candidate[];
  ignored: IgnoredPath[];
  /** Every class folder seen per split (including empty ones); for `classes` layout under `train`. */
  classFolders: Partial<Record<SplitName, string[]>>;
  /** `folders` layout: the folder each split was read from (`val` -> `validation`). */
  splitFolders?: Partial<Record<SplitName, string>>;
}

const isHidden = (name: string) => name.startsWith('.');

/** Kernel pseudo-filesystems: their files have no stable content and some never end (/proc/self/pagemap, /dev/zero). */
export const PSEUDO_FILESYSTEMS = ['/proc', '/sys', '/dev'];

/**
 * The pseudo-filesystem (`/proc`, `/sys`, `/dev`) `file` lies in once links are resolved, or
 * undefined. A path that cannot be resolved is checked as written.
 */
export function pseudoFilesystemOf(file: string): string | undefined {
  let real = resolve(file);
  try {
    real = realpathSync(real);
  } catch {
    // missing: the caller reports that
  }
  return PSEUDO_FILESYSTEMS.find((root) => real === root || real.startsWith(root + '/'));
}

/** What kind of special file `info` is (a FIFO, socket or device), or undefined for files and folders. */
export function specialFileKind(info: Pick<Stats, 'isFIFO' | 'isSocket' | 'isBlockDevice' | 'isCharacterDevice'>): string | undefined {
  if (info.isFIFO()) return 'a FIFO';
  if (info.isSocket()) return 'a socket';
  if (info.isBlockDevice() || info.isCharacterDevice()) return 'a device';
  return undefined;
}

/** Why `root` cannot be a dataset folder or manifest (under /proc, /sys, /dev), or undefined. */
export function refusedDataPath(root: string): string | undefined {
  const pseudo = pseudoFilesystemOf(root);
  if (pseudo) return `${root} is under ${pseudo}, a kernel pseudo-filesystem, not data; point it at a folder of images`;
  return undefined;
}

/**
 * Scans a folder of class folders, or a folder with `train/` (+ `val/`, `test/`) of class
 * folders. Class folders are walked recursively; hidden files and dot-folders are skipped and
 * reported, as are files with other extensions and files outside any class folder, and special
 * files (FIFOs, sockets, devices, also behind a link), which are never opened: reading one could
 * block forever.
 * @throws StageError `path_not_found` / `path_not_directory` / `path_special` naming the path.
 */
export async function scanFolders(root: string, extensions: string[]): Promise<ScanResult> {
  const refused = refusedDataPath(root);
  if (refused) throw new StageError('path_special', `dataset path ${refused}`, { path: root });
  const info = await stat(root).catch(() => null);
  if (!info) throw new StageError('path_not_found', `dataset path ${root} does not exist`, { path: root });
  if (!info.isDirectory()) throw new StageError('path_not_directory', `dataset path ${root} is not a folder`, { path: root });
  const allowed = new Set(extensions.map((extension) => extension.toLowerCase()));
  const top = (await readdir(root, { withFileTypes: true })).sort((a, b) => compare(a.name, b.name));
  const dirs = top.filter((entry) => isDirectoryEntry(entry) && !isHidden(entry.name)).map((entry) => entry.name);
  const splitDirs = splitFoldersOf(root, dirs);
  const splitFolders = splitDirs.size > 0;
  const result: ScanResult = { root, layout: splitFolders ? 'folders' : 'classes', candidates: [], ignored: [], classFolders: {}, ...(splitFolders ? { splitFolders: Object.fromEntries([...splitDirs].map(([split, name]) => [split, name])) } : {}) };
  const walkClasses = async (base: string, prefix: string, split: SplitName | undefined) => {
    const entries = (await readdir(base, { withFileTypes: true })).sort((a, b) => compare(a.name, b.name));
    const classes: string[] = [];
    for (const entry of entries) {
      const path = prefix + entry.name;
      if (isHidden(entry.name)) result.ignored.push({ path, reason: 'hidden' });
      else if (isDirectoryEntry(entry)) {
        classes.push(entry.name);
        await walkFiles(join(base, entry.name), path + '/', entry.name, split);
      } else result.ignored.push({ path, reason: 'outside_class_folder' });
    }
    result.classFolders[split ?? 'train'] = classes;
  };
  const walkFiles = async (dir: string, prefix: string, className: string, split: SplitName | undefined) => {
    const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => compare(a.name, b.name));
    for (const entry of entries) {
      const path = prefix + entry.name;
      if (isHidden(entry.name)) result.ignored.push({ path, reason: 'hidden' });
      else if (isDirectoryEntry(entry)) await walkFiles(join(dir, entry.name), path + '/', className, split);
      else if (await isSpecialEntry(join(dir, entry.name), entry)) result.ignored.push({ path, reason: 'special_file' });
      else if (allowed.has(extname(entry.name).toLowerCase())) result.candidates.push({ path, className, split });
      else result.ignored.push({ path, reason: 'unsupported_extension' });
    }
  };
  if (splitFolders) {
    for (const entry of top) {
      if (isHidden(entry.name)) result.ignored.push({ path: entry.name, reason: 'hidden' });
      else if (!dirs.includes(entry.name)) result.ignored.push({ path: entry.name, reason: 'outside_class_folder' });
    }
    for (const split of SPLITS) {
      const name = splitDirs.get(split);
      if (name !== undefined) await walkClasses(join(root, name), name + '/', split);
    }
  } else {
    await walkClasses(root, '', undefined);
  }
  return result;
}

/**
 * Folder names read as a split, in any case: Keras' `train/` + `validation/`, torchvision-style
 * `val/`, `valid/`, `eval/`, and `test/`.
 */
export const SPLIT_FOLDER_NAMES: Record<string, SplitName> = { train: 'train', val: 'val', valid: 'val', validation: 'val', eval: 'val', test: 'test' };

/**
 * Which top-level folders are splits: none (class folders), or split name -> folder name when
 * every folder is split-like and one is `train`. A mix of split-like and other folders, two
 * folders for one split, or splits without `train/` are refused: reading `validation/` as a
 * class would train a classifier of splits.
 * @throws StageError `ambiguous_layout` saying what was found and how to fix it.
 */
export function splitFoldersOf(root: string, dirs: string[]): Map<SplitName, string> {
  const splitLike = dirs.filter((name) => SPLIT_FOLDER_NAMES[name.toLowerCase()] !== undefined);
  if (splitLike.length === 0) return new Map();
  const others = dirs.filter((name) => !splitLike.includes(name));
  const refuse = (why: string) => new StageError('ambiguous_layout', `${root}: ${why}`, { path: root, splitFolders: splitLike, otherFolders: others });
  if (others.length) {
    throw refuse(
      `it holds split folders (${splitLike.map((n) => `${n}/`).join(', ')}) next to other folders (${others.slice(0, 5).map((n) => `${n}/`).join(', ')}${others.length > 5 ? ', …' : ''}). ` +
        `Put every class folder inside the split folders, or point path at one level deeper; if ${splitLike.join(', ')} ${splitLike.length === 1 ? 'is a class' : 'are classes'}, rename ${splitLike.length === 1 ? 'it' : 'them'} or list the images in a manifest`,
    );
  }
  const bySplit = new Map<SplitName, string>();
  for (const name of splitLike) {
    const split = SPLIT_FOLDER_NAMES[name.toLowerCase()];
    const previous = bySplit.get(split);
    if (previous !== undefined) throw refuse(`both ${previous}/ and ${name}/ would be the ${split} split; keep one (or merge them)`);
    bySplit.set(split, name);
  }
  if (!bySplit.has('train')) throw refuse(`it has ${splitLike.map((n) => `${n}/`).join(' and ')} but no train/ folder; add train/ with the training images' class folders`);
  return bySplit;
}

/** A real folder. A symbolic link counts as a file (a linked folder could loop; a linked image is read through the link). */
function isDirectoryEntry(entry: { isDirectory(): boolean }): boolean {
  return entry.isDirectory();
}

/** A FIFO, socket or device, itself or behind a symbolic link (a dangling link is not: its read fails and says so). */
async function isSpecialEntry(full: string, entry: Parameters<typeof specialFileKind>[0] & { isSymbolicLink(): boolean }): Promise<boolean> {
  if (specialFileKind(entry)) return true;
  if (!entry.isSymbolicLink()) return false;
  const target = await stat(full).catch(() => null);
  return target !== null && (specialFileKind(target) !== undefined || pseudoFilesystemOf(full) !== undefined);
}

/** Code-point order, independent of the locale, so class indices are the same everywhere. */
export function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Reads a label manifest: CSV (`file,label[,split]`, optional header row, RFC 4180 quoting) or
 * JSONL (`{"file": …, "label": …, "split"?: …}` per line), chosen by the `.jsonl`/`.ndjson`
 * extension. File paths are relative to the manifest's folder, which becomes the root.
 * @throws StageError `manifest_not_found` or `manifest_invalid` with the line number.
 */
export async function readLabelManifest(file: string): Promise<ScanResult> {
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new StageError('manifest_not_found', `manifest ${file} cannot be read: ${error.message}`, { path: file }, { cause: error });
  });
  const root = dirname(file);
  const rows = parseManifestRows(text, /\.(jsonl|ndjson)$/i.test(file) ? 'jsonl' : 'csv', file);
  const withSplit = rows.filter((row) => row.split !== undefined).length;
  if (withSplit !== 0 && withSplit !== rows.length) {
    throw new StageError('manifest_invalid', `${file}: either every row or no row must give a split (${withSplit} of ${rows.length} do)`, { path: file });
  }
  const candidates = rows.map(({ file: path, label, split: written, line }) => {
    const split = written === undefined ? undefined : SPLIT_FOLDER_NAMES[written.toLowerCase()];
    if (written !== undefined && split === undefined) {
      throw new StageError('manifest_invalid', `${file}:${line}: split '${written}' is not one of ${Object.keys(SPLIT_FOLDER_NAMES).join(', ')}`, { path: file, line });
    }
    const absolute = resolve(root, path);
    return { path: relative(root, absolute).split(sep).join('/'), className: label, split };
  });
  return { root, layout: 'manifest', candidates, ignored: [], classFolders: {} };
}

/** Rows of a manifest with their 1-based line numbers. */
export function parseManifestRows(text: string, format: 'csv' | 'jsonl', file = 'manifest'): { file: string; label: string; split?: string; line: number }[] {
  const rows: { file: string; label: string; split?: string; line: number }[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, index) => {
    const line = index + 1;
    if (!raw.trim()) return;
    let fields: unknown[];
    if (format === 'jsonl') {
      let value: Record<string, unknown>;
      try {
        value = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        throw new StageError('manifest_invalid', `${file}:${line}: not valid JSON`, { path: file, line });
      }
      fields = [value.file, value.label, value.split];
    } else {
      fields = splitCsvLine(raw);
      if (rows.length === 0 && String(fields[0]).trim().toLowerCase() === 'file' && String(fields[1]).trim().toLowerCase() === 'label') return;
    }
    const [path, label, split] = fields.map((field) => (field === undefined || field === null ? undefined : String(field).trim()));
    if (!path || !label) throw new StageError('manifest_invalid', `${file}:${line}: needs a file and a label`, { path: file, line });
    rows.push({ file: path, label, split: split || undefined, line });
  });
  return rows;
}

function splitCsvLine(line: string): string[] {
  const fields: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const char = line[i];
    if (quoted) {
      if (char === '"' && line[i + 1] === '"') (field += '"'), i++;
      else if (char === '"') quoted = false;
      else field += char;
    } else if (char === '"') quoted = true;
    else if (char === ',') fields.push(field), (field = '');
    else field += char;
  }
  fields.push(field);
  return fields;
}

/** Fractions of each class that go to val and test. */
export interface SplitFractions {
  val: number;
  test: number;
}

/**
 * Seeded stratified split: within each class, files are ranked by sha256(seed, path) and the
 * first `round(n * test)` go to test, the next `round(n * val)` to val, the rest to train.
 * Ranking by hash rather than shuffling means adding or removing one file moves at most one
 * other file between splits. A class with at least 2 files and `val > 0` keeps ≥1 val file
 * and ≥1 train file.
 */
export function assignSplits<T extends { path: string; className: string }>(items: T[], fractions: SplitFractions, seed: number): (T & { split: SplitName })[] {
  const byClass = new Map<string, T[]>();
  for (const item of items) {
    const list = byClass.get(item.className) ?? [];
    list.push(item);
    byClass.set(item.className, list);
  }
  const out: (T & { split: SplitName })[] = [];
  for (const list of byClass.values()) {
    const ranked = list
      .map((item) => ({ item, rank: createHash('sha256').update(`${seed >>> 0}\0${item.path}`).digest('hex') }))
      .sort((a, b) => compare(a.rank, b.rank) || compare(a.item.path, b.item.path));
    const n = ranked.length;
    const test = Math.round(n * fractions.test);
    let val = Math.round(n * fractions.val);
    if (fractions.val > 0 && n - test >= 2) val = Math.min(Math.max(val, 1), n - test - 1);
    ranked.forEach(({ item }, rank) => out.push({ ...item, split: rank < test ? 'test' : rank < test + val ? 'val' : 'train' }));
  }
  return out;
}
