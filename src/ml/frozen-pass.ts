/**
 * One frozen pass per pipeline. A frozen bottom computes the same activations in every stage
 * that reads it (train-head, fine-tune, prune's recovery, evaluate), so its outputs are
 * computed once per image and *view* and shared through a pipeline-wide memo keyed by a digest
 * of the bottom's layers and weights (`digestClosure`), not by the stage that asked:
 *
 * - the pass runs at the *lowest* cut any downstream stage needs (`lowerFor`: an `unfreeze`
 *   further down tells train-head, through the runtime's hints, which layers will train), so
 *   the images go through the frozen bottom once in the whole pipeline;
 * - a stage whose own frontier is higher (train-head, whose frontier is the pooled vector)
 *   runs only the frozen layers *between* the two cuts, over the cached activations, and
 *   memoizes that too;
 * - views: flip-only augmentation has exactly two distinct views (plain and mirrored); other
 *   augmentation caches `augment_views` random views. Each epoch every record picks one of its
 *   views at random (seeded), as on-the-fly augmentation would.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { AugmentDraw } from '../data/augment.js';
import { createRandom, deriveSeed } from '../data/random.js';
import type { ShardDataset } from '../data/shards.js';
import { isAugmenting, type AugmentSpec } from '../data/spec.js';
import { AbortedError, StageError } from '../runtime/errors.js';
import { sha256 } from '../runtime/hash.js';
import type { StageContext } from '../runtime/types.js';
import type { Tf } from './backend.js';
import { createFrozenRunner, type EngineName, type EnginePreference, type FrozenRunner } from './engine.js';
import { buildBetween, buildBottom, buildTop, digestClosure, findFrontier, isTrivial, type Frontier, type TrainablePredicate } from './frontier.js';
import type { BatchSource, TrainBatch } from './train.js';

/** Bump when the stored activations would differ for the same inputs. */
const PASS_VERSION = 1;

/** Cached activations of one split: one array per frontier tensor, `views` stacked passes. */
export interface CachedSplit {
  /** Per frontier tensor: `views * count * prod(shape)` float32, view-major. */
  xs: Float32Array[];
  shapes: number[][];
  y: Int32Array;
  count: number;
  views: number;
}

/** What a stage gets back. */
export interface FrozenActivations {
  /** The frontier the activations are at (the stage model's own). */
  frontier: Frontier;
  /** The model above the frontier, sharing layers with the stage's model. */
  top: LayersModel;
  /** Per split name. */
  splits: Record<string, CachedSplit>;
  /** For the stage's metrics. */
  stats: FrozenPassStats;
}

/** Counts that prove the sharing and show the speed. */
export interface FrozenPassStats {
  /** Engine of the pass over images ('cached' when it came from the memo). */
  engine: EngineName | 'cached';
  /** Image-views pushed through the frozen bottom by this stage (0 when cached). */
  images: number;
  /** Seconds of that pass. */
  seconds: number;
  /** Records pushed through the frozen layers between two cuts by this stage. */
  derived: number;
  /** Layers in the frozen part that the pass computes. */
  frozenLayers: number;
}

/** Options of `frozenActivations`. */
export interface FrozenPassRequest {
  tf: Tf;
  ctx: StageContext<any>;
  model: LayersModel;
  dataset: ShardDataset;
  /** Records per batch of the pass. */
  batch: number;
  /** Views to cache when the shards augment with more than a flip. */
  augmentViews: number;
  /** Layers that stages downstream will make trainable: the pass stops below them too. */
  lowerFor?: TrainablePredicate;
  engine?: EnginePreference;
}

/** The distinct views of the train split: null = plain; a draw = that exact transform. */
export interface ViewPlan {
  /** Number of views. */
  views: number;
  /** 'fixed': view i applies draws[i]; 'random': view i is the shards' augmentation drawn with seed i. */
  kind: 'fixed' | 'random' | 'none';
  draws: (AugmentDraw | null)[];
}

/** Flip-only augmentation has two distinct views; anything random caches `augmentViews`. */
export function planViews(augment: AugmentSpec | undefined, augmentViews: number): ViewPlan {
  if (!isAugmenting(augment)) return { views: 1, kind: 'none', draws: [null] };
  const flipOnly = augment!.flip && !augment!.crop && !augment!.rotate && !augment!.brightness && !augment!.contrast;
  if (flipOnly) return { views: 2, kind: 'fixed', draws: [null, { flip: true, scale: 1, offsetX: 0.5, offsetY: 0.5, angle: 0, brightness: 1, contrast: 1 }] };
  return { views: Math.max(1, augmentViews), kind: 'random', draws: [] };
}

/**
 * The model's frozen activations for every split, from the pipeline-wide memo or computed
 * once. Null when nothing below the trainable layers is worth caching (the model trains on
 * images).
 */
