import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readDatasetEntries, readDatasetHeader } from '../../../src/data/dataset.js';
import { decodeImage } from '../../../src/data/image.js';
import { openDataset, type Batch, type ShardDataset } from '../../../src/data/shards.js';
import { ingest, type IngestParams } from '../../../src/stages/ingest.js';
import { preprocess, specFromParams, type PreprocessParams } from '../../../src/stages/preprocess.js';
import { copyFashion, ingestParams, inputFrom, makeContext, runStage, testdir } from './ctx.js';

let dir: { path: string; remove(): Promise<void> };
let opened: ShardDataset[] = [];
beforeEach(async () => (dir = await testdir()));
afterEach(async () => {
  await Promise.all(opened.map((dataset) => dataset.close()));
  opened = [];
  await dir.remove();
});

async function pipeline(params: Partial<PreprocessParams> = {}) {
  await copyFashion(join(dir.path, 'images'));
  const ingested = await runStage(ingest, { root: dir.path, params: ingestParams({ path: 'images', split: { val: 0.25, test: 0 } }) as IngestParams });
  const full = { size: [12, 10], fit: 'cover', channels: 3, background: [255, 255, 255], normalize: 'imagenet', augment: {}, ...params } as PreprocessParams;
  const processed = await runStage(preprocess, { root: dir.path, params: full, inputs: [inputFrom(ingest, ingested.ctx.outDir, ingested.result.metrics)] });
  const dataset = await openDataset(processed.ctx.outDir);
  opened.push(dataset);
  return { ingested, processed, dataset, spec: specFromParams(full) };
}

async function collect(batches: AsyncIterable<Batch>): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const batch of batches) out.push(batch);
  return out;
}

