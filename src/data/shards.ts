/**
 * Binary shards: the `preprocess` artifact and the one data reader every training and
 * evaluation stage uses.
 *
 * Layout of the artifact directory:
 * ```
 * preprocess.json          the PreprocessSpec (size, fit, channels, background, normalize, augment)
 * shards.json              ShardIndex: classes, record shape, per split its shards and counts
 * shards/train-00000.bin   records back to back, each height*width*channels uint8 (HWC)
 * shards/train.labels      one little-endian int32 label per record, in record order
 * shards/val-00000.bin …
 * ```
 * Records are fixed-size, so record `i` of a split lives in shard `floor(i / recordsPerShard)`
 * at byte `(i % recordsPerShard) * recordBytes`: the reader seeks straight to it. Records are
 * in the order of the split's entries in the dataset's `files.jsonl`.
 *
 * Shards stay uint8 (4× smaller than float32); normalization and train-only augmentation are
 * applied when batches are read, so each epoch sees fresh augmentations.
 */
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { StageError } from '../runtime/errors.js';
import { applyAugmentation, augmentRecord, type AugmentDraw } from './augment.js';
import { createRandom, deriveSeed } from './random.js';
import { NO_AUGMENT, type PreprocessSpec } from './spec.js';

export const SPEC_FILE = 'preprocess.json';
export const INDEX_FILE = 'shards.json';
/** Subdirectory of the artifact holding shard and label files. */
export const SHARD_DIR = 'shards';

/** One shard file of a split. */
export interface ShardFile {
  /** Path relative to the artifact directory. */
  file: string;
  /** Records in it. */
  count: number;
}

/** One split of `shards.json`. */
export interface SplitIndex {
  /** Records in the split. */
  count: number;
  /** Records per class (`classCounts[label]`). */
  classCounts: number[];
  /** Labels file (int32 LE per record), relative to the artifact directory. */
  labels: string;
  /** Shards in order; all but the last hold `recordsPerShard` records. */
  shards: ShardFile[];
}

/** `shards.json`. */
export interface ShardIndex {
  format: 'finetune-shards';
  version: 1;
  /** Class names; labels index into it. */
  classes: string[];
  /** `[height, width, channels]` of every record. */
  recordShape: [number, number, number];
  /** Bytes per record (the product of `recordShape`). */
  recordBytes: number;
  /** Records per full shard. */
  recordsPerShard: number;
  /** Splits that have at least one record. */
  splits: Record<string, SplitIndex>;
}

/** Reads just the preprocessing spec of a `preprocess` (or exported) artifact. */
export async function readPreprocessSpec(dir: string): Promise<PreprocessSpec> {
  try {
    return JSON.parse(await readFile(join(dir, SPEC_FILE), 'utf8')) as PreprocessSpec;
  } catch (error) {
    throw new StageError('shards_unreadable', `cannot read ${join(dir, SPEC_FILE)}: ${(error as Error).message}`, { dir }, { cause: error });
  }
}

/** Options of `ShardDataset.batches`. */
export interface BatchOptions {
  /** Records per batch (the last batch may be smaller unless `dropRemainder`). */
  batchSize: number;
  /** Visit records in a seeded random order that changes every epoch. Default false (record order). */
  shuffle?: boolean;
  /** Seed for shuffling and augmentation; use `ctx.seed`. Default 0. */
  seed?: number;
  /** Epoch number, mixed into the seed so each epoch differs reproducibly. Default 0. */
  epoch?: number;
  /** Apply the spec's `augment` (train only). Default false. */
  augment?: boolean;
  /** Skip a final partial batch. Default false. */
  dropRemainder?: boolean;
  /**
   * Apply exactly this draw to every record instead of random ones (null: none), e.g. the
   * mirrored view of a flip-only augmentation. Overrides `augment`.
   */
  draw?: AugmentDraw | null;
}

/** One batch, ready to wrap in tensors: `tf.tensor4d(x, [count, h, w, c])`, `tf.tensor1d(y, 'int32')`. */
export interface Batch {
  /** Normalized (and maybe augmented) pixels, `count * h * w * c` float32, NHWC. */
  x: Float32Array;
  /** Labels, `count` int32. */
  y: Int32Array;
  /** Records in this batch. */
  count: number;
  /** `[count, h, w, c]`. */
  shape: [number, number, number, number];
  /** Record index within the split of each row, e.g. to name misclassified files. */
  indices: Int32Array;
}

/** A batch of raw records, as the shards hold them. */
export interface RecordBatch {
  /** `count * h * w * c` uint8, NHWC. */
  pixels: Uint8Array;
  /** Labels, `count` int32. */
  y: Int32Array;
  count: number;
  /** `[count, h, w, c]`. */
  shape: [number, number, number, number];
}

/** A split's summary as the reader exposes it. */
export interface SplitInfo {
  count: number;
  classCounts: number[];
}

