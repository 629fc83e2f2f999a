/**
 * Batch sources for the training loop: in-memory arrays (cached features) and the shard
 * reader (images, optionally augmented). Both shuffle with a seed derived per epoch, never
 * with `Math.random`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createRandom, deriveSeed } from '../data/random.js';
import type { ShardDataset } from '../data/shards.js';
import { StageError } from '../runtime/errors.js';
import type { BatchSource, TrainBatch } from './train.js';

/** Records held in memory: `x` is `count * prod(recordShape)` float32. */
export interface ArrayData {
  x: Float32Array;
  y: Int32Array;
  recordShape: number[];
}

export function arraySource(data: ArrayData, batchSize: number, seed: number): BatchSource {
  return viewSource(data, 1, batchSize, seed);
}

/**
 * Batches over in-memory records holding `views` stacked passes of a split (e.g. augmented
 * views of cached features): epoch `e` uses view `e % views`, shuffled with a per-epoch seed.
 */
export function viewSource(data: ArrayData, views: number, batchSize: number, seed: number): BatchSource {
  const size = data.recordShape.reduce((a, b) => a * b, 1);
  const perView = data.y.length / views;
  return {
    count: perView,
    async *batches(epoch, { shuffle }) {
      const base = (epoch % views) * perView;
      const order = Int32Array.from({ length: perView }, (_, i) => base + i);
      if (shuffle) createRandom(deriveSeed(seed, 'epoch', epoch)).shuffle(order);
      for (let start = 0; start < perView; start += batchSize) {
        const rows = order.subarray(start, Math.min(perView, start + batchSize));
        const x = new Float32Array(rows.length * size);
        const y = new Int32Array(rows.length);
        rows.forEach((row, i) => {
          x.set(data.x.subarray(row * size, (row + 1) * size), i * size);
          y[i] = data.y[row];
        });
        yield { x, y, count: rows.length, shape: [rows.length, ...data.recordShape] } satisfies TrainBatch;
      }
    },
  };
}

/** Batches of a split straight from the shards (augmented when `augment`). */
export function shardSource(dataset: ShardDataset, split: string, batchSize: number, seed: number, augment: boolean): BatchSource {
  return {
    count: dataset.splits[split]?.count ?? 0,
    async *batches(epoch, { shuffle }) {
      if (!dataset.splits[split]) return;
      for await (const batch of dataset.batches(split, { batchSize, shuffle, seed, epoch, augment })) {
        yield { x: batch.x, y: batch.y, count: batch.count, shape: batch.shape };
      }
    },
  };
}

/** Writes in-memory records as `<name>.f32` + `<name>.json` (shape, labels). */
export async function saveArrayData(dir: string, name: string, data: ArrayData): Promise<void> {
  await writeFile(path.join(dir, `${name}.f32`), Buffer.from(data.x.buffer, data.x.byteOffset, data.x.byteLength));
  await writeFile(path.join(dir, `${name}.json`), JSON.stringify({ recordShape: data.recordShape, count: data.y.length, labels: Array.from(data.y) }));
}

export async function loadArrayData(dir: string, name: string): Promise<ArrayData> {
  try {
    const meta = JSON.parse(await readFile(path.join(dir, `${name}.json`), 'utf8')) as { recordShape: number[]; count: number; labels: number[] };
    const bytes = await readFile(path.join(dir, `${name}.f32`));
    const x = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    const expected = meta.count * meta.recordShape.reduce((a, b) => a * b, 1);
    if (x.length !== expected) throw new Error(`${name}.f32 holds ${x.length} values, expected ${expected}`);
    return { x: new Float32Array(x), y: Int32Array.from(meta.labels), recordShape: meta.recordShape };
  } catch (error) {
    throw new StageError('features_unreadable', `cached features ${path.join(dir, name)} are unreadable: ${(error as Error).message}`, { dir, name }, { cause: error });
  }
}
