/**
 * The `dataset` artifact written by `ingest`: `dataset.json` (classes, counts, where the files
 * are) plus `files.jsonl` (one entry per image, streamed so a million-image set never has to be
 * parsed as one document) plus `report.json` (what was skipped, ignored or suspicious).
 */
import { createReadStream, existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { StageError } from '../runtime/errors.js';

/** The splits a dataset can have, in their canonical order. */
export const SPLITS = ['train', 'val', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];

/** One image of the dataset; a line of `files.jsonl`. */
export interface DatasetEntry {
  /** Path relative to the dataset `root`, with `/` separators. */
  path: string;
  /** sha256 (hex) of the file's bytes. */
  sha256: string;
  /** File size in bytes. */
  size: number;
  /** Index into `classes`. */
  label: number;
  /** Which split the image belongs to. */
  split: SplitName;
}

/** How the splits were decided. */
export type SplitSource = 'folders' | 'seeded' | 'manifest' | 'mixed';

/** `dataset.json`. */
export interface DatasetHeader {
  format: 'finetune-dataset';
  version: 1;
  /** Absolute directory that entry paths are relative to. */
  root: string;
  /**
   * The same directory relative to the pipeline file's folder, so a project moved with its
   * artifact store still finds its images (`resolveDatasetRoot`).
   */
  rootFromPipeline?: string;
  /** Class names sorted by code point; a label is an index into this list. */
  classes: string[];
  /** Where the split assignment came from (`mixed`: val carved out of a `train/` folder). */
  splitSource: SplitSource;
  /** Images per split. */
  counts: Record<SplitName, number>;
  /** Images per split and class (`classCounts.train[label]`). */
  classCounts: Record<SplitName, number[]>;
  /** The entries file, relative to the artifact directory. */
  files: string;
}

/** Names of the files in a dataset artifact. */
export const DATASET_FILE = 'dataset.json';
export const ENTRIES_FILE = 'files.jsonl';
export const REPORT_FILE = 'report.json';

/** Writes `dataset.json` and `files.jsonl` (entries in the given order). */
export async function writeDataset(dir: string, header: Omit<DatasetHeader, 'format' | 'version' | 'files'>, entries: DatasetEntry[]): Promise<DatasetHeader> {
  const full: DatasetHeader = { format: 'finetune-dataset', version: 1, ...header, files: ENTRIES_FILE };
  const lines = entries.map((entry) =>
    JSON.stringify({ path: entry.path, sha256: entry.sha256, size: entry.size, label: entry.label, split: entry.split }),
  );
  await writeFile(join(dir, ENTRIES_FILE), lines.length ? lines.join('\n') + '\n' : '');
  await writeFile(join(dir, DATASET_FILE), JSON.stringify(full, null, 2) + '\n');
  return full;
}

/** Reads `dataset.json` of a dataset artifact. */
export async function readDatasetHeader(dir: string): Promise<DatasetHeader> {
  let header: DatasetHeader;
  try {
    header = JSON.parse(await readFile(join(dir, DATASET_FILE), 'utf8')) as DatasetHeader;
  } catch (error) {
    throw new StageError('dataset_unreadable', `cannot read ${join(dir, DATASET_FILE)}: ${(error as Error).message}`, { dir }, { cause: error });
  }
  if (header.format !== 'finetune-dataset' || header.version !== 1) {
    throw new StageError('dataset_unreadable', `${join(dir, DATASET_FILE)} is not a version 1 dataset manifest`, { dir });
  }
  return header;
}

/** Streams the entries of a dataset artifact in file order, one line at a time. */
export async function* readDatasetEntries(dir: string, header?: DatasetHeader): AsyncGenerator<DatasetEntry> {
  const file = join(dir, header?.files ?? ENTRIES_FILE);
  const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let number = 0;
  for await (const line of lines) {
    number++;
    if (!line.trim()) continue;
    try {
      yield JSON.parse(line) as DatasetEntry;
    } catch (error) {
      throw new StageError('dataset_unreadable', `${file}:${number}: not a JSON entry`, { file, line: number }, { cause: error });
    }
  }
}

/**
 * Where a dataset's images are now: the recorded absolute root, or, when that is gone (the
 * project moved), the root recorded relative to the pipeline file's folder. Either way each
 * image's content hash is still checked by whoever reads it.
 */
export function resolveDatasetRoot(header: DatasetHeader, baseDir: string): string {
  if (existsSync(header.root) || header.rootFromPipeline === undefined) return header.root;
  return resolve(baseDir, header.rootFromPipeline);
}