/** An opened `preprocess` artifact. Holds file handles: call `close()` when done. */
export interface ShardDataset {
  /** The artifact directory. */
  dir: string;
  classes: string[];
  spec: PreprocessSpec;
  /** `[height, width, channels]`. */
  recordShape: [number, number, number];
  /** Splits with at least one record. */
  splits: Record<string, SplitInfo>;
  /** All labels of a split in record order (int32, 4 bytes per record, cached). */
  labels(split: string): Promise<Int32Array>;
  /** Raw uint8 records (HWC, back to back) for the given record indices. */
  readRecords(split: string, indices: ArrayLike<number>): Promise<Uint8Array>;
  /**
   * Batches of a split. Memory is bounded by two batches (one is prefetched while the caller
   * works on the other) plus the labels, whatever the dataset size. Records are read by
   * seeking into the shards; with `shuffle`, order is a permutation seeded by (seed, epoch).
   * Augmentation is seeded per (seed, epoch, record), so it does not depend on `batchSize`.
   */
  batches(split: string, options: BatchOptions): AsyncIterable<Batch>;
  /**
   * The raw records of a split in record order, `batchSize` at a time (the last may be
   * smaller), one batch prefetched like `batches`: for an engine that normalizes uint8 pixels
   * itself (see `ml/onnx/convert-pixels.ts`).
   */
  recordBatches(split: string, batchSize: number): AsyncIterable<RecordBatch>;
  /** Number of batches `batches` yields for these options. */
  batchCount(split: string, options: Pick<BatchOptions, 'batchSize' | 'dropRemainder'>): number;
  close(): Promise<void>;
}

/** Opens a `preprocess` artifact for reading and checks its files are complete. */
export async function openDataset(dir: string): Promise<ShardDataset> {
  const spec = await readPreprocessSpec(dir);
  let index: ShardIndex;
  try {
    index = JSON.parse(await readFile(join(dir, INDEX_FILE), 'utf8')) as ShardIndex;
  } catch (error) {
    throw new StageError('shards_unreadable', `cannot read ${join(dir, INDEX_FILE)}: ${(error as Error).message}`, { dir }, { cause: error });
  }
  if (index.format !== 'finetune-shards' || index.version !== 1) {
    throw new StageError('shards_unreadable', `${join(dir, INDEX_FILE)} is not a version 1 shard index`, { dir });
  }
  for (const [split, info] of Object.entries(index.splits)) {
    for (const shard of info.shards) await expectSize(join(dir, shard.file), shard.count * index.recordBytes, split);
    await expectSize(join(dir, info.labels), info.count * 4, split);
  }
  return new Reader(dir, spec, index);
}

async function expectSize(file: string, bytes: number, split: string): Promise<void> {
  const size = await stat(file).then((s) => s.size, () => -1);
  if (size !== bytes) {
    throw new StageError('shards_corrupt', `${file} has ${size < 0 ? 'gone missing' : `${size} bytes`}, expected ${bytes}`, { file, split, size, expected: bytes });
  }
}

class Reader implements ShardDataset {
  readonly classes: string[];
  readonly recordShape: [number, number, number];
  readonly splits: Record<string, SplitInfo>;
  private handles = new Map<string, Promise<FileHandle>>();
  private labelCache = new Map<string, Promise<Int32Array>>();

  constructor(readonly dir: string, readonly spec: PreprocessSpec, private readonly index: ShardIndex) {
    this.classes = index.classes;
    this.recordShape = index.recordShape;
    this.splits = Object.fromEntries(Object.entries(index.splits).map(([name, s]) => [name, { count: s.count, classCounts: s.classCounts }]));
  }

  private split(name: string): SplitIndex {
    const split = this.index.splits[name];
    if (!split) {
      throw new StageError('split_missing', `the dataset has no '${name}' split (it has: ${Object.keys(this.index.splits).join(', ') || 'none'})`, { split: name });
    }
    return split;
  }

  labels(name: string): Promise<Int32Array> {
    const split = this.split(name);
    let labels = this.labelCache.get(name);
    if (!labels) {
      labels = readFile(join(this.dir, split.labels)).then((bytes) => {
        const out = new Int32Array(split.count);
        for (let i = 0; i < split.count; i++) out[i] = bytes.readInt32LE(i * 4);
        return out;
      });
      this.labelCache.set(name, labels);
    }
    return labels;
  }

