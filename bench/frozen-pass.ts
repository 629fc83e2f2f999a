/**
 * The frozen pass inside the pipeline against a bare onnxruntime forward of the same bottom, in
 * one process, alternating: the real MobileNetV2 (nsfwjs, 224x224) trained from `block_16_expand`
 * up (the bench case's fine-tune), so the pass stops at `block_15_add`.
 *
 * - (a) `ort`: the converted bottom in onnxruntime on pre-normalized float32 batches of the same
 *   image-views, nothing else (what `bench/onnx.ts` measures), run before and after (b) and
 *   averaged;
 * - (b) `pass`: `frozenActivations`, the code train-head runs (shard reads, views, the runner,
 *   the cache buffers), over flip-augmented uint8 shards: 2 views of the train split + val.
 *
 * Both are timed from the end of their first batch to the end of their last (a fresh session's
 * first run, and the pass's first read, are left out of both), in images per wall second and
 * per CPU second of this process. Each round also prints the pass's own figure, first batch
 * included (`stats.images / stats.seconds`, what the pipeline reports as `frozen_img_s`).
 *
 *   npx tsx bench/frozen-pass.ts [--rounds 3] [--train 96] [--val 32] [--batch 32]
 *   (or `npm run bench frozen-pass`)
 *
 * Prints each round and the medians, the ratio pass / ort, and the load average (the machine
 * may be shared; the ratio is what a busy machine distorts least). About 40 s on two cores.
 */
import { createTracker } from '../src/runtime/progress.js';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { pino } from 'pino';
import { decodeNsfwjsModel } from '../scripts/decode-nsfwjs.js';
import { openDataset, type ShardIndex } from '../src/data/shards.js';
import { NO_AUGMENT, resolveNormalization, type PreprocessSpec } from '../src/data/spec.js';
import { configureBackend, describeBackend, useLayers, useTf } from '../src/ml/backend.js';
import { frozenActivations } from '../src/ml/frozen-pass.js';
import { loadModel } from '../src/ml/io.js';
import { convertLayersModel } from '../src/ml/onnx/convert.js';
import { createOnnxRunner } from '../src/ml/onnx/runner.js';
import { freezeLayers, unfreezeLayers } from '../src/ml/surgery.js';
import type { StageContext, StageInput } from '../src/runtime/types.js';

const SIZE = 224;
const CUT = 'block_15_add';

/** Figures of one run. */
export interface FrozenPassBenchResult {
  /** Bare onnxruntime forward, img/s (median of rounds). */
  ortImagesPerSecond: number;
  /** The in-pipeline frozen pass, img/s (median of rounds). */
  passImagesPerSecond: number;
  /** pass / ort. */
  ratio: number;
  /** pass / ort in images per CPU second of this process (what a shared machine distorts least). */
  cpuRatio: number;
  /** Per round: img/s of each, img/cpu-s of each, and the pass's own reported img/s (first batch included). */
  rounds: { ort: number; pass: number; ortCpu: number; passCpu: number; reported: number }[];
  loadAverage: number[];
}

/** Options of `benchFrozenPass`. */
export interface FrozenPassBenchOptions {
  rounds: number;
  train: number;
  val: number;
  batch: number;
}

export function parseFrozenPassOptions(argv: string[]): FrozenPassBenchOptions {
  const { values } = parseArgs({ args: argv, options: { rounds: { type: 'string' }, train: { type: 'string' }, val: { type: 'string' }, batch: { type: 'string' } } });
  return { rounds: Number(values.rounds ?? 3), train: Number(values.train ?? 96), val: Number(values.val ?? 32), batch: Number(values.batch ?? 32) };
}

