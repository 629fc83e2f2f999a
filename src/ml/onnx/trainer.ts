/**
 * Training steps through onnxruntime instead of TF.js autodiff: a drop-in for the
 * `optimizer.minimize` of `src/ml/train.ts` `fitModel` when the trainable part of a model runs
 * on cached features (the `top` of `splitAtTrainable`).
 *
 * ```ts
 * const onnx = await createOnnxStep(tf, top, { numClasses, classWeights });  // throws UnsupportedLayerError
 * for (const batch of batches) {
 *   const { loss, correct } = await onnx.step({ ...batch, seed: deriveSeed(seed, 'step', epoch, index) }, optimizer);
 * }
 * const val = await onnx.evaluate(valBatch);   // forward-only graph: { loss, correct }
 * await onnx.dispose();
 * ```
 * Each step feeds the batch, the labels, the class weights and every weight of the top to the
 * graph of `train-graph.ts`, which returns the mean loss (`crossEntropy`'s), the argmax hits and
 * the gradients; they are applied with the TF.js optimizer (`applyGradients`), so optimizer
 * state, learning-rate changes, checkpoints and early stopping stay TF.js's. Weight values are
 * read from the TF.js variables once and then only the trainable ones after each update; call
 * `refresh()` after changing weights from outside (`setWeights`, restoring a checkpoint).
 * Dropout masks are drawn with TF.js's `tf.dropout` under `withSeededRandom(batch.seed)`, the
 * same draws `fitModel` makes around `minimize`, so both routes drop the same units.
 */
import os from 'node:os';
import type { LayersModel, LayerVariable } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import * as ort from 'onnxruntime-node';
import type { Tf } from '../backend.js';
import { withSeededRandom } from '../train.js';
import { buildTrainingGraph, type TrainingGraph, type WeightInput } from './train-graph.js';

/** Options of `createOnnxStep`. */
export interface OnnxStepOptions {
  /** Number of classes (width of the model's softmax). */
  numClasses: number;
  /** Per-class loss weights (index = label), as `FitOptions.classWeights`. Default all 1. */
  classWeights?: number[];
  /** onnxruntime intra-op threads. Default `os.availableParallelism()`. */
  threads?: number;
}

/** One batch: features (NHWC, batch first), integer labels, and the step's random seed. */
export interface OnnxBatch {
  x: Float32Array;
  /** Shape of `x`, batch first. */
  shape: number[];
  y: Int32Array;
  /** Seeds the dropout masks (`withSeededRandom`); unseeded `Math.random` when absent. */
  seed?: number;
}

/** Loss and accuracy count of a batch. */
export interface StepResult {
  /** Mean (class-weighted) cross-entropy of the batch, before the update. */
  loss: number;
  /** Examples whose argmax is the label. */
  correct: number;
}

export interface OnnxStep {
  /** The training graph (inputs, outputs, which weights train). */
  readonly graph: TrainingGraph;
  /** Loss, hits and gradients (by TF.js variable name) at the current weights; applies nothing. */
  gradients(batch: OnnxBatch): Promise<StepResult & { gradients: Map<string, Float32Array> }>;
  /** One training step: gradients through onnxruntime, applied with `optimizer`. */
  step(batch: OnnxBatch, optimizer: TfCore.Optimizer): Promise<StepResult>;
  /** Loss and hits in inference mode (a forward-only session, made on first use). */
  evaluate(batch: OnnxBatch): Promise<StepResult>;
  /** Re-reads every weight from the TF.js variables. */
  refresh(): Promise<void>;
  /** Releases the sessions. */
  dispose(): Promise<void>;
}

const sessionOptions = (threads: number): ort.InferenceSession.SessionOptions => ({
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
  // Idle pool threads sleep instead of spinning: between runs TF.js applies the update on the
  // same cores, and on a shared machine spinning made 2 threads slower than 1.
  extra: { session: { intra_op: { allow_spinning: '0' } } },
});

/** The TF.js variable behind a weight input (the name `applyGradients` looks up). */
const variableName = (w: WeightInput) => (w.variable.read() as TfCore.Variable).name;