export async function frozenActivations(request: FrozenPassRequest): Promise<FrozenActivations | null> {
  const { model, ctx } = request;
  const own = findFrontier(model);
  if (!own || isTrivial(own)) return null;
  const lowered = request.lowerFor ? findFrontier(model, (layer) => request.lowerFor!(layer) || (layer.trainable && layer.trainableWeights.length > 0)) : null;
  const low = lowered && !isTrivial(lowered) && [...lowered.closure].every((name) => own.frozen.has(name)) ? lowered : own;
  const stats: FrozenPassStats = { engine: 'cached', images: 0, seconds: 0, derived: 0, frozenLayers: own.closure.size };
  const lowDir = await passOverImages(request, low, stats);
  let dir = lowDir;
  if (low !== own && !sameTensors(low, own)) {
    const parts = { pass: PASS_VERSION, derived: 'between', from: path.basename(lowDir), to: await digestClosure(model, own) };
    dir = await ctx.memo('frozen-pass', parts, (out) => passBetween(request, low, own, lowDir, out, stats), { shared: true });
  }
  const splits: Record<string, CachedSplit> = {};
  for (const name of Object.keys(request.dataset.splits)) splits[name] = await readSplit(dir, name);
  return { frontier: own, top: await buildTop(model, own), splits, stats };
}

function sameTensors(a: Frontier, b: Frontier): boolean {
  return a.tensors.map((t) => t.layer).join('\n') === b.tensors.map((t) => t.layer).join('\n');
}

async function passOverImages(request: FrozenPassRequest, frontier: Frontier, stats: FrozenPassStats): Promise<string> {
  const { tf, ctx, model, dataset } = request;
  const plan = planViews(dataset.spec.augment, request.augmentViews);
  const shards = ctx.input('shards').key;
  const parts = { pass: PASS_VERSION, bottom: await digestClosure(model, frontier), shards, views: plan.views, kind: plan.kind, engine: request.engine ?? 'auto' };
  return ctx.memo(
    'frozen-pass',
    parts,
    async (out) => {
      const part = await buildBottom(model, frontier);
      const runner = await createFrozenRunner(tf, model, part, { from: null, to: frontier.tensors.map((t) => t.layer) }, { preference: request.engine, log: ctx.log });
      const t0 = performance.now();
      try {
        const total = Object.entries(dataset.splits).reduce((sum, [name, s]) => sum + s.count * (name === 'train' ? plan.views : 1), 0);
        let done = 0;
        const passing = ctx.track('frozen pass', total);
        try {
          for (const [name, split] of Object.entries(dataset.splits)) {
            const views = name === 'train' ? plan.views : 1;
            const writer = new SplitWriter(frontier, split.count, views);
            for (let view = 0; view < views; view++) {
              const options = {
                batchSize: request.batch,
                shuffle: false,
                ...(plan.kind === 'fixed' && name === 'train' ? { draw: plan.draws[view] } : {}),
                ...(plan.kind === 'random' && name === 'train' ? { augment: true, seed: deriveSeed(0, 'views', shards), epoch: view } : {}),
              };
              for await (const batch of dataset.batches(name, options)) {
                if (ctx.signal.aborted) throw new AbortedError();
                writer.add(view, await runner.run([{ x: batch.x, shape: batch.shape }]), batch.y, batch.count);
                done += batch.count;
                passing.tick(batch.count);
              }
            }
            await writer.save(out, name);
          }
        } finally {
          passing.done();
        }
        stats.images = done;
        stats.engine = runner.engine;
        stats.seconds = Math.round(performance.now() - t0) / 1000;
        ctx.log.info({ engine: runner.engine, images: done, seconds: stats.seconds, img_per_s: Math.round(done / Math.max(1e-3, stats.seconds)), frontier: frontier.tensors.map((t) => t.layer) }, 'frozen pass done');
      } finally {
        // `part` shares its layers with `model`, which the caller disposes.
        await runner.dispose();
      }
    },
    { shared: true },
  );
}

/** Runs the frozen layers between two frontiers over the lower one's cached activations. */
async function passBetween(request: FrozenPassRequest, low: Frontier, high: Frontier, lowDir: string, out: string, stats: FrozenPassStats): Promise<void> {
  const { tf, ctx, model, dataset } = request;
  const part = await buildBetween(model, low, high);
  const runner: FrozenRunner = await createFrozenRunner(tf, model, part, { from: low.tensors.map((t) => t.layer), to: high.tensors.map((t) => t.layer) }, { preference: request.engine, log: ctx.log });
  try {
    for (const name of Object.keys(dataset.splits)) {
      const source = await readSplit(lowDir, name);
      const writer = new SplitWriter(high, source.count, source.views);
      const sizes = source.shapes.map((s) => s.reduce((a, b) => a * b, 1));
      for (let view = 0; view < source.views; view++) {
        for (let start = 0; start < source.count; start += request.batch) {
          if (ctx.signal.aborted) throw new AbortedError();
          const count = Math.min(request.batch, source.count - start);
          const row = view * source.count + start;
          const inputs = source.xs.map((x, i) => ({ x: x.subarray(row * sizes[i], (row + count) * sizes[i]), shape: [count, ...source.shapes[i]] }));
          writer.add(view, await runner.run(inputs), source.y.subarray(start, start + count), count);
          stats.derived += count;
        }
      }
      await writer.save(out, name);
    }
  } finally {
    await runner.dispose();
  }
}