describe('preprocess + shard reader', () => {
  it('round-trips: shard records equal the decoded images, in files.jsonl order, with labels', async () => {
    const { ingested, processed, dataset, spec } = await pipeline();
    expect(processed.result.metrics).toMatchObject({ images: 24, train: 18, val: 6 });
    expect(dataset.classes).toEqual(['sneaker', 't-shirt', 'trouser']);
    expect(dataset.recordShape).toEqual([12, 10, 3]);
    expect(dataset.splits).toEqual({ train: { count: 18, classCounts: [6, 6, 6] }, val: { count: 6, classCounts: [2, 2, 2] } });
    const recorded = JSON.parse(await readFile(join(processed.ctx.outDir, 'preprocess.json'), 'utf8'));
    expect(recorded).toEqual(spec);
    expect(recorded.normalize).toEqual({ name: 'imagenet', mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] });

    const header = await readDatasetHeader(ingested.ctx.outDir);
    const val = [];
    for await (const entry of readDatasetEntries(ingested.ctx.outDir)) if (entry.split === 'val') val.push(entry);
    const raw = await dataset.readRecords('val', [0, 1, 2, 3, 4, 5]);
    const labels = await dataset.labels('val');
    for (let i = 0; i < val.length; i++) {
      const expected = await decodeImage(join(header.root, val[i].path), spec);
      expect(Buffer.from(raw.subarray(i * 360, (i + 1) * 360)).equals(Buffer.from(expected))).toBe(true);
      expect(labels[i]).toBe(val[i].label);
    }

    const [batch, ...rest] = await collect(dataset.batches('val', { batchSize: 4 }));
    expect(rest.map((b) => b.count)).toEqual([2]);
    expect(batch.shape).toEqual([4, 12, 10, 3]);
    expect(batch.x.length).toBe(4 * 360);
    expect(Array.from(batch.y)).toEqual(Array.from(labels.subarray(0, 4)));
    // numerically: value = (pixel/255 - mean[c]) / std[c]
    for (const i of [0, 1, 2, 100, 359, 1000]) {
      const c = i % 3;
      expect(batch.x[i]).toBeCloseTo((raw[i] / 255 - spec.normalize.mean[c]) / spec.normalize.std[c], 5);
    }
  });

  it('is deterministic: same inputs give byte-identical shards', async () => {
    const a = await pipeline();
    const again = await runStage(preprocess, { root: dir.path, params: a.processed.ctx.params, inputs: [inputFrom(ingest, a.ingested.ctx.outDir)] });
    for (const file of ['preprocess.json', 'shards.json', 'shards/train-00000.bin', 'shards/train.labels', 'shards/val-00000.bin']) {
      expect((await readFile(join(again.ctx.outDir, file))).equals(await readFile(join(a.processed.ctx.outDir, file)))).toBe(true);
    }
  });

  it('shuffles per epoch, reproducibly, covering every record once', async () => {
    const { dataset } = await pipeline();
    const order = async (seed: number, epoch: number) =>
      (await collect(dataset.batches('train', { batchSize: 5, shuffle: true, seed, epoch }))).flatMap((b) => Array.from(b.indices));
    const epoch0 = await order(1, 0);
    expect([...epoch0].sort((a, b) => a - b)).toEqual(Array.from({ length: 18 }, (_, i) => i));
    expect(await order(1, 0)).toEqual(epoch0);
    expect(await order(1, 1)).not.toEqual(epoch0);
    expect(await order(2, 0)).not.toEqual(epoch0);
    expect(Array.from((await collect(dataset.batches('train', { batchSize: 5 })))[0].indices)).toEqual([0, 1, 2, 3, 4]);
    expect(await collect(dataset.batches('train', { batchSize: 5, dropRemainder: true }))).toHaveLength(3);
    expect(dataset.batchCount('train', { batchSize: 5 })).toBe(4);
  });

  it('augments only when asked, seeded per (seed, epoch, record), independent of batch size', async () => {
    const { dataset } = await pipeline({ augment: { flip: true, crop: 0.2, rotate: 10, brightness: 0.2, contrast: 0.2 } });
    const plain = (await collect(dataset.batches('train', { batchSize: 18 })))[0];
    const augmented = (await collect(dataset.batches('train', { batchSize: 18, augment: true, seed: 3, epoch: 0 })))[0];
    expect(Buffer.from(augmented.x.buffer).equals(Buffer.from(plain.x.buffer))).toBe(false);
    const again = (await collect(dataset.batches('train', { batchSize: 18, augment: true, seed: 3, epoch: 0 })))[0];
    expect(Buffer.from(again.x.buffer).equals(Buffer.from(augmented.x.buffer))).toBe(true);
    const small = await collect(dataset.batches('train', { batchSize: 4, augment: true, seed: 3, epoch: 0 }));
    const joined = new Float32Array(augmented.x.length);
    small.forEach((b, i) => joined.set(b.x, i * 4 * 360));
    expect(Buffer.from(joined.buffer).equals(Buffer.from(augmented.x.buffer))).toBe(true);
    const nextEpoch = (await collect(dataset.batches('train', { batchSize: 18, augment: true, seed: 3, epoch: 1 })))[0];
    expect(Buffer.from(nextEpoch.x.buffer).equals(Buffer.from(augmented.x.buffer))).toBe(false);
  });

  it('writes grayscale records for channels: 1 and handles contain', async () => {
    const { dataset } = await pipeline({ channels: 1, fit: 'contain', normalize: 'unit', size: [8, 16] });
    expect(dataset.recordShape).toEqual([8, 16, 1]);
    expect(dataset.spec.normalize).toEqual({ name: 'unit', mean: [0], std: [1] });
    const [batch] = await collect(dataset.batches('val', { batchSize: 6 }));
    expect(batch.x.length).toBe(6 * 128);
    expect(batch.x[0]).toBeCloseTo(1, 5); // left padding is the white background
    expect(Math.min(...batch.x)).toBeGreaterThanOrEqual(0);
  });

  it('fails when an image changed after ingest, and detects a truncated shard', async () => {
    const { ingested, processed } = await pipeline();
    const header = await readDatasetHeader(ingested.ctx.outDir);
    const [first] = (await readFile(join(ingested.ctx.outDir, 'files.jsonl'), 'utf8')).trim().split('\n').map((line) => JSON.parse(line));
    await writeFile(join(header.root, first.path), Buffer.concat([await readFile(join(header.root, first.path)), Buffer.from([0])]));
    await expect(runStage(preprocess, { root: dir.path, params: processed.ctx.params, inputs: [inputFrom(ingest, ingested.ctx.outDir)] }))
      .rejects.toMatchObject({ code: 'image_changed', message: expect.stringContaining(first.path) });

    await truncate(join(processed.ctx.outDir, 'shards', 'train-00000.bin'), 100);
    await expect(openDataset(processed.ctx.outDir)).rejects.toMatchObject({ code: 'shards_corrupt' });
  });

  it('asks for a split that does not exist', async () => {
    const { dataset } = await pipeline();
    await expect(dataset.batches('test', { batchSize: 2 })[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'split_missing' });
  });

  it('stops with code aborted when the signal fires', async () => {
    const { ingested, processed } = await pipeline();
    const params = processed.ctx.params;
    const ctx = await makeContext({ root: dir.path, params, inputs: [inputFrom(ingest, ingested.ctx.outDir)] });
    const controller = new AbortController();
    controller.abort();
    await expect(preprocess.run({ ...ctx, signal: controller.signal }, params)).rejects.toMatchObject({ code: 'aborted' });
    const ingestCtx = await makeContext({ root: dir.path, params: ingestParams({ path: 'images' }) as IngestParams });
    await expect(ingest.run({ ...ingestCtx, signal: controller.signal }, ingestCtx.params)).rejects.toMatchObject({ code: 'aborted' });
  });
});
