/**
 * Shared helpers for stage tests that call a stage's `run` directly (no runtime, no cache):
 *
 * - `useTestBackend()`: one TF.js backend per test file (wasm by default, as users get without tfjs-node).
 * - `makeStageContext()` / `runStage()` / `inputFrom()`: a `StageContext` with a silent logger,
 *   fresh out/work dirs under a temp root, `input()` and a working `memo()`.
 * - `buildTinyShards()`: the real `ingest` + `preprocess` on the Fashion-MNIST fixture
 *   (3 classes x 8 PNGs; 18 train, 6 val records) at 8x8 pixels.
 * - `createTinyModel()` / `makeTinyModelArtifact()`: a conv + global-average-pooling + softmax
 *   classifier on `[8, 8, 3]`, seeded, optionally with a constant output or trained a few epochs,
 *   written as a `model` artifact with classes, preprocess spec and lineage.
 *
 * Temp roots come from `testdir()` (test/fixtures/testdir.ts); remove them in `afterAll`.
 */
import { cp, mkdtemp } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { openDataset } from '../../../src/data/shards.js';
import type { AugmentSpec, FitMode, NormalizeName, PreprocessSpec } from '../../../src/data/spec.js';
import { writeModelArtifact, type ModelInfo } from '../../../src/ml/artifact.js';
import { configureBackend, useLayers, useTf, type BackendPreference, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { ingest, type IngestParams } from '../../../src/stages/ingest.js';
import { preprocess, specFromParams, type PreprocessParams } from '../../../src/stages/preprocess.js';
import { inputFrom, runStage } from '../../fixtures/stage-context.js';

export { inputFrom, makeStageContext, runStage, type StageContextOptions, type TestStageContext } from '../../fixtures/stage-context.js';

/** The Fashion-MNIST fixture: class folders `sneaker`, `t-shirt`, `trouser`, 8 PNGs each. */
export const FASHION = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'images', 'fashion');

/**
 * Configures and initializes the TF.js backend for this test file (vitest runs each file in its
 * own process, so one backend per file). Default `wasm`: the backend every stage must support.
 */
export async function useTestBackend(preference: BackendPreference = 'wasm'): Promise<{ tf: Tf; tfl: TfLayersApi }> {
  configureBackend(preference);
  return { tf: await useTf(), tfl: await useLayers() };
}

/** Options of `buildTinyShards`; the rest of the preprocess params are the schema defaults. */
export interface TinyShardsOptions {
  /** `[height, width]`. Default `[8, 8]`. */
  size?: [number, number];
  /** Fixture class folders to use. Default all three. */
  classes?: string[];
  normalize?: NormalizeName;
  fit?: FitMode;
  augment?: Partial<AugmentSpec>;
}

/** What `buildTinyShards` made. */
export interface TinyShards {
  /** The `ingest` artifact (provides `dataset`). */
  dataset: StageInput;
  /** The `preprocess` artifact (provides `shards`). */
  shards: StageInput;
  /** Class names in label order. */
  classes: string[];
  /** The recorded preprocessing spec. */
  spec: PreprocessSpec;
  /** Absolute folder the images were ingested from. */
  imagesDir: string;
}

/**
 * Runs the real `ingest` (val 25%, stratified and seeded: 18 train and 6 val records with three
 * classes) and `preprocess` on the fashion fixture, under `root`.
 */
export async function buildTinyShards(root: string, options: TinyShardsOptions = {}): Promise<TinyShards> {
  let imagesDir = FASHION;
  if (options.classes) {
    imagesDir = await mkdtemp(join(root, 'images-'));
    for (const name of options.classes) await cp(join(FASHION, name), join(imagesDir, name), { recursive: true });
  }
  const ingestParams: IngestParams = {
    path: imagesDir,
    split: { val: 0.25, test: 0 },
    strict: true,
    extensions: ['.png'],
  };
  const ingested = await runStage(ingest, { root, params: ingestParams });
  const dataset = inputFrom(ingest, ingested.ctx.outDir, ingested.result.metrics);
  const params: PreprocessParams = {
    size: options.size ?? [8, 8],
    fit: options.fit ?? 'cover',
    channels: 3,
    background: [255, 255, 255],
    normalize: options.normalize ?? 'imagenet',
    augment: options.augment ?? {},
  };
  const processed = await runStage(preprocess, { root, params, inputs: [dataset] });
  const shards = inputFrom(preprocess, processed.ctx.outDir, processed.result.metrics);
  const opened = await openDataset(shards.dir);
  const classes = opened.classes;
  await opened.close();
  return { dataset, shards, classes, spec: specFromParams(params), imagesDir };
}

