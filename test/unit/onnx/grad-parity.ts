/**
 * Gradient parity helpers: the same batch through TF.js autodiff (`tf.variableGrads` of
 * `crossEntropy`, training mode) and through the ONNX training graph.
 */
import type { LayersModel, LayerVariable } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { Tf } from '../../../src/ml/backend.js';
import { crossEntropy, withSeededRandom } from '../../../src/ml/train.js';
import { createOnnxStep, type OnnxBatch } from '../../../src/ml/onnx/trainer.js';

/** A deterministic pseudo-random batch: values in [-scale, scale), labels cycling. */
export function randomBatch(shape: number[], numClasses: number, seed = 1, scale = 1): OnnxBatch {
  let state = seed * 2654435761;
  const next = () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
  const x = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (next() * 2 - 1) * scale);
  const y = Int32Array.from({ length: shape[0] }, (_, i) => (i * 7 + seed) % numClasses);
  return { x, shape, y, seed };
}

/** Largest absolute difference over the largest absolute reference value. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let diff = 0;
  let size = 0;
  for (let i = 0; i < expected.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    size = Math.max(size, Math.abs(expected[i]));
  }
  return diff / Math.max(size, 1e-30);
}

/** Loss and gradients (by variable name) from TF.js autodiff. */
export function tfGradients(tf: Tf, model: LayersModel, batch: OnnxBatch, numClasses: number, classWeights?: number[]): { loss: number; gradients: Map<string, Float32Array> } {
  const vars = model.trainableWeights.map((w) => (w as LayerVariable).read() as TfCore.Variable);
  const run = () =>
    tf.tidy(() => {
      const x = tf.tensor(batch.x, batch.shape);
      const y = tf.tensor1d(batch.y, 'int32');
      const weights = classWeights ? tf.tensor1d(classWeights) : undefined;
      const { value, grads } = tf.variableGrads(() => crossEntropy(tf, model.apply(x, { training: true }) as TfCore.Tensor, y, numClasses, weights), vars);
      return { loss: value.dataSync()[0], gradients: new Map(Object.entries(grads).map(([k, g]) => [k, g.dataSync() as Float32Array])) };
    });
  return batch.seed === undefined ? run() : withSeededRandom(batch.seed, run);
}

/** Worst relative gradient error of the ONNX route against TF.js, per variable, and the losses. */
export async function compareGradients(tf: Tf, model: LayersModel, batch: OnnxBatch, numClasses: number, classWeights?: number[]) {
  const reference = tfGradients(tf, model, batch, numClasses, classWeights);
  const step = await createOnnxStep(tf, model, { numClasses, classWeights, threads: 1 });
  try {
    const onnx = await step.gradients(batch);
    const errors: Record<string, number> = {};
    for (const [name, expected] of reference.gradients) {
      const actual = onnx.gradients.get(name);
      errors[name] = actual ? relativeError(actual, expected) : Infinity;
    }
    return { errors, worst: Math.max(...Object.values(errors)), loss: onnx.loss, tfLoss: reference.loss, correct: onnx.correct, names: [...reference.gradients.keys()] };
  } finally {
    await step.dispose();
  }
}