/** Builds the graph of `top` and its session; throws `UnsupportedLayerError` (see train-graph.ts). */
export async function createOnnxStep(tf: Tf, top: LayersModel, options: OnnxStepOptions): Promise<OnnxStep> {
  const graph = buildTrainingGraph(top, { numClasses: options.numClasses, classWeights: Boolean(options.classWeights) });
  const threads = options.threads ?? os.availableParallelism();
  const session = await ort.InferenceSession.create(graph.bytes, sessionOptions(threads));
  let evaluation: { graph: TrainingGraph; session: ort.InferenceSession } | undefined;
  const classWeights = options.classWeights ? new ort.Tensor('float32', Float32Array.from(options.classWeights), [options.numClasses]) : undefined;
  const values = new Map<LayerVariable, ort.Tensor>();
  const read = async (weights: WeightInput[]) => {
    for (const w of weights) values.set(w.variable, new ort.Tensor('float32', (await w.variable.read().data()) as Float32Array, w.shape));
  };
  await read(graph.weightInputs);

  const feedsOf = (g: TrainingGraph, batch: OnnxBatch, masks: boolean): Record<string, ort.Tensor> => {
    const feeds: Record<string, ort.Tensor> = {
      [g.input.name]: new ort.Tensor('float32', batch.x, batch.shape),
      [g.labels]: new ort.Tensor('int32', batch.y, [batch.y.length]),
    };
    if (g.classWeights) feeds[g.classWeights] = classWeights!;
    for (const w of g.weightInputs) {
      if (!values.has(w.variable)) throw new Error(`no value read for ${w.name}`);
      feeds[w.name] = values.get(w.variable)!;
    }
    if (masks && g.masks.length) {
      const count = batch.shape[0];
      const draw = () => tf.tidy(() => g.masks.map((m) => tf.dropout(tf.ones([count, ...m.shape]), m.rate, undefined, m.seed)));
      const tensors = batch.seed === undefined ? draw() : withSeededRandom(batch.seed, draw);
      g.masks.forEach((m, i) => (feeds[m.name] = new ort.Tensor('float32', tensors[i].dataSync() as Float32Array, [count, ...m.shape])));
      tensors.forEach((t) => t.dispose());
    }
    return feeds;
  };

  const gradients: OnnxStep['gradients'] = async (batch) => {
    const fetches = [graph.outputs.loss, graph.outputs.correct, ...graph.trainable.map((w) => w.gradient!)];
    const out = await session.run(feedsOf(graph, batch, true), fetches);
    const grads = new Map<string, Float32Array>();
    for (const w of graph.trainable) grads.set(variableName(w), out[w.gradient!].data as Float32Array);
    return { loss: (out[graph.outputs.loss].data as Float32Array)[0], correct: (out[graph.outputs.correct].data as Float32Array)[0], gradients: grads };
  };

  return {
    graph,
    gradients,
    async step(batch, optimizer) {
      const result = await gradients(batch);
      const named: TfCore.NamedTensorMap = {};
      for (const w of graph.trainable) {
        const name = variableName(w);
        named[name] = tf.tensor(result.gradients.get(name)!, w.shape);
      }
      optimizer.applyGradients(named);
      Object.values(named).forEach((t) => t.dispose());
      await read(graph.trainable);
      return { loss: result.loss, correct: result.correct };
    },
    async evaluate(batch) {
      if (!evaluation) {
        const g = buildTrainingGraph(top, { numClasses: options.numClasses, classWeights: Boolean(options.classWeights), mode: 'evaluate' });
        evaluation = { graph: g, session: await ort.InferenceSession.create(g.bytes, sessionOptions(threads)) };
      }
      const { graph: g, session: s } = evaluation;
      const out = await s.run(feedsOf(g, batch, false), [g.outputs.loss, g.outputs.correct]);
      return { loss: (out[g.outputs.loss].data as Float32Array)[0], correct: (out[g.outputs.correct].data as Float32Array)[0] };
    },
    refresh: () => read(graph.weightInputs),
    async dispose() {
      await session.release();
      await evaluation?.session.release();
    },
  };
}
