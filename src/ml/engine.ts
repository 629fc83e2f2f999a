/**
 * The inference engine for frozen parts of a model: onnxruntime-node when the part converts to
 * ONNX (5-40x faster than TF.js wasm on CPU), TF.js otherwise — and TF.js on a tfjs-node-gpu
 * backend, where the GPU beats onnxruntime's CPU build. TF.js stays the reference: the ONNX
 * exporter is tested layer by layer against it.
 *
 * A runner maps a batch of NHWC float32 inputs to NHWC float32 outputs; it never trains.
 */
import os from 'node:os';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { Logger } from 'pino';
import { applyAugmentation, MIRROR_DRAW } from '../data/augment.js';
import { normalizationCoefficients, type NormalizeSpec } from '../data/spec.js';
import { describeBackend, type Tf } from './backend.js';
import type { TrainStepper } from './train.js';

/** Which engine runs a frozen part. */
export type EngineName = 'onnxruntime' | 'tfjs';

/** `auto` picks onnxruntime where the part converts (and the backend is not a GPU). */
export type EnginePreference = 'auto' | EngineName;

/** One input or output batch: values and their shape, batch dimension first. */
export interface EngineTensor {
  x: Float32Array;
  shape: number[];
}

/** A batch of raw records (the shards' uint8 NHWC bytes) for `runPixels`. */
export interface PixelBatch {
  pixels: Uint8Array;
  /** `[count, height, width, channels]`. */
  shape: number[];
  /** Mirror every record left-right first (the second view of flip-only augmentation). */
  mirror: boolean;
}

/** Runs a fixed part of a model in inference mode. */
export interface FrozenRunner {
  engine: EngineName;
  /**
   * One batch through the part; one array per output, in the part's output order. Not for a
   * runner made with `pixels` on onnxruntime (its graph takes uint8): use `runPixels`.
   */
  run(inputs: EngineTensor[]): Promise<Float32Array[]>;
  /**
   * With `pixels`: one batch of raw records, normalized (and mirrored) as the shard reader
   * would — inside the graph on onnxruntime, in JavaScript on TF.js.
   */
  runPixels?(batch: PixelBatch): Promise<Float32Array[]>;
  dispose(): Promise<void>;
}

/** The span of a model a runner computes. */
export interface ModelSpan {
  /** Layers whose outputs are the inputs; null for the model's own inputs. */
  from: string[] | null;
  /** Layers whose outputs are the outputs. */
  to: string[];
}

/** Options of `createFrozenRunner`. */
export interface RunnerOptions {
  preference?: EnginePreference;
  log?: Logger;
  /** onnxruntime threads; default the machine's cores. */
  threads?: number;
  /**
   * The span starts at the model's image input and will be fed raw records through
   * `runPixels`, normalized with this spec (the shards' `normalize`).
   */
  pixels?: NormalizeSpec;
}

/**
 * A runner for `span` of `model`. `part` is the same span as a TF.js model (built by the
 * caller with `buildBottom`/`buildBetween`), used when onnxruntime is not.
 */
export async function createFrozenRunner(tf: Tf, model: LayersModel, part: LayersModel, span: ModelSpan, options: RunnerOptions = {}): Promise<FrozenRunner> {
  const preference = options.preference ?? 'auto';
  const gpu = describeBackend()?.name === 'node-gpu';
  // The onnxruntime runner feeds one input; the parts with several (between two multi-tensor
  // frontiers) are small next to the pass over images and run in TF.js.
  const singleInput = !span.from || span.from.length === 1;
  if (singleInput && (preference === 'onnxruntime' || (preference === 'auto' && !gpu))) {
    const onnx = await createOnnxRunner(model, span, options);
    if (onnx) return onnx;
  }
  const runner = tfjsRunner(tf, part);
  return options.pixels ? { ...runner, runPixels: normalizingInJs(runner, options.pixels) } : runner;
}

/** `runPixels` for a runner on float input: the shard reader's own normalization, then `run`. */
function normalizingInJs(runner: FrozenRunner, normalize: NormalizeSpec): (batch: PixelBatch) => Promise<Float32Array[]> {
  return (batch) => {
    const [count, height, width, channels] = batch.shape;
    const size = height * width * channels;
    const x = new Float32Array(count * size);
    for (let row = 0; row < count; row++) applyAugmentation(batch.pixels.subarray(row * size, (row + 1) * size), [height, width, channels], batch.mirror ? MIRROR_DRAW : null, normalize, x, row * size);
    return runner.run([{ x, shape: batch.shape }]);
  };
}