  async readRecords(name: string, indices: ArrayLike<number>): Promise<Uint8Array> {
    const split = this.split(name);
    const { recordBytes, recordsPerShard } = this.index;
    const out = new Uint8Array(indices.length * recordBytes);
    const reads: Promise<unknown>[] = [];
    // Runs of consecutive records in one shard become one read (the unshuffled case).
    for (let start = 0; start < indices.length; ) {
      const first = indices[start];
      if (!(first >= 0 && first < split.count)) {
        throw new StageError('record_out_of_range', `record ${first} is outside split '${name}' (${split.count} records)`, { split: name, index: first });
      }
      const shard = Math.floor(first / recordsPerShard);
      let end = start + 1;
      while (end < indices.length && indices[end] === first + (end - start) && Math.floor(indices[end] / recordsPerShard) === shard && indices[end] < split.count) end++;
      const target = start * recordBytes;
      const length = (end - start) * recordBytes;
      const position = (first % recordsPerShard) * recordBytes;
      reads.push(this.handle(split.shards[shard].file).then((handle) => readFully(handle, out, target, length, position)));
      start = end;
    }
    await Promise.all(reads);
    return out;
  }

  batchCount(name: string, options: Pick<BatchOptions, 'batchSize' | 'dropRemainder'>): number {
    const count = this.split(name).count;
    return options.dropRemainder ? Math.floor(count / options.batchSize) : Math.ceil(count / options.batchSize);
  }

  async *batches(name: string, options: BatchOptions): AsyncGenerator<Batch> {
    const split = this.split(name);
    if (!(Number.isInteger(options.batchSize) && options.batchSize > 0)) {
      throw new StageError('batch_size', `batchSize must be a positive integer, got ${options.batchSize}`, { batchSize: options.batchSize });
    }
    const seed = options.seed ?? 0;
    const epoch = options.epoch ?? 0;
    const order = new Int32Array(split.count);
    for (let i = 0; i < order.length; i++) order[i] = i;
    if (options.shuffle) createRandom(deriveSeed(seed, 'shuffle', epoch)).shuffle(order);
    const labels = await this.labels(name);
    yield* prefetched(this.batchCount(name, options), async (batch) => {
      const indices = order.slice(batch * options.batchSize, Math.min(order.length, (batch + 1) * options.batchSize));
      const raw = await this.readRecords(name, indices);
      return this.decodeBatch(raw, indices, labels, options, seed, epoch);
    });
  }

  async *recordBatches(name: string, batchSize: number): AsyncGenerator<RecordBatch> {
    const split = this.split(name);
    if (!(Number.isInteger(batchSize) && batchSize > 0)) throw new StageError('batch_size', `batchSize must be a positive integer, got ${batchSize}`, { batchSize });
    const labels = await this.labels(name);
    yield* prefetched(this.batchCount(name, { batchSize }), async (batch) => {
      const start = batch * batchSize;
      const count = Math.min(split.count, start + batchSize) - start;
      const pixels = await this.readRecords(name, Int32Array.from({ length: count }, (_, i) => start + i));
      return { pixels, y: labels.slice(start, start + count), count, shape: [count, ...this.recordShape] };
    });
  }

  private decodeBatch(raw: Uint8Array, indices: Int32Array, labels: Int32Array, options: BatchOptions, seed: number, epoch: number): Batch {
    const { recordBytes } = this.index;
    const count = indices.length;
    const x = new Float32Array(count * recordBytes);
    const y = new Int32Array(count);
    const augment = options.augment ? this.spec.augment : NO_AUGMENT;
    for (let row = 0; row < count; row++) {
      y[row] = labels[indices[row]];
      const record = raw.subarray(row * recordBytes, (row + 1) * recordBytes);
      if (options.draw !== undefined) {
        applyAugmentation(record, this.recordShape, options.draw, this.spec.normalize, x, row * recordBytes);
        continue;
      }
      const random = createRandom(deriveSeed(seed, 'augment', epoch, indices[row]));
      augmentRecord(record, this.recordShape, augment, this.spec.normalize, random, x, row * recordBytes);
    }
    return { x, y, count, shape: [count, ...this.recordShape], indices };
  }

  private handle(file: string): Promise<FileHandle> {
    let handle = this.handles.get(file);
    if (!handle) {
      handle = open(join(this.dir, file), 'r');
      this.handles.set(file, handle);
    }
    return handle;
  }

  async close(): Promise<void> {
    const handles = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(handles.map(async (handle) => (await handle).close().catch(() => {})));
  }
}

/** `load(0) … load(count - 1)` in order, the next one loading while the caller works on the current. */
async function* prefetched<T>(count: number, load: (batch: number) => Promise<T>): AsyncGenerator<T> {
  let pending = count > 0 ? load(0) : null;
  for (let batch = 0; batch < count && pending; batch++) {
    const current = await pending;
    pending = batch + 1 < count ? load(batch + 1) : null;
    // A caller that stops early must not leave an unhandled rejection behind.
    pending?.catch(() => {});
    yield current;
  }
}

async function readFully(handle: FileHandle, out: Uint8Array, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(out, offset + done, length - done, position + done);
    if (bytesRead === 0) throw new StageError('shards_corrupt', `unexpected end of shard at byte ${position + done}`, { position: position + done });
    done += bytesRead;
  }
}
