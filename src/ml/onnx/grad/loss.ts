/**
 * The loss of `src/ml/train.ts` `crossEntropy`, written in ONNX with its TF.js gradient.
 *
 * Forward: `loss = mean_i(w_i · −Σ_c onehot_ic · log(p_ic + 1e-7))`, `w_i = classWeights[y_i]`
 * (1 without class weights). Backward, as TF.js's autodiff of that expression gives it:
 * `dL/dp_ic = −w_i · onehot_ic / (N · (p_ic + 1e-7))`; the softmax that made `p` then applies
 * its own gradient. Through a softmax this equals `(p − onehot)·w/N · p_y/(p_y + 1e-7)`: the
 * epsilon scales the textbook gradient by `p_y/(p_y+1e-7)`, which is below 1 by less than
 * 1e-6 unless the true class has probability under 0.1, so we keep TF.js's exact form rather
 * than the shortcut.
 */
import { DataType } from '../proto.js';
import type { OnnxGraph } from '../graph.js';
import { reduceSum } from './context.js';

/** Names of the loss outputs. */
export interface LossTensors {
  /** Scalar mean loss. */
  loss: string;
  /** Scalar float: examples whose argmax is the label. */
  correct: string;
  /** Gradient of the loss with respect to the probabilities, `[N, C]`. */
  dProbs: string;
}

/** Emits the loss, the accuracy count and dL/dprobs. `labels` is int32 `[N]`. */
export function emitCrossEntropy(g: OnnxGraph, probs: string, labels: string, numClasses: number, classWeights?: string): LossTensors {
  const classes = g.initializer('class_ids', Int32Array.from({ length: numClasses }, (_, i) => i), [1, numClasses]);
  const oneHot = g.op('Cast', [g.op('Equal', [g.op('Unsqueeze', [labels, g.int64s([1])]), classes])], { to: DataType.FLOAT }, 'one_hot');
  const shifted = g.op('Add', [probs, g.floats([1e-7])], {}, 'probs_eps');
  const perExample0 = g.op('Neg', [reduceSum(g, g.op('Mul', [oneHot, g.op('Log', [shifted])]), [1])], {}, 'per_example');
  const weights = classWeights ? g.op('Gather', [classWeights, labels], { axis: 0 }, 'example_weights') : null;
  const perExample = weights ? g.op('Mul', [perExample0, weights], {}, 'weighted') : perExample0;
  const loss = g.op('ReduceMean', [perExample], { keepdims: 0 }, 'mean_loss');

  const predicted = g.op('ArgMax', [probs], { axis: 1, keepdims: 0 }, 'predicted');
  const hits = g.op('Equal', [predicted, g.op('Cast', [labels], { to: DataType.INT64 })]);
  const correct = reduceSum(g, g.op('Cast', [hits], { to: DataType.FLOAT }), [0], false, 'correct_count');

  const count = g.op('Cast', [g.op('Shape', [labels])], { to: DataType.FLOAT }, 'batch_size');
  const share = weights ? g.op('Div', [weights, count]) : g.op('Reciprocal', [count]);
  const coefficient = g.op('Unsqueeze', [share, g.int64s([1])], {}, 'loss_scale');
  const dProbs = g.op('Neg', [g.op('Div', [g.op('Mul', [oneHot, coefficient]), shifted])], {}, 'd_probs');
  return { loss, correct, dProbs };
}
