import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { shardDirectory, ShardWriter, writeShardIndex } from '../../../src/data/shard-writer.js';
import { openDataset } from '../../../src/data/shards.js';
import { NO_AUGMENT, resolveNormalization, type PreprocessSpec } from '../../../src/data/spec.js';
import { testdir } from './ctx.js';

let dir: { path: string; remove(): Promise<void> };
beforeEach(async () => (dir = await testdir()));
afterEach(async () => dir.remove());

const spec: PreprocessSpec = { size: [2, 2], fit: 'cover', channels: 1, background: [0, 0, 0], normalize: resolveNormalization('unit', 1), augment: NO_AUGMENT };
/** Record i is four bytes all equal to i; its label is i % 3. */
const record = (i: number) => new Uint8Array(4).fill(i);

async function writeSplit(count: number, recordsPerShard: number) {
  await mkdir(shardDirectory(dir.path), { recursive: true });
  const writer = new ShardWriter(dir.path, 'train', 4, recordsPerShard, 3);
  for (let i = 0; i < count; i++) await writer.append(record(i), i % 3);
  const train = await writer.finish();
  await writeShardIndex(dir.path, spec, { classes: ['a', 'b', 'c'], recordShape: [2, 2, 1], recordBytes: 4, recordsPerShard, splits: { train } });
  return train;
}

describe('shard writer and reader', () => {
  it('cuts shards at recordsPerShard and reads any records back across them', async () => {
    const train = await writeSplit(10, 3);
    expect(train.shards.map((s) => s.count)).toEqual([3, 3, 3, 1]);
    expect(train.classCounts).toEqual([4, 3, 3]);
    const dataset = await openDataset(dir.path);
    try {
      const indices = [9, 0, 1, 2, 3, 4, 7, 5];
      const raw = await dataset.readRecords('train', indices);
      expect(Array.from({ length: indices.length }, (_, i) => raw[i * 4])).toEqual(indices);
      expect(Array.from(await dataset.labels('train'))).toEqual([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
      await expect(dataset.readRecords('train', [10])).rejects.toMatchObject({ code: 'record_out_of_range' });
      // raw records in record order, a batch at a time, across shard boundaries
      const raws = [];
      for await (const batch of dataset.recordBatches('train', 4)) raws.push(batch);
      expect(raws.map((b) => [b.count, ...b.shape])).toEqual([[4, 4, 2, 2, 1], [4, 4, 2, 2, 1], [2, 2, 2, 2, 1]]);
      expect(raws.flatMap((b) => Array.from(b.pixels))).toEqual(Array.from(await dataset.readRecords('train', [...Array(10).keys()])));
      expect(raws.flatMap((b) => Array.from(b.y))).toEqual([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
      await expect(dataset.recordBatches('train', 0)[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'batch_size' });
      const batches = [];
      for await (const batch of dataset.batches('train', { batchSize: 4, shuffle: true, seed: 9 })) batches.push(batch);
      const seen = batches.flatMap((b) => Array.from(b.indices));
      expect([...seen].sort((a, b) => a - b)).toEqual([...Array(10).keys()]);
      for (const batch of batches) {
        for (let row = 0; row < batch.count; row++) {
          expect(batch.x[row * 4]).toBeCloseTo(batch.indices[row] / 255, 6);
          expect(batch.y[row]).toBe(batch.indices[row] % 3);
        }
      }
    } finally {
      await dataset.close();
    }
  });

  it('rejects a record of the wrong size and a bad batch size', async () => {
    await mkdir(shardDirectory(dir.path), { recursive: true });
    const writer = new ShardWriter(dir.path, 'train', 4, 3, 3);
    await expect(writer.append(new Uint8Array(5), 0)).rejects.toMatchObject({ code: 'record_size' });
    await writer.abort();
    await writeSplit(2, 3);
    const dataset = await openDataset(dir.path);
    await expect(dataset.batches('train', { batchSize: 0 })[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'batch_size' });
    await dataset.close();
  });

  it('reads memory-bounded: a batch holds only its own records', async () => {
    await writeSplit(1000, 100);
    const dataset = await openDataset(dir.path);
    let largest = 0;
    for await (const batch of dataset.batches('train', { batchSize: 16, shuffle: true, seed: 1 })) largest = Math.max(largest, batch.x.length);
    expect(largest).toBe(16 * 4);
    await dataset.close();
  });
});
