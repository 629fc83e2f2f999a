/**
 * Writes the `preprocess` artifact's shards (layout documented in `shards.ts`), streaming with
 * a bounded buffer so memory does not grow with the dataset.
 */
import { open, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { StageError } from '../runtime/errors.js';
import { INDEX_FILE, SHARD_DIR, SPEC_FILE, type ShardFile, type ShardIndex, type SplitIndex } from './shards.js';
import type { PreprocessSpec } from './spec.js';

/** Shards are cut at about this size so no single file gets unwieldy. */
const TARGET_SHARD_BYTES = 256 * 1024 * 1024;
const WRITE_BUFFER_BYTES = 1024 * 1024;

/** Records per shard for a record size (at least 1). */
export function recordsPerShardFor(recordBytes: number): number {
  return Math.max(1, Math.floor(TARGET_SHARD_BYTES / recordBytes));
}

/**
 * Streams one split's records into shard files with a bounded buffer; call `append` in record
 * order (awaiting each), then `finish`.
 */
export class ShardWriter {
  private shards: ShardFile[] = [];
  private handle: FileHandle | null = null;
  private labels: FileHandle | null = null;
  private buffer: Buffer;
  private buffered = 0;
  private labelBuffer = Buffer.alloc(4096);
  private labelBuffered = 0;
  private count = 0;
  private readonly classCounts: number[];

  constructor(
    private readonly dir: string,
    private readonly split: string,
    private readonly recordBytes: number,
    private readonly recordsPerShard: number,
    classCount: number,
  ) {
    this.buffer = Buffer.alloc(Math.max(recordBytes, Math.min(WRITE_BUFFER_BYTES, recordBytes * recordsPerShard)));
    this.classCounts = new Array(classCount).fill(0);
  }

  /** Appends one record (exactly `recordBytes` bytes) with its label. */
  async append(pixels: Uint8Array, label: number): Promise<void> {
    if (pixels.byteLength !== this.recordBytes) {
      throw new StageError('record_size', `record of ${pixels.byteLength} bytes, expected ${this.recordBytes}`, { split: this.split });
    }
    if (this.count % this.recordsPerShard === 0) await this.startShard();
    if (this.buffered + pixels.byteLength > this.buffer.byteLength) await this.flushPixels();
    this.buffer.set(pixels, this.buffered);
    this.buffered += pixels.byteLength;
    if (this.labelBuffered + 4 > this.labelBuffer.byteLength) await this.flushLabels();
    this.labelBuffer.writeInt32LE(label, this.labelBuffered);
    this.labelBuffered += 4;
    this.shards[this.shards.length - 1].count++;
    this.classCounts[label]++;
    this.count++;
  }

  /** Flushes and closes everything; returns the split's index entry. */
  async finish(): Promise<SplitIndex> {
    await this.flushPixels();
    await this.handle?.close();
    this.handle = null;
    await this.flushLabels();
    if (!this.labels) this.labels = await open(join(this.dir, this.labelsFile()), 'w');
    await this.labels.close();
    this.labels = null;
    return { count: this.count, classCounts: this.classCounts, labels: this.labelsFile(), shards: this.shards };
  }

  /** Closes files without writing an index (on failure). */
  async abort(): Promise<void> {
    await this.handle?.close().catch(() => {});
    await this.labels?.close().catch(() => {});
  }

  private labelsFile(): string {
    return `${SHARD_DIR}/${this.split}.labels`;
  }

  private async startShard(): Promise<void> {
    await this.flushPixels();
    await this.handle?.close();
    const file = `${SHARD_DIR}/${this.split}-${String(this.shards.length).padStart(5, '0')}.bin`;
    this.handle = await open(join(this.dir, file), 'w');
    this.shards.push({ file, count: 0 });
  }

  private async flushPixels(): Promise<void> {
    if (this.buffered === 0 || !this.handle) return;
    await this.handle.write(this.buffer, 0, this.buffered);
    this.buffered = 0;
  }

  private async flushLabels(): Promise<void> {
    if (this.labelBuffered === 0) return;
    this.labels ??= await open(join(this.dir, this.labelsFile()), 'w');
    await this.labels.write(this.labelBuffer, 0, this.labelBuffered);
    this.labelBuffered = 0;
  }
}

/** Subdirectory that shard files go into (create it before writing). */
export function shardDirectory(dir: string): string {
  return join(dir, SHARD_DIR);
}

/** Writes `preprocess.json` and `shards.json`. */
export async function writeShardIndex(dir: string, spec: PreprocessSpec, index: Omit<ShardIndex, 'format' | 'version'>): Promise<void> {
  await writeFile(join(dir, SPEC_FILE), JSON.stringify(spec, null, 2) + '\n');
  await writeFile(join(dir, INDEX_FILE), JSON.stringify({ format: 'finetune-shards', version: 1, ...index }, null, 2) + '\n');
}

