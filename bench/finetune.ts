/**
 * The real transfer-learning case end to end, against the seed article's PyTorch loop.
 *
 *   npm run bench:finetune                       (tsc, then this file through bench/index.ts)
 *   node --import tsx bench/finetune.ts [--no-torch] [--no-full-epoch] [--keep]
 *   node --import tsx bench/finetune.ts --markdown [FILE]   JSON line (FILE or stdin) -> README table
 *
 * Case (bench/finetune.yaml): nsfwjs's Keras MobileNetV2, 224x224, Fashion-MNIST pullover vs
 * coat (400 train / 200 val), flips, head 10 epochs at 1e-2, unfreeze from block_16_expand,
 * fine-tune 5 epochs at 1e-4, magnitude prune (sparsity: auto within 2 points), evaluate; batch 32.
 *
 * What runs, one process at a time (never two heavy ones together: the CPU is shared):
 * 1. ours: `node bin/pipeline.js run bench/finetune.yaml --json` on a fresh artifact store
 *    (a cold run), under `/usr/bin/time -v` for the child's peak RSS (else /proc VmHWM polling);
 * 2. the linear probe, in this process: the frozen base (cut at out_relu, global average pooled,
 *    1280-d, no augmentation) run over the run's own shards, timed (frozen forward images/s),
 *    then softmax regression to convergence (full-batch Adam, plain JS) -> val accuracy;
 * 3. a full-network training epoch (every layer trainable, on images) estimated from a few
 *    timed steps of the pipeline's training loop, in a child process (it needs GBs);
 * 4. torch: bench/torch_finetune.py (python3-torch) on the same image folders with the same
 *    Keras weights, 2 threads; skipped with a reason when torch is not installed.
 * Prints ONE JSON line on stdout (progress on stderr). Data, the decoded model and logs live
 * in .tmp/bench-finetune/ (gitignored), made on the first run and reused afterwards.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { decodeNsfwjsModel } from '../scripts/decode-nsfwjs.js';
import { DEFAULT_SOURCE, FASHION_MNIST_CLASSES, writeFashionMnist } from '../scripts/fashion-mnist.js';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const WORK = join(ROOT, '.tmp', 'bench-finetune');
const PIPELINE_FILE = join(ROOT, 'bench', 'finetune.yaml');
const TORCH_SCRIPT = join(ROOT, 'bench', 'torch_finetune.py');

/** The data of the case (Fashion-MNIST labels 2 = pullover, 4 = coat). */
export const CASE_DATA = { classes: [2, 4], train_per_class: 200, val_per_class: 100 } as const;
/** Targets of issue 9; `ratio` is our wall time over torch's. */
export const TARGETS = { ratio_max: 0.25, frozen_forward_img_s_min: 170, peak_rss_mib_max: 2048, fine_tune_epoch_vs_full_max: 0.1 } as const;