/** Collects a split's activations in memory, view by view, in record order. */
class SplitWriter {
  private readonly xs: Float32Array[];
  private readonly sizes: number[];
  private readonly y: Int32Array;
  private filled: number[];

  constructor(private readonly frontier: Frontier, private readonly count: number, private readonly views: number) {
    this.sizes = frontier.tensors.map((t) => t.shape.reduce((a, b) => a * b, 1));
    this.xs = this.sizes.map((size) => new Float32Array(views * count * size));
    this.y = new Int32Array(count);
    this.filled = new Array(views).fill(0);
  }

  add(view: number, outputs: Float32Array[], labels: Int32Array, count: number): void {
    const at = this.filled[view];
    outputs.forEach((values, i) => {
      if (values.length !== count * this.sizes[i]) throw new StageError('frozen_pass_shape', `the frozen part returned ${values.length} values for ${count} records of [${this.frontier.tensors[i].shape.join(', ')}]`);
      this.xs[i].set(values, (view * this.count + at) * this.sizes[i]);
    });
    if (view === 0) this.y.set(labels, at);
    this.filled[view] = at + count;
  }

  async save(dir: string, split: string): Promise<void> {
    const meta = { count: this.count, views: this.views, tensors: this.frontier.tensors, labels: Array.from(this.y) };
    for (const [i, x] of this.xs.entries()) await writeFile(path.join(dir, `${split}.${i}.f32`), Buffer.from(x.buffer, x.byteOffset, x.byteLength));
    await writeFile(path.join(dir, `${split}.json`), JSON.stringify(meta));
  }
}

/** Reads a split written by `SplitWriter`, checking every length. */
export async function readSplit(dir: string, split: string): Promise<CachedSplit> {
  try {
    const meta = JSON.parse(await readFile(path.join(dir, `${split}.json`), 'utf8')) as { count: number; views: number; tensors: { shape: number[] }[]; labels: number[] };
    if (!Number.isInteger(meta?.count) || !Number.isInteger(meta.views) || !Array.isArray(meta.tensors) || !Array.isArray(meta.labels) || meta.labels.length !== meta.count) throw new Error('metadata has the wrong shape');
    const xs: Float32Array[] = [];
    for (const [i, tensor] of meta.tensors.entries()) {
      const bytes = await readFile(path.join(dir, `${split}.${i}.f32`));
      const expected = meta.views * meta.count * tensor.shape.reduce((a, b) => a * b, 1);
      if (bytes.byteLength !== expected * 4) throw new Error(`${split}.${i}.f32 holds ${bytes.byteLength / 4} values, expected ${expected}`);
      xs.push(new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
    }
    return { xs, shapes: meta.tensors.map((t) => t.shape), y: Int32Array.from(meta.labels), count: meta.count, views: meta.views };
  } catch (error) {
    throw new StageError('features_unreadable', `cached activations ${path.join(dir, split)} are unreadable: ${(error as Error).message}`, { dir, split }, { cause: error });
  }
}

/**
 * Batches over a cached split. With `views > 1` each record takes one of its views per epoch,
 * drawn from a seed of (seed, epoch, record); shuffled per epoch like the shard reader.
 */
export function cachedSource(split: CachedSplit, batchSize: number, seed: number): BatchSource {
  const sizes = split.shapes.map((s) => s.reduce((a, b) => a * b, 1));
  return {
    count: split.count,
    batchSize,
    async *batches(epoch, { shuffle }) {
      const order = Int32Array.from({ length: split.count }, (_, i) => i);
      if (shuffle) createRandom(deriveSeed(seed, 'epoch', epoch)).shuffle(order);
      const pick = createRandom(deriveSeed(seed, 'view', epoch));
      const views = Int32Array.from(order, () => (shuffle && split.views > 1 ? Math.min(split.views - 1, Math.floor(pick.next() * split.views)) : 0));
      for (let start = 0; start < split.count; start += batchSize) {
        const rows = order.subarray(start, Math.min(split.count, start + batchSize));
        const inputs = split.xs.map((source, t) => {
          const x = new Float32Array(rows.length * sizes[t]);
          rows.forEach((row, i) => {
            const at = (views[start + i] * split.count + row) * sizes[t];
            x.set(source.subarray(at, at + sizes[t]), i * sizes[t]);
          });
          return { x, shape: [rows.length, ...split.shapes[t]] };
        });
        const y = Int32Array.from(rows, (row) => split.y[row]);
        yield { x: inputs[0].x, shape: inputs[0].shape, more: inputs.slice(1), y, count: rows.length } satisfies TrainBatch;
      }
    },
  };
}

/** A short id of a frontier for logs and metrics. */
export function describeFrontier(frontier: Frontier): string {
  const names = frontier.tensors.map((t) => t.layer);
  return names.length <= 2 ? names.join('+') : `${names[0]}+${names.length - 1} more (${sha256(names.join('\n')).slice(0, 8)})`;
}
