/**
 * Preprocessing throughput and memory: decode + resize to 224x224 (the `preprocess` stage,
 * writing real shards) then read + normalize every record back (the shard reader), for 1,000
 * and 10,000 images. Each size runs in its own child process so its peak RSS is its own.
 *
 *   npx tsx bench/preprocess.ts            (or call benchPreprocess() from bench/index.ts)
 *
 * Source images are 200 distinct 320x240 JPEGs made at start; the dataset lists them
 * repeatedly (so the OS page cache serves the file reads; decoding is the measured work).
 */
import { fork } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import sharp from 'sharp';
import { DATASET_FILE, ENTRIES_FILE, type DatasetHeader } from '../src/data/dataset.js';
import { hashBytes } from '../src/data/image.js';
import { openDataset } from '../src/data/shards.js';
import type { StageContext } from '../src/runtime/types.js';
import { preprocess, type PreprocessParams } from '../src/stages/preprocess.js';

const DISTINCT = 200;
const CLASSES = ['a', 'b'];

/** One measured size. */
export interface PreprocessBenchResult {
  images: number;
  /** decode + resize + shard write, images per second. */
  decodePerSecond: number;
  /** read + normalize (batches of 32, shuffled), images per second. */
  readPerSecond: number;
  /** decode + resize + normalize end to end, images per second. */
  endToEndPerSecond: number;
  /** Peak RSS of the child before any work (Node, sharp, modules loaded), MiB. */
  startRssMiB: number;
  /** Peak RSS at the end of decoding (the preprocess stage), MiB. */
  decodePeakRssMiB: number;
  /** Peak RSS of the whole child process, including the read-back, MiB. */
  peakRssMiB: number;
  /** RSS sampled every 250 ms during decoding: at 25%, 50%, 75%, 100% of the run, MiB. */
  rssDuringMiB: number[];
}

/** Runs the benchmark for each size (default 1,000 and 10,000), prints a table, returns the figures. */
export async function benchPreprocess(sizes: number[] = [1_000, 10_000]): Promise<PreprocessBenchResult[]> {
  const root = await mkdtemp(join(tmpdir(), 'bench-preprocess-'));
  try {
    const sources = await makeSources(join(root, 'images'));
    const results: PreprocessBenchResult[] = [];
    for (const images of sizes) {
      const datasetDir = join(root, `dataset-${images}`);
      await writeBenchDataset(datasetDir, join(root, 'images'), sources, images);
      results.push(await runChild(datasetDir, join(root, `out-${images}`)));
      await rm(join(root, `out-${images}`), { recursive: true, force: true });
    }
    process.stdout.write('preprocess bench (224x224x3, imagenet normalization, 320x240 JPEG sources)\n');
    for (const r of results) {
      process.stdout.write(
        `  ${String(r.images).padStart(6)} images: decode+resize ${r.decodePerSecond.toFixed(0)}/s, read+normalize ${r.readPerSecond.toFixed(0)}/s, ` +
          `end-to-end ${r.endToEndPerSecond.toFixed(0)}/s; peak RSS: at start ${r.startRssMiB.toFixed(0)} MiB, ` +
          `after decode ${r.decodePeakRssMiB.toFixed(0)} MiB, overall ${r.peakRssMiB.toFixed(0)} MiB (RSS during decode: ${r.rssDuringMiB.map((v) => v.toFixed(0)).join(' → ')} MiB)\n`,
      );
    }
    return results;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/** Distinct JPEGs: smooth gradients with a little texture, like small photos. */
async function makeSources(dir: string): Promise<{ file: string; sha256: string; size: number }[]> {
  await mkdir(dir, { recursive: true });
  const width = 320;
  const height = 240;
  const out = [];
  for (let i = 0; i < DISTINCT; i++) {
    const pixels = Buffer.alloc(width * height * 3);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const p = (y * width + x) * 3;
        pixels[p] = (x + i * 7) & 255;
        pixels[p + 1] = (y * 2 + i * 13) & 255;
        pixels[p + 2] = ((x ^ y) + i) & 255;
      }
    }
    const bytes = await sharp(pixels, { raw: { width, height, channels: 3 } }).jpeg({ quality: 85 }).toBuffer();
    const file = `${CLASSES[i % 2]}/${i}.jpg`;
    await mkdir(join(dir, CLASSES[i % 2]), { recursive: true });
    await writeFile(join(dir, file), bytes);
    out.push({ file, sha256: hashBytes(bytes), size: bytes.byteLength });
  }
  return out;
}