/** What one child process cost. */
interface Measured {
  code: number | null;
  stdout: string;
  stderrFile: string;
  wallS: number;
  peakRssMiB: number | null;
  rssSource: string;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

interface StageSummary {
  id: string;
  uses: string;
  status: string;
  key: string;
  seconds: number;
  metrics: Record<string, Json>;
  error?: Json;
}
interface RunSummary {
  status: string;
  backend?: string;
  stages: StageSummary[];
  [key: string]: Json | StageSummary[] | undefined;
}

function log(message: string): void {
  process.stderr.write(`bench finetune: ${message}\n`);
}

const round = (value: number, digits = 3) => Math.round(value * 10 ** digits) / 10 ** digits;
const num = (value: Json | undefined): number | null => (typeof value === 'number' && Number.isFinite(value) ? value : null);

// ---------------------------------------------------------------------------------------------
// Inputs: data and model, made once

/** Makes .tmp/bench-finetune/data (ImageFolder train/ and val/) unless the same case is there. */
export async function ensureData(work = WORK): Promise<string> {
  const dir = join(work, 'data');
  const marker = join(work, 'data.json');
  const wanted = JSON.stringify({ ...CASE_DATA, source: DEFAULT_SOURCE });
  if (existsSync(dir) && existsSync(marker) && readFileSync(marker, 'utf8') === wanted) return dir;
  if (!existsSync(join(DEFAULT_SOURCE, 'train-images-idx3-ubyte.gz')))
    throw new Error(`no Fashion-MNIST IDX files in ${DEFAULT_SOURCE}: apt-get install -y dataset-fashion-mnist`);
  log(`writing the images (${CASE_DATA.classes.map((c) => FASHION_MNIST_CLASSES[c]).join(' vs ')}) to ${dir}`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const classes = [...CASE_DATA.classes];
  await writeFashionMnist({ out: join(tmp, 'train'), classes, perClass: CASE_DATA.train_per_class, split: 'train', offset: 0 });
  await writeFashionMnist({ out: join(tmp, 'val'), classes, perClass: CASE_DATA.val_per_class, split: 'test', offset: 0 });
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
  await writeFile(marker, wanted);
  return dir;
}

/** Decodes nsfwjs's MobileNetV2 to .tmp/bench-finetune/mobilenet_v2 (float32) unless it is there. */
export function ensureModel(work = WORK): string {
  const dir = join(work, 'mobilenet_v2');
  if (!existsSync(join(dir, 'model.json')) || !existsSync(join(dir, 'weights.bin'))) {
    log(`decoding nsfwjs's MobileNetV2 to ${dir}`);
    decodeNsfwjsModel({ outDir: dir });
  }
  return join(dir, 'model.json');
}

// ---------------------------------------------------------------------------------------------
// Child processes with wall time and peak RSS

const GNU_TIME = '/usr/bin/time';

function hasGnuTime(): boolean {
  return existsSync(GNU_TIME) && spawnSync(GNU_TIME, ['-v', 'true'], { stdio: 'ignore' }).status === 0;
}

/**
 * Runs a command with stdout captured and stderr to a file; peak RSS from GNU time's report
 * (`Maximum resident set size`) or, without it, by polling the child's VmHWM in /proc.
 */
async function measure(command: string, args: string[], stderrFile: string, env: NodeJS.ProcessEnv = process.env): Promise<Measured> {
  const timeFile = `${stderrFile}.time`;
  const useTime = hasGnuTime();
  const argv = useTime ? ['-v', '-o', timeFile, command, ...args] : args;
  const { open } = await import('node:fs/promises');
  const errHandle = await open(stderrFile, 'w');
  const started = performance.now();
  const child = spawn(useTime ? GNU_TIME : command, argv, { cwd: ROOT, env, stdio: ['ignore', 'pipe', errHandle.fd] });
  let stdout = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  let polledKiB = 0;
  const poll = useTime
    ? undefined
    : setInterval(() => {
        try {
          const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
          if (match) polledKiB = Math.max(polledKiB, Number(match[1]));
        } catch {
          // the child has exited
        }
      }, 200);
  const code = await new Promise<number | null>((resolve) => child.on('close', (status) => resolve(status)));
  const wallS = (performance.now() - started) / 1000;
  if (poll) clearInterval(poll);
  await errHandle.close();
  let peakRssMiB: number | null = null;
  let rssSource = 'none';
  if (useTime && existsSync(timeFile)) {
    const match = /Maximum resident set size \(kbytes\): (\d+)/.exec(await readFile(timeFile, 'utf8'));
    if (match) {
      peakRssMiB = round(Number(match[1]) / 1024, 1);
      rssSource = '/usr/bin/time -v (maximum resident set size)';
    }
  } else if (polledKiB > 0) {
    peakRssMiB = round(polledKiB / 1024, 1);
    rssSource = '/proc/PID/status VmHWM, polled every 200 ms';
  }
  return { code, stdout, stderrFile, wallS: round(wallS, 2), peakRssMiB, rssSource };
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** The last line of stdout that parses as a JSON object. */
function lastJsonLine(stdout: string): JsonObject | null {
  for (const line of stdout.trim().split('\n').reverse()) {
    try {
      const value = JSON.parse(line) as Json;
      if (value && typeof value === 'object' && !Array.isArray(value)) return value;
    } catch {
      // not JSON
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// 1. Ours: the CLI on a cold store

interface OursResult {
  summary: RunSummary;
  measured: Measured;
  artifacts: string;
}

async function runOurs(artifacts: string): Promise<OursResult> {
  const cli = join(ROOT, 'bin', 'pipeline.js');
  if (!existsSync(join(ROOT, 'dist', 'src', 'main.js'))) throw new Error('dist/ is not built: run `npm run build` (npm run bench:finetune does)');
  log(`ours: pipeline run bench/finetune.yaml on a cold store (${artifacts}); log ${join(WORK, 'ours.stderr.log')}`);
  const measured = await measure(process.execPath, [cli, 'run', PIPELINE_FILE, '--json', '--artifacts', artifacts], join(WORK, 'ours.stderr.log'), { ...process.env, CI: 'true' });
  const summary = lastJsonLine(measured.stdout) as unknown as RunSummary | null;
  if (!summary || !Array.isArray(summary.stages)) throw new Error(`the pipeline printed no JSON summary (exit ${measured.code}):\n${tail(measured.stderrFile)}`);
  log(`ours: ${summary.status} in ${measured.wallS} s, peak RSS ${measured.peakRssMiB} MiB`);
  return { summary, measured, artifacts };
}

/** A stage's params from bench/finetune.yaml, with the schema's defaults under them. */
function stageParams(kind: string, id: string): Record<string, Json> {
  const schema = JSON.parse(readFileSync(join(ROOT, 'schemas', 'stages', `${kind}.schema.json`), 'utf8')) as { properties?: Record<string, { default?: Json }> };
  const defaults = Object.fromEntries(Object.entries(schema.properties ?? {}).flatMap(([name, prop]) => (prop.default !== undefined ? [[name, prop.default]] : [])));
  const file = parseYaml(readFileSync(PIPELINE_FILE, 'utf8')) as { stages: Record<string, { with?: Record<string, Json> }> };
  return { ...defaults, ...(file.stages[id]?.with ?? {}) };
}

/** Epochs, batch and learning rates of the case, read from bench/finetune.yaml. */
export function caseBudget(): { headLr: number; tuneLr: number; headEpochs: number; tuneEpochs: number; batch: number } {
  const head = stageParams('train-head', 'train-head');
  const tune = stageParams('fine-tune', 'fine-tune');
  const headLr = Number(head.lr);
  return { headLr, tuneLr: tune.lr !== undefined ? Number(tune.lr) : headLr / Number(tune.lr_divisor), headEpochs: Number(head.epochs), tuneEpochs: Number(tune.epochs), batch: Number(head.batch) };
}

/** A stage metric that reports frozen-forward throughput, when some stage has one. */
function reportedForwardRate(stages: StageSummary[]): { value: number; source: string } | null {
  for (const stage of stages) {
    for (const [name, value] of Object.entries(stage.metrics ?? {})) {
      if (typeof value === 'number' && /forward.*(img|image).*s|(images|features|img)_per_s(ec(ond)?)?$|img_s$/i.test(name)) return { value, source: `${stage.id}.metrics.${name}` };
    }
  }
  return null;
}

/** Engine names the summary and the stages report (summary.backend, metrics.engine, ...). */
function engines(summary: RunSummary): Record<string, Json> {
  const found: Record<string, Json> = { pipeline: summary.backend ?? null };
  for (const stage of summary.stages) {
    for (const [name, value] of Object.entries(stage.metrics ?? {})) {
      if (/engine|backend/i.test(name) && (typeof value === 'string' || (value && typeof value === 'object'))) found[`${stage.id}.${name}`] = value;
    }
  }
  return found;
}

function describeOurs(result: OursResult, images: { train: number; val: number }): JsonObject {
  const { summary, measured } = result;
  const byId = Object.fromEntries(summary.stages.map((s) => [s.id, s]));
  const metric = (id: string, name: string) => num(byId[id]?.metrics?.[name]);
  const stages = Object.fromEntries(summary.stages.map((s) => [s.id, round(s.seconds, 2)]));
  const failed = summary.stages.filter((s) => s.status === 'failed').map((s) => ({ id: s.id, error: s.error ?? null }));

  // Frozen forward: a stage's own figure, else derived from train-head's feature pass: its
  // seconds minus its training epochs, over the images it pushed through the base.
  const head = byId['train-head'];
  const reported = reportedForwardRate(summary.stages);
  let forward: JsonObject = { value: null, source: 'not available' };
  if (reported) forward = { value: round(reported.value, 1), source: reported.source };
  else if (head && head.metrics.features === 'computed') {
    const views = num(stageParams('train-head', 'train-head').augment_views) ?? 1;
    const forwarded = images.train * views + images.val;
    const trainingS = (num(head.metrics.epochs_run) ?? 0) * (num(head.metrics.seconds_per_epoch) ?? 0);
    const featureS = head.seconds - trainingS;
    if (featureS > 0)
      forward = {
        value: round(forwarded / featureS, 1),
        source: `derived: ${forwarded} images (${images.train} train x ${views} augmented views + ${images.val} val) / (train-head ${round(head.seconds, 1)} s - ${round(trainingS, 1)} s of epochs); includes model load and shard reads`,
      };
  }
  return {
    status: summary.status,
    ...(failed.length ? { failed } : {}),
    wall_s: measured.wallS,
    pipeline_s: num(summary.seconds as Json) ?? null,
    stages,
    engines: engines(summary),
    frozen_forward_img_s: forward.value,
    frozen_forward_source: forward.source,
    val_acc: {
      head: metric('train-head', 'val_acc'),
      fine_tune: metric('fine-tune', 'val_acc'),
      prune_before: metric('prune', 'val_acc_before'),
      prune_after: metric('prune', 'val_acc_after'),
      evaluate: metric('evaluate', 'accuracy'),
    },
    seconds_per_epoch: { head: metric('train-head', 'seconds_per_epoch'), fine_tune: metric('fine-tune', 'seconds_per_epoch') },
    // The stage's seconds over its epochs: the feature pass through the frozen part included.
    stage_seconds_per_epoch: {
      head: head && num(head.metrics.epochs_run) ? round(head.seconds / num(head.metrics.epochs_run)!, 2) : null,
      fine_tune: byId['fine-tune'] && num(byId['fine-tune'].metrics.epochs_run) ? round(byId['fine-tune'].seconds / num(byId['fine-tune'].metrics.epochs_run)!, 2) : null,
    },
    trainable_params: { head: metric('train-head', 'trainable_params'), fine_tune: metric('fine-tune', 'trainable_params') },
    prune: { sparsity: byId.prune?.metrics.target_sparsity ?? null, search: byId.prune?.metrics.sparsity_search ?? null },
    features: { head: byId['train-head']?.metrics.features ?? null, fine_tune: byId['fine-tune']?.metrics.features ?? null },
    peak_rss_mib: measured.peakRssMiB,
    peak_rss_source: measured.rssSource,
    exit_code: measured.code,
  };
}

// ---------------------------------------------------------------------------------------------
// 2. The linear probe on the frozen features

interface ProbeResult {
  val_acc: number;
  train_acc: number;
  iterations: number;
  forward_img_s: number;
  forward_images: number;
  forward_s: number;
  feature_dim: number;
  engine: string;
}

async function runProbe(result: OursResult): Promise<ProbeResult> {
  const byId = Object.fromEntries(result.summary.stages.map((s) => [s.id, s]));
  const shardsDir = join(result.artifacts, 'cache', byId.preprocess.key);
  const baseDir = join(result.artifacts, 'cache', byId['load-base'].key);
  const { configureBackend, describeBackend, useLayers, useTf } = await import('../src/ml/backend.js');
  const { disposeModels, readModelArtifact } = await import('../src/ml/artifact.js');
  const { openDataset } = await import('../src/data/shards.js');
  const { createFrozenRunner } = await import('../src/ml/engine.js');
  if (!describeBackend()) configureBackend((result.summary.backend as 'wasm' | undefined) ?? 'auto');
  const tf = await useTf();
  const tfl = await useLayers();
  const { model: base } = await readModelArtifact(baseDir);
  const pooled = tfl.model({ inputs: base.inputs, outputs: tfl.layers.globalAveragePooling2d({ name: 'probe_pool' }).apply(base.outputs[0]) as SymbolicTensor });
  const dataset = await openDataset(shardsDir);
  try {
    log('probe: frozen features (out_relu, average-pooled) of every train and val image, no augmentation');
    // The pipeline's own engine for frozen parts (onnxruntime when the base converts).
    const runner = await createFrozenRunner(tf, pooled, pooled, { from: null, to: ['probe_pool'] });
    const dim = pooled.outputs[0].shape[1] as number;
    const extract = async (split: string) => {
      const count = dataset.splits[split].count;
      const x = new Float32Array(count * dim);
      const y = new Int32Array(count);
      let at = 0;
      for await (const batch of dataset.batches(split, { batchSize: 32 })) {
        x.set((await runner.run([{ x: batch.x, shape: batch.shape }]))[0], at * dim);
        y.set(batch.y, at);
        at += batch.count;
      }
      return { x, y };
    };
    try {
      // One warm-up batch so session set-up is not counted in the throughput.
      await runner.run([{ x: new Float32Array(dataset.recordShape.reduce((a, b) => a * b, 1)), shape: [1, ...dataset.recordShape] }]);
      const t0 = performance.now();
      const train = await extract('train');
      const val = await extract('val');
      const forwardS = (performance.now() - t0) / 1000;
      const images = train.y.length + val.y.length;
      const fit = fitSoftmaxRegression(train.x, train.y, val.x, val.y, dim, dataset.classes.length);
      return { ...fit, forward_img_s: round(images / forwardS, 1), forward_images: images, forward_s: round(forwardS, 2), feature_dim: dim, engine: runner.engine };
    } finally {
      await runner.dispose();
    }
  } finally {
    disposeModels(pooled as LayersModel, base);
    await dataset.close();
  }
}

/**
 * Multinomial logistic regression on standardized features: full-batch Adam (lr 0.01, L2 1e-4)
 * until the loss stops moving (relative change < 1e-7) or 2,000 iterations.
 */
export function fitSoftmaxRegression(x: Float32Array, y: Int32Array, valX: Float32Array, valY: Int32Array, dim: number, classes: number): { val_acc: number; train_acc: number; iterations: number } {
  const n = y.length;
  const mean = new Float64Array(dim);
  const std = new Float64Array(dim);
  for (let i = 0; i < n; i++) for (let d = 0; d < dim; d++) mean[d] += x[i * dim + d] / n;
  for (let i = 0; i < n; i++) for (let d = 0; d < dim; d++) std[d] += (x[i * dim + d] - mean[d]) ** 2 / n;
  for (let d = 0; d < dim; d++) std[d] = Math.sqrt(std[d]) + 1e-6;
  const standardize = (data: Float32Array) => {
    const out = new Float64Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = (data[i] - mean[i % dim]) / std[i % dim];
    return out;
  };
  const xs = standardize(x);
  const vs = standardize(valX);
  const params = (dim + 1) * classes; // weights [dim][classes], then the biases
  const w = new Float64Array(params);
  const m = new Float64Array(params);
  const v = new Float64Array(params);
  const grad = new Float64Array(params);
  const logits = new Float64Array(classes);
  const lr = 0.01;
  const l2 = 1e-4;
  let previous = Infinity;
  let iterations = 0;
  const probabilities = (data: Float64Array, row: number) => {
    let max = -Infinity;
    for (let c = 0; c < classes; c++) {
      let z = w[dim * classes + c];
      for (let d = 0; d < dim; d++) z += data[row * dim + d] * w[d * classes + c];
      logits[c] = z;
      max = Math.max(max, z);
    }
    let sum = 0;
    for (let c = 0; c < classes; c++) sum += (logits[c] = Math.exp(logits[c] - max));
    for (let c = 0; c < classes; c++) logits[c] /= sum;
    return logits;
  };
  for (let step = 1; step <= 2000; step++) {
    grad.fill(0);
    let loss = 0;
    for (let i = 0; i < n; i++) {
      const p = probabilities(xs, i);
      loss -= Math.log(p[y[i]] + 1e-12) / n;
      for (let c = 0; c < classes; c++) {
        const g = (p[c] - (c === y[i] ? 1 : 0)) / n;
        for (let d = 0; d < dim; d++) grad[d * classes + c] += g * xs[i * dim + d];
        grad[dim * classes + c] += g;
      }
    }
    for (let k = 0; k < dim * classes; k++) {
      loss += 0.5 * l2 * w[k] * w[k];
      grad[k] += l2 * w[k];
    }
    for (let k = 0; k < params; k++) {
      m[k] = 0.9 * m[k] + 0.1 * grad[k];
      v[k] = 0.999 * v[k] + 0.001 * grad[k] * grad[k];
      w[k] -= (lr * (m[k] / (1 - 0.9 ** step))) / (Math.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8);
    }
    iterations = step;
    if (Math.abs(previous - loss) < 1e-7 * Math.max(1, Math.abs(loss))) break;
    previous = loss;
  }
  const accuracyOf = (data: Float64Array, labels: Int32Array) => {
    let correct = 0;
    for (let i = 0; i < labels.length; i++) {
      const p = probabilities(data, i);
      let best = 0;
      for (let c = 1; c < classes; c++) if (p[c] > p[best]) best = c;
      if (best === labels[i]) correct++;
    }
    return round(correct / labels.length, 4);
  };
  return { val_acc: accuracyOf(vs, valY), train_acc: accuracyOf(xs, y), iterations };
}

// ---------------------------------------------------------------------------------------------
// 3. A full-network epoch, estimated (child process: training all of MobileNetV2 needs GBs)

/** Timed steps of the pipeline's own loop with every layer trainable; run by the child. */
async function fullEpochChild(modelDir: string, shardsDir: string, batch: number, timedSteps: number): Promise<void> {
  const { configureBackend, describeBackend, useTf } = await import('../src/ml/backend.js');
  const { readModelArtifact } = await import('../src/ml/artifact.js');
  const { openDataset } = await import('../src/data/shards.js');
  const { shardSource } = await import('../src/ml/sources.js');
  const { fitModel } = await import('../src/ml/train.js');
  const { unfreezeLayers, summarizeModel } = await import('../src/ml/surgery.js');
  configureBackend((process.env.PIPELINE_BACKEND as 'wasm' | undefined) ?? 'auto');
  const tf = await useTf();
  const { model } = await readModelArtifact(modelDir);
  unfreezeLayers(model, {}); // every layer trainable, BatchNorm back in training mode
  const dataset = await openDataset(shardsDir);
  const source = shardSource(dataset, 'train', batch, 42, true);
  const limited = {
    count: source.count,
    async *batches(epoch: number, options: { shuffle: boolean }) {
      let given = 0;
      for await (const b of source.batches(epoch, options)) {
        if (given++ > timedSteps) return; // one warm-up step, then the timed ones
        yield b;
      }
    },
  };
  const ends: number[] = [];
  await fitModel(tf, model, limited, undefined, {
    epochs: 1,
    optimizer: { name: 'adam', lr: 1e-5 },
    numClasses: dataset.classes.length,
    seed: 42,
    hooks: [{ onBatchEnd: () => void ends.push(performance.now()) }],
  });
  await dataset.close();
  const stepS = (ends[ends.length - 1] - ends[0]) / 1000 / (ends.length - 1);
  const steps = Math.ceil(source.count / batch);
  process.stdout.write(
    JSON.stringify({
      seconds_per_step: round(stepS, 3),
      timed_steps: ends.length - 1,
      batch,
      steps_per_epoch: steps,
      estimated_epoch_s: round((stepS / batch) * source.count, 1),
      trainable_params: summarizeModel(model).trainableParams,
      engine: describeBackend()?.name ?? 'unknown',
      method: `extrapolated: ${source.count} images x the per-image time of ${ends.length - 1} timed steps of batch ${batch} (after 1 warm-up step) of the pipeline's training loop, every layer trainable, augmented images`,
    }) + '\n',
  );
}

/**
 * Batch 32 first (the case's batch); when the child dies (training all of MobileNetV2 at 224x224
 * can exhaust the wasm backend's 4 GB heap), smaller batches, scaled to the same 400 images.
 */
async function runFullEpoch(result: OursResult, batches = [32, 16, 8, 4, 2], timedSteps = 3): Promise<JsonObject> {
  const byId = Object.fromEntries(result.summary.stages.map((s) => [s.id, s]));
  const modelDir = join(result.artifacts, 'cache', byId['fine-tune'].key);
  const shardsDir = join(result.artifacts, 'cache', byId.preprocess.key);
  const env = { ...process.env, PIPELINE_BACKEND: result.summary.backend ?? process.env.PIPELINE_BACKEND ?? 'auto' };
  const failures: JsonObject[] = [];
  for (const batch of batches) {
    log(`full-network epoch: ${timedSteps} timed steps of batch ${batch} with every layer trainable (child process)`);
    const measured = await measure(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--full-epoch-child', modelDir, shardsDir, String(batch), String(timedSteps)], join(WORK, `full-epoch-${batch}.stderr.log`), env);
    const out = lastJsonLine(measured.stdout);
    if (measured.code === 0 && out) return { ...out, peak_rss_mib: measured.peakRssMiB, ...(failures.length ? { failed_batches: failures } : {}) };
    failures.push({ batch, exit_code: measured.code, error: errorLine(measured.stderrFile), peak_rss_mib: measured.peakRssMiB });
    log(`full-network epoch: batch ${batch} failed (${failures.at(-1)!.error})`);
  }
  return { error: 'every batch size failed', failed_batches: failures };
}

/** The most telling line of a crashed child's stderr (minified wasm glue lines are skipped). */
function errorLine(file: string): string {
  const lines = tail(file, 200).split('\n').filter((l) => l.length < 400 && l.trim() && !/^\s+at /.test(l) && !/^\s*\^+\s*$/.test(l) && !/^Node\.js v/.test(l));
  return lines.find((l) => /Error|Aborted|out of memory/i.test(l)) ?? lines.at(-1) ?? 'no output';
}

// ---------------------------------------------------------------------------------------------
// 4. Torch

/** The first python that imports torch and torchvision, or null. */
function findTorchPython(): string | null {
  const candidates = [process.env.BENCH_PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => Boolean(c));
  for (const python of candidates) {
    if (spawnSync(python, ['-c', 'import torch, torchvision'], { stdio: 'ignore' }).status === 0) return python;
  }
  return null;
}

async function runTorch(dataDir: string, modelJson: string): Promise<JsonObject> {
  const python = findTorchPython();
  if (!python) return { skipped: 'torch is not installed (apt-get install -y python3-torch python3-torchvision, or set BENCH_PYTHON)' };
  log(`torch: ${python} bench/torch_finetune.py (same images, same Keras weights, 2 threads); log ${join(WORK, 'torch.stderr.log')}`);
  // The same budget and learning rates as bench/finetune.yaml (fine-tune lr = head lr / lr_divisor).
  const { headLr, tuneLr, headEpochs, tuneEpochs, batch } = caseBudget();
  const args = [TORCH_SCRIPT, '--data', dataDir, '--keras-model', modelJson, '--head-epochs', String(headEpochs), '--tune-epochs', String(tuneEpochs), '--batch', String(batch), '--size', '224', '--head-lr', String(headLr), '--tune-lr', String(tuneLr), '--threads', '2'];
  const measured = await measure(python, args, join(WORK, 'torch.stderr.log'), { ...process.env, OMP_NUM_THREADS: '2' });
  const out = lastJsonLine(measured.stdout);
  if (measured.code !== 0 || !out) return { error: `exit ${measured.code}: ${errorLine(measured.stderrFile)}` };
  log(`torch: ${measured.wallS} s, val acc ${JSON.stringify(out.val_acc)}`);
  const { history: _history, wall_s: scriptWall, peak_rss_mib: selfRss, ...rest } = out;
  return { wall_s: measured.wallS, script_wall_s: scriptWall, ...rest, peak_rss_mib: measured.peakRssMiB ?? selfRss, python };
}

// ---------------------------------------------------------------------------------------------
// Targets and the JSON line

function target(value: number | null, limit: number, kind: 'max' | 'min', why?: string): JsonObject {
  if (value === null) return { value: null, [kind]: limit, pass: null, ...(why ? { why } : {}) };
  return { value: round(value, 3), [kind]: limit, pass: kind === 'max' ? value <= limit : value >= limit };
}

export interface BenchOptions {
  torch: boolean;
  fullEpoch: boolean;
  keep: boolean;
}

/** `--no-torch`, `--no-full-epoch`, `--keep` (keep the run's artifact store in .tmp/bench-finetune). */
export function parseBenchOptions(args: string[]): BenchOptions {
  const known = ['--no-torch', '--no-full-epoch', '--keep'];
  const unknown = args.filter((a) => !known.includes(a));
  if (unknown.length) throw new Error(`bench finetune: unknown option ${unknown.join(' ')} (known: ${known.join(' ')}, or --markdown [FILE])`);
  return { torch: !args.includes('--no-torch'), fullEpoch: !args.includes('--no-full-epoch'), keep: args.includes('--keep') };
}

/** Runs the whole bench, prints the JSON line, returns it. */
export async function benchFinetune(options: BenchOptions = { torch: true, fullEpoch: true, keep: false }): Promise<JsonObject> {
  await mkdir(WORK, { recursive: true });
  const started = performance.now();
  const dataDir = await ensureData();
  const modelJson = ensureModel();
  const images = { train: CASE_DATA.classes.length * CASE_DATA.train_per_class, val: CASE_DATA.classes.length * CASE_DATA.val_per_class };
  const artifacts = join(WORK, `artifacts-${process.pid}`);
  await rm(artifacts, { recursive: true, force: true });
  try {
    const result = await runOurs(artifacts);
    const ours = describeOurs(result, images);
    const ok = (id: string) => result.summary.stages.find((s) => s.id === id)?.status === 'ran' || result.summary.stages.find((s) => s.id === id)?.status === 'cached';
    let probe: JsonObject = { error: 'the pipeline did not produce shards and a base model' };
    if (ok('preprocess') && ok('load-base')) {
      try {
        probe = { ...(await runProbe(result)) };
        log(`probe: val acc ${probe.val_acc}, frozen forward ${probe.forward_img_s} images/s`);
      } catch (error) {
        probe = { error: (error as Error).message };
      }
    }
    if (ours.frozen_forward_img_s === null && typeof probe.forward_img_s === 'number') {
      ours.frozen_forward_img_s = probe.forward_img_s;
      ours.frozen_forward_source = 'measured by the bench: out_relu + average pooling over the 600 shards, batch 32, same engine';
    }
    let fullEpoch: JsonObject = { skipped: options.fullEpoch ? 'the fine-tune stage did not finish' : '--no-full-epoch' };
    if (options.fullEpoch && ok('fine-tune')) fullEpoch = await runFullEpoch(result);
    const torch = options.torch ? await runTorch(dataDir, modelJson) : { skipped: '--no-torch' };

    const oursWall = num(ours.wall_s);
    const torchWall = num(torch.wall_s);
    const ratio = oursWall !== null && torchWall !== null && torchWall > 0 ? round(oursWall / torchWall, 3) : null;
    const tuneEpoch = num((ours.seconds_per_epoch as JsonObject).fine_tune);
    const fullEpochS = num(fullEpoch.estimated_epoch_s);
    const epochRatio = tuneEpoch !== null && fullEpochS ? round(tuneEpoch / fullEpochS, 4) : null;
    const tuneStageEpoch = num((ours.stage_seconds_per_epoch as JsonObject).fine_tune);
    const stages = ours.stages as Record<string, number>;
    const pruneS = stages.prune ?? 0;
    const line: JsonObject = {
      bench: 'finetune',
      case: {
        model: 'nsfwjs 4.4.0 MobileNetV2 (Keras), cut at out_relu',
        data: `Fashion-MNIST ${CASE_DATA.classes.map((c) => FASHION_MNIST_CLASSES[c]).join(' vs ')}`,
        images,
        size: [224, 224],
        normalize: 'unit',
        augment: 'flip',
        head: { epochs: caseBudget().headEpochs, lr: caseBudget().headLr },
        unfreeze_from: 'block_16_expand',
        fine_tune: { epochs: caseBudget().tuneEpochs, lr: caseBudget().tuneLr },
        prune: { method: 'magnitude', sparsity: 'auto', max_accuracy_drop: 0.02 },
        batch: 32,
        pipeline: 'bench/finetune.yaml',
      },
      ours,
      torch,
      ratio,
      ratio_without_prune: ratio !== null && torchWall ? round((oursWall! - pruneS) / torchWall, 3) : null,
      probe,
      full_epoch: fullEpoch,
      fine_tune_epoch_vs_full: epochRatio,
      fine_tune_stage_epoch_vs_full: tuneStageEpoch !== null && fullEpochS ? round(tuneStageEpoch / fullEpochS, 4) : null,
      targets: {
        ratio_max: target(ratio, TARGETS.ratio_max, 'max', 'torch did not run'),
        frozen_forward_img_s_min: target(num(ours.frozen_forward_img_s), TARGETS.frozen_forward_img_s_min, 'min'),
        peak_rss_mib_max: target(num(ours.peak_rss_mib), TARGETS.peak_rss_mib_max, 'max'),
        fine_tune_epoch_vs_full_max: target(epochRatio, TARGETS.fine_tune_epoch_vs_full_max, 'max', 'the full-network epoch was not measured'),
      },
      checks: {
        evaluate_minus_probe: num((ours.val_acc as JsonObject).evaluate) !== null && num(probe.val_acc) !== null ? round(num((ours.val_acc as JsonObject).evaluate)! - num(probe.val_acc)!, 4) : null,
        evaluate_minus_torch: num((ours.val_acc as JsonObject).evaluate) !== null && num((torch.val_acc as JsonObject | undefined)?.fine_tune) !== null ? round(num((ours.val_acc as JsonObject).evaluate)! - num((torch.val_acc as JsonObject).fine_tune)!, 4) : null,
      },
      bench_s: round((performance.now() - started) / 1000, 1),
      date: new Date().toISOString(),
    };
    process.stdout.write(JSON.stringify(line) + '\n');
    return line;
  } finally {
    if (!options.keep) await rm(artifacts, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// --markdown: the README's table from the JSON line

const cell = (value: Json | undefined, digits = 3): string =>
  typeof value === 'number' ? (Number.isInteger(value) ? String(value) : value.toFixed(digits)) : value === null || value === undefined ? '-' : String(value).replace(/\s*\n\s*/g, ' ').replace(/\|/g, '\\|');
const passText = (t: Json | undefined): string => {
  const o = (t ?? {}) as JsonObject;
  return o.pass === true ? 'pass' : o.pass === false ? '**fail**' : 'n/a';
};

/** The README's performance table (Markdown) for one bench JSON line. */
export function renderMarkdown(line: JsonObject): string {
  const ours = (line.ours ?? {}) as JsonObject;
  const torch = (line.torch ?? {}) as JsonObject;
  const probe = (line.probe ?? {}) as JsonObject;
  const full = (line.full_epoch ?? {}) as JsonObject;
  const targets = (line.targets ?? {}) as Record<string, JsonObject>;
  const acc = (ours.val_acc ?? {}) as JsonObject;
  const tacc = (torch.val_acc ?? {}) as JsonObject;
  const phases = (torch.phases ?? {}) as JsonObject;
  const out: string[] = [];
  out.push('| | ours (pipeline CLI) | PyTorch loop (`bench/torch_finetune.py`) | target |', '|---|---|---|---|');
  out.push(`| wall time, s | ${cell(ours.wall_s, 1)} | ${torch.skipped ? `not run: ${torch.skipped}` : cell(torch.wall_s, 1)} | ours/torch ${cell(line.ratio)} (≤ ${cell(targets.ratio_max?.max)}: ${passText(targets.ratio_max)}) |`);
  out.push(`| val accuracy after head | ${cell(acc.head)} | ${cell(tacc.head)} | |`);
  out.push(`| val accuracy after fine-tune | ${cell(acc.fine_tune)} | ${cell(tacc.fine_tune)} | |`);
  out.push(`| val accuracy after prune / evaluate | ${cell(acc.prune_after)} / ${cell(acc.evaluate)} | - | linear probe ${cell(probe.val_acc)} |`);
  out.push(`| frozen forward, images/s | ${cell(ours.frozen_forward_img_s, 1)} | - | ≥ ${cell(targets.frozen_forward_img_s_min?.min)}: ${passText(targets.frozen_forward_img_s_min)} |`);
  out.push(`| peak RSS, MiB | ${cell(ours.peak_rss_mib, 0)} | ${cell(torch.peak_rss_mib, 0)} | ≤ ${cell(targets.peak_rss_mib_max?.max)}: ${passText(targets.peak_rss_mib_max)} |`);
  out.push(`| fine-tune epoch / full-network epoch | ${cell((ours.seconds_per_epoch as JsonObject | undefined)?.fine_tune, 2)} s / ${cell(full.estimated_epoch_s, 1)} s (est., batch ${cell(full.batch)}) = ${cell(line.fine_tune_epoch_vs_full, 3)} | ${cell((torch.seconds_per_epoch as JsonObject | undefined)?.fine_tune, 1)} s | ≤ ${cell(targets.fine_tune_epoch_vs_full_max?.max)}: ${passText(targets.fine_tune_epoch_vs_full_max)} |`);
  out.push('');
  out.push('Where the time goes (seconds):', '');
  const stages = (ours.stages ?? {}) as Record<string, Json>;
  out.push(`| ${Object.keys(stages).join(' | ')} | ours total |`, `|${Object.keys(stages).map(() => '---|').join('')}---|`);
  out.push(`| ${Object.values(stages).map((s) => cell(s, 1)).join(' | ')} | ${cell(ours.wall_s, 1)} |`);
  if (!torch.skipped && !torch.error) {
    out.push('', `| torch: import | load weights | head (${cell((torch.epochs as JsonObject | undefined)?.head)} epochs) | head eval | fine-tune (${cell((torch.epochs as JsonObject | undefined)?.fine_tune)} epochs) | fine-tune eval | torch total |`, '|---|---|---|---|---|---|---|');
    out.push(`| ${cell(torch.import_s, 1)} | ${cell(phases.load, 1)} | ${cell(phases.head, 1)} | ${cell(phases.head_eval, 1)} | ${cell(phases.fine_tune, 1)} | ${cell(phases.fine_tune_eval, 1)} | ${cell(torch.wall_s, 1)} |`);
  }
  out.push('', `Engine: ${Object.entries((ours.engines ?? {}) as JsonObject).map(([k, v]) => `${k} ${typeof v === 'string' ? v : JSON.stringify(v)}`).join(', ')}; frozen forward: ${cell(ours.frozen_forward_source)}; full-network epoch: ${cell(full.method ?? full.error ?? full.skipped)}. Measured ${cell(line.date)}.`);
  return out.join('\n') + '\n';
}

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  if (args[0] === '--full-epoch-child') {
    await fullEpochChild(args[1], args[2], Number(args[3]), Number(args[4]));
  } else if (args[0] === '--markdown') {
    const text = args[1] ? await readFile(args[1], 'utf8') : await readStdin();
    const line = lastJsonLine(text);
    if (!line) throw new Error('--markdown: no JSON line in the input');
    process.stdout.write(renderMarkdown(line));
  } else {
    await benchFinetune(parseBenchOptions(args));
  }
}
