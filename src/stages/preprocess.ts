/**
 * `preprocess`: decodes, orients, converts and resizes every image of the upstream `dataset`
 * into uint8 shards per split (layout in `src/data/shards.ts`), streaming in bounded memory and
 * decoding in parallel. Normalization and augmentation are recorded in `preprocess.json` and
 * applied by the shard reader at read time.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import paramsSchema from '../../schemas/stages/preprocess.schema.json' with { type: 'json' };
import { AbortedError, StageError } from '../runtime/errors.js';
import type { StageDefinition } from '../runtime/types.js';
import { withSchemaDefaults } from '../runtime/schema.js';
import { readDatasetEntries, readDatasetHeader, resolveDatasetRoot, SPLITS, type DatasetEntry } from '../data/dataset.js';
import { decodeImage, hashBytes } from '../data/image.js';
import { recordsPerShardFor, shardDirectory, ShardWriter, writeShardIndex } from '../data/shard-writer.js';
import type { SplitIndex } from '../data/shards.js';
import { NO_AUGMENT, resolveNormalization, type AugmentSpec, type FitMode, type NormalizeName, type PreprocessSpec } from '../data/spec.js';

/** `with:` of a `preprocess` stage (see schemas/stages/preprocess.schema.json). */
export interface PreprocessParams {
  /** Output `[height, width]`. Default `[224, 224]`. */
  size: [number, number];
  /** Default `cover` (scale to fill, centre-crop: no distortion, nothing padded). */
  fit: FitMode;
  /** 3 (RGB) or 1 (grayscale). Default 3. */
  channels: 1 | 3;
  /** RGB 0–255 for transparency and `contain` padding. Default `[255, 255, 255]` (white). */
  background: [number, number, number];
  /** Default `imagenet`. */
  normalize: NormalizeName;
  /** Train-only augmentation; missing fields are off. Default `{}`. */
  augment: Partial<AugmentSpec>;
}

/** Builds the recorded spec from params (defaults filled for direct callers). */
export function specFromParams(partial: Partial<PreprocessParams>): PreprocessSpec {
  const params = withSchemaDefaults<PreprocessParams>(paramsSchema, partial);
  return {
    size: params.size,
    fit: params.fit,
    channels: params.channels,
    background: params.background,
    normalize: resolveNormalization(params.normalize, params.channels),
    augment: { ...NO_AUGMENT, ...params.augment },
  };
}

export const preprocess: StageDefinition<PreprocessParams> = {
  kind: 'preprocess',
  version: 1,
  description: 'Decode and resize images into uint8 shards; record normalization and train augmentation',
  paramsSchema,
  consumes: ['dataset'],
  provides: ['shards'],
  resource: 'io',

  async run(ctx, params) {
    const spec = specFromParams(params);
    const source = ctx.input('dataset');
    const header = await readDatasetHeader(source.dir);
    const [height, width] = spec.size;
    const recordBytes = height * width * spec.channels;
    const recordsPerShard = recordsPerShardFor(recordBytes);
    await mkdir(shardDirectory(ctx.outDir), { recursive: true });
    const writers = new Map<string, ShardWriter>();
    const writerFor = (split: string) => {
      let writer = writers.get(split);
      if (!writer) {
        writer = new ShardWriter(ctx.outDir, split, recordBytes, recordsPerShard, header.classes.length);
        writers.set(split, writer);
      }
      return writer;
    };
    const total = SPLITS.reduce((sum, split) => sum + (header.counts[split] ?? 0), 0);
    const root = resolveDatasetRoot(header, ctx.baseDir);
    const started = performance.now();
    let done = 0;
    // An ordered window: up to `window` decodes in flight, written strictly in entry order, so
    // memory is bounded by the window and shard order equals files.jsonl order.
    const window = Math.max(2, availableParallelism() * 2);
    const inFlight: { entry: DatasetEntry; pixels: Promise<Uint8Array> }[] = [];
    const decode = async (entry: DatasetEntry): Promise<Uint8Array> => {
      const file = join(root, ...entry.path.split('/'));
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (error) {
        throw new StageError('image_missing', `${file} listed by the dataset cannot be read: ${(error as Error).message}`, { file }, { cause: error });
      }
      if (hashBytes(bytes) !== entry.sha256) {
        throw new StageError('image_changed', `${file} changed since ingest (sha256 differs); rerun ingest`, { file });
      }
      try {
        return await decodeImage(bytes, spec);
      } catch (error) {
        throw new StageError('image_decode', `${file}: ${(error as Error).message}`, { file }, { cause: error });
      }
    };
    const drain = async () => {
      const head = inFlight.shift()!;
      await writerFor(head.entry.split).append(await head.pixels, head.entry.label);
      done++;
      decoding.tick();
    };
    const decoding = ctx.track('decode', total);
    try {
      for await (const entry of readDatasetEntries(source.dir, header)) {
        if (ctx.signal.aborted) throw new AbortedError();
        const pixels = decode(entry);
        pixels.catch(() => {}); // awaited in order by drain; avoid an early unhandled rejection
        inFlight.push({ entry, pixels });
        if (inFlight.length >= window) await drain();
      }
      while (inFlight.length) await drain();
      const splits: Record<string, SplitIndex> = {};
      for (const split of SPLITS) {
        const writer = writers.get(split);
        if (writer) splits[split] = await writer.finish();
      }
      await writeShardIndex(ctx.outDir, spec, { classes: header.classes, recordShape: [height, width, spec.channels], recordBytes, recordsPerShard, splits });
    } catch (error) {
      await Promise.all([...writers.values()].map((writer) => writer.abort()));
      throw error;
    } finally {
      decoding.done();
    }
    const seconds = (performance.now() - started) / 1000;
    ctx.log.info({ images: done, seconds, perSecond: done / seconds }, 'preprocessed');
    const metrics: Record<string, number> = { images: done, bytes: done * recordBytes, imagesPerSecond: Math.round(done / seconds) };
    for (const split of SPLITS) if (writers.has(split)) metrics[split] = header.counts[split];
    return { metrics };
  },
};