/** Whether the model's input can take raw records in the graph: one NHWC image input of known size. */
function takesPixels(model: LayersModel, span: ModelSpan): boolean {
  const shape = model.inputs.length === 1 ? model.inputs[0].shape : [];
  return span.from === null && shape.length === 4 && shape.slice(1).every((d) => typeof d === 'number');
}

/** TF.js `predict` on the part. */
export function tfjsRunner(tf: Tf, part: LayersModel): FrozenRunner {
  return {
    engine: 'tfjs',
    async run(inputs) {
      const outs = tf.tidy(() => {
        const xs = inputs.map((i) => tf.tensor(i.x, i.shape));
        const out = part.predict(xs.length === 1 ? xs[0] : xs) as TfCore.Tensor | TfCore.Tensor[];
        return Array.isArray(out) ? out : [out];
      });
      try {
        return (await Promise.all(outs.map((o) => o.data()))) as Float32Array[];
      } finally {
        outs.forEach((o) => o.dispose());
      }
    },
    async dispose() {},
  };
}

/** The onnxruntime runner, or null (logged, with the layer that does not convert). */
async function createOnnxRunner(model: LayersModel, span: ModelSpan, options: RunnerOptions): Promise<FrozenRunner | null> {
  const { convertLayersModel, UnsupportedLayerError } = await import('./onnx/convert.js');
  const pixels = options.pixels && takesPixels(model, span) ? { ...normalizationCoefficients(options.pixels), mirror: true } : undefined;
  let converted;
  try {
    converted = convertLayersModel(model, { ...(span.from ? { from: span.from } : {}), to: span.to, name: `${model.name}_frozen`, ...(pixels ? { pixels } : {}) });
  } catch (caught) {
    if (!(caught instanceof UnsupportedLayerError)) throw caught;
    const error = caught as InstanceType<typeof UnsupportedLayerError>;
    options.log?.info({ layer: error.layer, className: error.className, reason: error.reason }, `frozen part runs in TF.js: layer ${error.layer} (${error.className}) does not convert to ONNX: ${error.reason}`);
    return null;
  }
  const { createOnnxRunner: create } = await import('./onnx/runner.js');
  const runner = await create(converted, { threads: options.threads ?? os.availableParallelism() });
  const frozen: FrozenRunner = {
    engine: 'onnxruntime',
    run: (inputs) => runner.run(inputs[0].x, inputs[0].shape),
    dispose: () => runner.dispose(),
  };
  if (!options.pixels) return frozen;
  return { ...frozen, runPixels: pixels ? (batch) => runner.run(batch.pixels, batch.shape, { mirror: batch.mirror }) : normalizingInJs(frozen, options.pixels) };
}

/**
 * Training steps for a top through onnxruntime's forward+backward graph (see
 * `onnx/trainer.ts`), or null — logged with the layer that has no backward there — when TF.js
 * autodiff must do it: a GPU backend, a multi-input top, an unsupported layer.
 */
export async function createTrainStepper(tf: Tf, top: LayersModel, options: { numClasses: number; classWeights?: number[]; preference?: EnginePreference; log?: Logger }): Promise<(TrainStepper & { dispose(): Promise<void> }) | null> {
  const preference = options.preference ?? 'auto';
  if (preference === 'tfjs' || (preference === 'auto' && describeBackend()?.name === 'node-gpu')) return null;
  const { createOnnxStep } = await import('./onnx/trainer.js');
  const { UnsupportedLayerError } = await import('./onnx/train-graph.js');
  try {
    const step = await createOnnxStep(tf, top, { numClasses: options.numClasses, classWeights: options.classWeights, threads: os.availableParallelism() });
    return { step: (batch, optimizer) => step.step(batch, optimizer), evaluate: (batch) => step.evaluate(batch), refresh: () => step.refresh(), dispose: () => step.dispose() };
  } catch (caught) {
    if (!(caught instanceof UnsupportedLayerError)) throw caught;
    options.log?.info({ layer: caught.layer, className: caught.className, reason: caught.reason }, `training steps run in TF.js: layer ${caught.layer} (${caught.className}) has no onnxruntime backward: ${caught.reason}`);
    return null;
  }
}