/** A dataset artifact listing `images` entries (all train), streamed to files.jsonl. */
async function writeBenchDataset(dir: string, root: string, sources: { file: string; sha256: string; size: number }[], images: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const stream = createWriteStream(join(dir, ENTRIES_FILE));
  for (let i = 0; i < images; i++) {
    const source = sources[i % sources.length];
    const line = JSON.stringify({ path: source.file, sha256: source.sha256, size: source.size, label: i % 2, split: 'train' }) + '\n';
    if (!stream.write(line)) await new Promise<void>((resolve) => stream.once('drain', () => resolve()));
  }
  await new Promise<void>((resolve, reject) => stream.end((error?: Error | null) => (error ? reject(error) : resolve())));
  const header: DatasetHeader = {
    format: 'finetune-dataset', version: 1, root, classes: CLASSES, splitSource: 'seeded',
    counts: { train: images, val: 0, test: 0 }, classCounts: { train: [Math.ceil(images / 2), Math.floor(images / 2)], val: [0, 0], test: [0, 0] }, files: ENTRIES_FILE,
  };
  await writeFile(join(dir, DATASET_FILE), JSON.stringify(header));
}

function runChild(datasetDir: string, outDir: string): Promise<PreprocessBenchResult> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ['--child', datasetDir, outDir], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', (message) => resolve(message as PreprocessBenchResult));
    child.once('error', reject);
    child.once('exit', (code) => code !== 0 && reject(new Error(`bench child exited with ${code}`)));
  });
}

/** In the child: preprocess the dataset, then read it all back normalized. */
async function measure(datasetDir: string, outDir: string): Promise<PreprocessBenchResult> {
  await mkdir(outDir, { recursive: true });
  const params: PreprocessParams = { size: [224, 224], fit: 'cover', channels: 3, background: [255, 255, 255], normalize: 'imagenet', augment: {} };
  const input = { id: 'ingest', kind: 'ingest', key: 'bench', dir: datasetDir, provides: ['dataset'], metrics: {} };
  const ctx: StageContext<PreprocessParams> = {
    id: 'preprocess', kind: 'preprocess', params, key: 'bench', seed: 1, baseDir: outDir, outDir, workDir: outDir,
    inputs: [input], input: () => input, downstream: [],
    memo: () => Promise.reject(new Error('preprocess uses no memo')), log: pino({ level: 'silent' }), progress: () => {}, track: () => ({ tick() {}, done() {} }), signal: new AbortController().signal,
  };
  const startRssMiB = process.resourceUsage().maxRSS / 1024;
  const samples: number[] = [];
  const sampler = setInterval(() => samples.push(process.memoryUsage.rss() / 2 ** 20), 250);
  let started = performance.now();
  const { metrics } = await preprocess.run(ctx, params);
  const decodeSeconds = (performance.now() - started) / 1000;
  clearInterval(sampler);
  const decodePeakMiB = process.resourceUsage().maxRSS / 1024;
  const images = Number(metrics?.images);
  const dataset = await openDataset(outDir);
  started = performance.now();
  let read = 0;
  let checksum = 0;
  for await (const batch of dataset.batches('train', { batchSize: 32, shuffle: true, seed: 1 })) {
    read += batch.count;
    checksum += batch.x[0];
  }
  const readSeconds = (performance.now() - started) / 1000;
  await dataset.close();
  if (read !== images || !Number.isFinite(checksum)) throw new Error(`read ${read} of ${images} records`);
  const quartile = (q: number) => samples[Math.min(samples.length - 1, Math.max(0, Math.round(q * samples.length) - 1))] ?? 0;
  return {
    images,
    decodePerSecond: images / decodeSeconds,
    readPerSecond: images / readSeconds,
    endToEndPerSecond: images / (decodeSeconds + readSeconds),
    startRssMiB,
    decodePeakRssMiB: decodePeakMiB,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    rssDuringMiB: [0.25, 0.5, 0.75, 1].map(quartile),
  };
}

const isMain = process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1];
if (process.argv[2] === '--child') {
  measure(process.argv[3], process.argv[4]).then(
    (result) => process.send!(result, () => process.exit(0)),
    (error: Error) => {
      process.stderr.write(`bench child failed: ${error.stack}\n`);
      process.exit(1);
    },
  );
} else if (isMain) {
  benchPreprocess(process.argv.slice(2).map(Number).filter((n) => n > 0).length ? process.argv.slice(2).map(Number) : undefined).catch((error: Error) => {
    process.stderr.write(`${error.stack}\n`);
    process.exit(1);
  });
}