/** Options of `createTinyModel`. */
export interface TinyModelOptions {
  /** Number of output classes. */
  classes: number;
  /** Default `[8, 8, 3]`. */
  inputShape?: [number, number, number];
  /** Seed of the weight initializers. Default 1. */
  seed?: number;
  /**
   * Probabilities the model outputs for every input (must sum to 1): all kernels are zeroed and
   * the dense bias set to their logs, so softmax returns exactly these. Default: seeded weights.
   */
  constantOutput?: number[];
}

/** conv(4, 3x3, relu) -> global average pooling -> dense softmax: a tiny image classifier. */
export function createTinyModel(tfl: TfLayersApi, tf: Tf, options: TinyModelOptions): LayersModel {
  const seed = options.seed ?? 1;
  const input = tfl.input({ shape: options.inputShape ?? [8, 8, 3], name: 'image' });
  let x = tfl.layers
    .conv2d({ filters: 4, kernelSize: 3, padding: 'same', activation: 'relu', name: 'conv', kernelInitializer: tfl.initializers.glorotUniform({ seed }), biasInitializer: 'zeros' })
    .apply(input) as SymbolicTensor;
  x = tfl.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as SymbolicTensor;
  const output = tfl.layers
    .dense({ units: options.classes, activation: 'softmax', name: 'head', kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + 1 }) })
    .apply(x) as SymbolicTensor;
  const model = tfl.model({ inputs: input, outputs: output, name: 'tiny' });
  if (options.constantOutput) {
    if (options.constantOutput.length !== options.classes) throw new Error('constantOutput needs one probability per class');
    const weights = model.getWeights().map((weight, i, all) => (i === all.length - 1 ? tf.tensor1d(options.constantOutput!.map(Math.log)) : tf.zerosLike(weight)));
    model.setWeights(weights);
    tf.dispose(weights);
  }
  return model;
}

/** Options of `makeTinyModelArtifact`. */
export interface TinyModelArtifactOptions extends Omit<TinyModelOptions, 'classes'> {
  /** Class names recorded in the model info (and the output count). */
  classes: string[];
  /** Spec recorded in the info. Default none. */
  preprocess?: PreprocessSpec;
  /** Train this many epochs (adam, lr 0.05, unshuffled full-batch fit) on the shards' train split. */
  train?: { shards: StageInput; epochs: number };
  /** Default `['load-base', 'train-head']`. */
  lineage?: string[];
  /** Record no classes at all (a base model before train-head). */
  headless?: boolean;
}

/** Writes a tiny model artifact under `root`; returns it as the `model` input of a `train-head` stage with id `head`, plus its info. */
export async function makeTinyModelArtifact(root: string, options: TinyModelArtifactOptions): Promise<StageInput & { info: ModelInfo }> {
  const tf = await useTf();
  const tfl = await useLayers();
  const model = createTinyModel(tfl, tf, { ...options, classes: Math.max(1, options.classes.length) });
  if (options.train) await trainOnShards(tf, model, options.train.shards.dir, options.train.epochs);
  const info: ModelInfo = {
    ...(options.headless ? {} : { classes: options.classes }),
    ...(options.preprocess ? { preprocess: options.preprocess } : {}),
    lineage: options.lineage ?? ['load-base', 'train-head'],
  };
  const dir = await mkdtemp(join(root, 'model-'));
  await writeModelArtifact(dir, model, info);
  model.dispose();
  return { id: 'head', kind: 'train-head', key: 'head-key', dir, provides: ['model'], metrics: {}, info };
}

async function trainOnShards(tf: Tf, model: LayersModel, shardsDir: string, epochs: number): Promise<void> {
  const dataset = await openDataset(shardsDir);
  try {
    const count = dataset.splits.train.count;
    let batch;
    for await (const b of dataset.batches('train', { batchSize: count })) batch = b;
    const x = tf.tensor4d(batch!.x, batch!.shape);
    const y = tf.oneHot(tf.tensor1d(batch!.y, 'int32'), dataset.classes.length);
    model.compile({ optimizer: tf.train.adam(0.05), loss: 'categoricalCrossentropy' });
    await model.fit(x, y, { epochs, batchSize: count, shuffle: false, verbose: 0 });
    tf.dispose([x, y]);
  } finally {
    await dataset.close();
  }
}