/** A `preprocess` artifact of `train` + `val` synthetic 224x224 RGB records, flip augmentation, unit normalization. */
export async function writeShards(dir: string, counts: { train: number; val: number }): Promise<void> {
  const recordBytes = SIZE * SIZE * 3;
  const spec: PreprocessSpec = { size: [SIZE, SIZE], fit: 'fill', channels: 3, background: [255, 255, 255], normalize: resolveNormalization(process.env.BENCH_NORMALIZE === 'imagenet' ? 'imagenet' : 'unit', 3), augment: { ...NO_AUGMENT, flip: true } };
  const index: ShardIndex = { format: 'finetune-shards', version: 1, classes: ['a', 'b'], recordShape: [SIZE, SIZE, 3], recordBytes, recordsPerShard: Math.max(counts.train, counts.val), splits: {} };
  await mkdir(join(dir, 'shards'), { recursive: true });
  let seed = 12345;
  for (const [split, count] of Object.entries(counts)) {
    const pixels = new Uint8Array(count * recordBytes);
    // Smooth gradients plus noise: image-like values (the speed does not depend on them).
    for (let i = 0; i < pixels.length; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      pixels[i] = ((i % recordBytes) / 3 / SIZE + (seed >>> 27)) & 255;
    }
    const labels = Buffer.alloc(count * 4);
    for (let i = 0; i < count; i++) labels.writeInt32LE(i % 2, i * 4);
    await writeFile(join(dir, 'shards', `${split}-00000.bin`), pixels);
    await writeFile(join(dir, 'shards', `${split}.labels`), labels);
    index.splits[split] = { count, classCounts: [Math.ceil(count / 2), Math.floor(count / 2)], labels: `shards/${split}.labels`, shards: [{ file: `shards/${split}-00000.bin`, count }] };
  }
  await writeFile(join(dir, 'preprocess.json'), JSON.stringify(spec));
  await writeFile(join(dir, 'shards.json'), JSON.stringify(index));
}

/** MobileNetV2 to out_relu + a pooled 2-way head, trainable from block_16_expand up. */
async function buildModel(modelDir: string): Promise<LayersModel> {
  const tfl = await useLayers();
  decodeNsfwjsModel({ outDir: modelDir, model: 'MobileNetV2' });
  const base = await loadModel(join(modelDir, 'model.json'));
  const pooled = tfl.layers.globalAveragePooling2d({ name: 'head_pool' }).apply(base.getLayer('out_relu').output as SymbolicTensor) as SymbolicTensor;
  const logits = tfl.layers.dense({ units: 2, name: 'head_dense' }).apply(pooled) as SymbolicTensor;
  const model = tfl.model({ inputs: base.inputs, outputs: logits });
  // As the bench case's freeze and unfreeze stages leave it (BatchNorm kept in inference mode).
  freezeLayers(model);
  unfreezeLayers(model, { from: 'block_16_expand', keepBatchNormInference: true });
  return model;
}

/** Just enough of a stage context for `frozenActivations`: a memo that always computes afresh. */
function benchContext(root: string, shards: StageInput, progress: (done: number) => void): StageContext<unknown> {
  let memos = 0;
  return {
    id: 'head',
    kind: 'train-head',
    params: {},
    key: 'bench',
    seed: 42,
    baseDir: root,
    outDir: root,
    workDir: root,
    inputs: [shards],
    downstream: [],
    input: () => shards,
    async memo(_name, _parts, compute) {
      const dir = join(root, `memo-${memos++}`);
      await mkdir(dir);
      await compute(dir);
      return dir;
    },
    log: pino({ level: 'silent' }),
    progress: (event) => progress(event.done ?? 0),
    track: (label, total) => createTracker((event) => progress(event.done ?? 0), label, total),
    signal: new AbortController().signal,
  } as StageContext<unknown>;
}

/**
 * Wall and CPU seconds (this process, all threads) between the first and the last `mark`, and
 * the images done in between: the first batch (warm-up, session start) is left out of both.
 */
