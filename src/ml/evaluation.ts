/**
 * Loss and accuracy of a model on a batch source, in inference mode: through TF.js
 * (`evaluateSource`, the reference every training stage reports) or through a stepper's
 * inference graph (`evaluateStepper`, fitModel's per-epoch validation on onnxruntime).
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { AbortedError } from '../runtime/errors.js';
import type { Tf } from './backend.js';
import { allLayers } from './surgery.js';
import type { BatchSource, TrainBatch, TrainStepper } from './train.js';

/** The model input(s) of a batch as tensors (call inside `tf.tidy`). */
export function batchInputs(tf: Tf, batch: TrainBatch): TfCore.Tensor | TfCore.Tensor[] {
  const first = tf.tensor(batch.x, batch.shape);
  return batch.more?.length ? [first, ...batch.more.map((m) => tf.tensor(m.x, m.shape))] : first;
}

/**
 * Mean (optionally class-weighted) cross-entropy of softmax probabilities against integer labels.
 */
export function crossEntropy(tf: Tf, probs: TfCore.Tensor, labels: TfCore.Tensor1D, numClasses: number, classWeights?: TfCore.Tensor1D): TfCore.Scalar {
  return tf.tidy(() => {
    const oneHot = tf.cast(tf.oneHot(labels, numClasses), 'float32');
    // An epsilon rather than clipping: clipping can turn NaN probabilities into finite numbers
    // on some backends, which would hide a diverged model from the NaN guard.
    const perExample = tf.neg(tf.sum(tf.mul(oneHot, tf.log(tf.add(probs, 1e-7))), -1));
    if (!classWeights) return tf.mean(perExample) as TfCore.Scalar;
    // Keras semantics: weighted per-example losses averaged over the batch (not over the
    // weights, which would cancel them out in a single-class batch).
    return tf.mean(tf.mul(perExample, tf.gather(classWeights, labels))) as TfCore.Scalar;
  });
}

/** Options of `evaluateSource`. */
export interface EvaluateOptions {
  /** Checked before every batch; an abort throws `AbortedError`. */
  signal?: AbortSignal;
}

/** What an evaluation of a model read besides the source: the backend, every weight's data, the normalization stand-ins. */
interface EvaluationInputs {
  source: BatchSource;
  numClasses: number;
  /** The backend's name, then the data id of every weight, then each normalization layer's gamma and beta. */
  state: unknown[];
}

/**
 * The last `evaluateSource` result per model and what it was computed from. TF.js never changes
 * a tensor's data in place: an optimizer step, `setWeights` or a restored checkpoint gives a
 * variable a new data id, and `supplyNormalizationConstants` swaps the gamma/beta objects. So
 * the same source, classes, backend and ids mean the same numbers, and the second evaluation
 * (the stage's final score of the weights fitModel's last epoch just validated on the TF.js
 * route) is the first one's result rather than another pass over the split.
 */
const lastEvaluation = new WeakMap<LayersModel, { inputs: EvaluationInputs; result: { loss: number; acc: number } }>();

function evaluationInputs(tf: Tf, model: LayersModel, source: BatchSource, numClasses: number): EvaluationInputs {
  const state: unknown[] = [tf.getBackend()];
  for (const weight of model.weights) state.push((weight as unknown as { read(): TfCore.Variable }).read().dataId);
  for (const layer of allLayers(model)) {
    const parts = layer as unknown as { gamma?: unknown; beta?: unknown };
    if ('gamma' in parts || 'beta' in parts) state.push(parts.gamma ?? null, parts.beta ?? null);
  }
  return { source, numClasses, state };
}

const sameInputs = (a: EvaluationInputs, b: EvaluationInputs) => a.source === b.source && a.numClasses === b.numClasses && a.state.length === b.state.length && a.state.every((x, i) => x === b.state[i]);

/**
 * Loss and accuracy of the model on a source, in inference mode. Throws `AbortedError` on an
 * abort. An evaluation of the same source at the same weights as the model's last one returns
 * that result again (see `lastEvaluation`).
 */
export async function evaluateSource(tf: Tf, model: LayersModel, source: BatchSource, numClasses: number, options: EvaluateOptions = {}): Promise<{ loss: number; acc: number }> {
  throwIfAborted(options.signal);
  const inputs = evaluationInputs(tf, model, source, numClasses);
  const last = lastEvaluation.get(model);
  if (last && sameInputs(last.inputs, inputs)) return { ...last.result };
  const result = await passOver(tf, model, source, numClasses, options);
  lastEvaluation.set(model, { inputs, result: { ...result } });
  return result;
}

/** Sums what `score` gives per batch (the batch's summed loss and its hits) over a source, checking the signal before every batch. */
async function overBatches(source: BatchSource, signal: AbortSignal | undefined, score: (batch: TrainBatch) => Promise<{ loss: number; correct: number }>): Promise<{ loss: number; acc: number }> {
  let lossSum = 0;
  let correct = 0;
  let count = 0;
  for await (const batch of source.batches(0, { shuffle: false })) {
    throwIfAborted(signal);
    const result = await score(batch);
    lossSum += result.loss;
    correct += result.correct;
    count += batch.count;
  }
  return { loss: count ? lossSum / count : NaN, acc: count ? correct / count : NaN };
}

function passOver(tf: Tf, model: LayersModel, source: BatchSource, numClasses: number, options: EvaluateOptions): Promise<{ loss: number; acc: number }> {
  return overBatches(source, options.signal, async (batch) => {
    const [loss, hits] = tf.tidy(() => {
      const x = batchInputs(tf, batch);
      const y = tf.tensor1d(batch.y, 'int32');
      const probs = model.predict(x) as TfCore.Tensor;
      const l = tf.mul(crossEntropy(tf, probs, y, numClasses), batch.count);
      const h = tf.sum(tf.cast(tf.equal(tf.cast(tf.argMax(probs, -1), 'int32'), y), 'int32'));
      return [l, h];
    });
    try {
      return { loss: (await loss.data())[0], correct: (await hits.data())[0] };
    } finally {
      loss.dispose();
      hits.dispose();
    }
  });
}

/** Throws `AbortedError` once `signal` is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError();
}

/** Loss and accuracy over a source through a stepper's inference graph. */
export function evaluateStepper(stepper: TrainStepper, source: BatchSource, signal?: AbortSignal): Promise<{ loss: number; acc: number }> {
  return overBatches(source, signal, async (batch) => {
    const result = await stepper.evaluate(batch);
    return { loss: result.loss * batch.count, correct: result.correct };
  });
}