function rateMeter() {
  type Mark = { done: number; wall: number; cpu: number };
  let first: Mark | null = null;
  let last: Mark | null = null;
  const now = (done: number): Mark => {
    const cpu = process.cpuUsage();
    return { done, wall: performance.now() / 1000, cpu: (cpu.user + cpu.system) / 1e6 };
  };
  return {
    mark(done: number) {
      last = now(done);
      first ??= last;
    },
    /** Images per wall second and per CPU second. */
    rates(): { wall: number; cpu: number } {
      if (!first || !last || last.done === first.done) throw new Error('fewer than two batches were timed');
      return { wall: (last.done - first.done) / (last.wall - first.wall), cpu: (last.done - first.done) / (last.cpu - first.cpu) };
    },
  };
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

export async function benchFrozenPass(options: FrozenPassBenchOptions = { rounds: 3, train: 96, val: 32, batch: 32 }): Promise<FrozenPassBenchResult> {
  const root = await mkdtemp(join(tmpdir(), 'bench-frozen-pass-'));
  try {
    if (!describeBackend()) configureBackend((process.env.PIPELINE_BACKEND as 'wasm') ?? 'wasm');
    const tf = await useTf();
    const model = await buildModel(join(root, 'model'));
    const shardsDir = join(root, 'shards');
    await writeShards(shardsDir, { train: options.train, val: options.val });
    const dataset = await openDataset(shardsDir);
    const shards: StageInput = { id: 'shards', kind: 'preprocess', key: 'bench-shards', dir: shardsDir, provides: ['shards'], metrics: {} };
    const ortRunner = await createOnnxRunner(convertLayersModel(model, { to: [CUT] }), { threads: os.availableParallelism() });
    // The same image-views as the pass, normalized once up front: (a) times the forward alone.
    const batches: { x: Float32Array; shape: number[] }[] = [];
    for (const [split, views] of [['train', 2], ['val', 1]] as const) {
      for (let view = 0; view < views; view++) {
        for await (const b of dataset.batches(split, { batchSize: options.batch, draw: view === 1 ? { flip: true, scale: 1, offsetX: 0.5, offsetY: 0.5, angle: 0, brightness: 1, contrast: 1 } : null })) batches.push({ x: b.x, shape: b.shape });
      }
    }
    const images = batches.reduce((sum, b) => sum + b.shape[0], 0);
    await ortRunner.run(batches[0].x, batches[0].shape);
    const timeOrt = async () => {
      const meter = rateMeter();
      let done = 0;
      for (const b of batches) {
        await ortRunner.run(b.x, b.shape);
        meter.mark((done += b.shape[0]));
      }
      return meter.rates();
    };
    const rounds: FrozenPassBenchResult['rounds'] = [];
    try {
      for (let round = 0; round < options.rounds; round++) {
        const before = await timeOrt();
        const passMeter = rateMeter();
        const ctx = benchContext(join(root, `round-${round}`), shards, (n) => passMeter.mark(n));
        await mkdir(ctx.outDir, { recursive: true });
        const pass = await frozenActivations({ tf, ctx, model, dataset, batch: options.batch, augmentViews: 1 });
        if (!pass || pass.stats.images !== images) throw new Error(`the pass computed ${pass?.stats.images ?? 0} image-views, expected ${images}`);
        const cut = pass.frontier.tensors.map((t) => t.layer).join('+');
        if (cut !== CUT) throw new Error(`the pass stopped at ${cut}, not ${CUT}`);
        const passRate = passMeter.rates();
        // (a) brackets (b): the mean of the runs before and after, so a load change in between evens out.
        const after = await timeOrt();
        const ort = { wall: (before.wall + after.wall) / 2, cpu: (before.cpu + after.cpu) / 2 };
        rounds.push({ ort: ort.wall, pass: passRate.wall, ortCpu: ort.cpu, passCpu: passRate.cpu, reported: pass.stats.images / pass.stats.seconds });
        await rm(ctx.outDir, { recursive: true, force: true });
        console.log(
          `round ${round + 1}: ort ${ort.wall.toFixed(1)} img/s (${ort.cpu.toFixed(1)} img/cpu-s), pass ${passRate.wall.toFixed(1)} img/s (${passRate.cpu.toFixed(1)} img/cpu-s; ${pass.stats.engine}, reported ${(pass.stats.images / pass.stats.seconds).toFixed(1)}), ratio ${(passRate.wall / ort.wall).toFixed(3)} (cpu ${(passRate.cpu / ort.cpu).toFixed(3)})`,
        );
      }
    } finally {
      await ortRunner.dispose();
      await dataset.close();
      model.dispose();
    }
    const ortImagesPerSecond = median(rounds.map((r) => r.ort));
    const passImagesPerSecond = median(rounds.map((r) => r.pass));
    const ratio = median(rounds.map((r) => r.pass / r.ort));
    const cpuRatio = median(rounds.map((r) => r.passCpu / r.ortCpu));
    const loadAverage = os.loadavg();
    console.log(`MobileNetV2 224 to ${CUT}, batch ${options.batch}, ${images} image-views a round, ${os.availableParallelism()} threads`);
    console.log(`median: ort ${ortImagesPerSecond.toFixed(1)} img/s, pass ${passImagesPerSecond.toFixed(1)} img/s, ratio ${ratio.toFixed(3)} (per CPU second ${cpuRatio.toFixed(3)}); load average ${loadAverage.map((l) => l.toFixed(1)).join(' ')}`);
    return { ortImagesPerSecond, passImagesPerSecond, ratio, cpuRatio, rounds, loadAverage };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchFrozenPass(parseFrozenPassOptions(process.argv.slice(2)));
