/**
 * A cross-validated linear probe on frozen features: a ridge classifier (one-vs-all least
 * squares on ±1 targets with an L2 penalty, the decision is the largest score — scikit-learn's
 * `RidgeClassifier`) fitted in closed form on each training fold, scored on the held-out fold.
 * Features are standardized with the training fold's mean and standard deviation. Folds are
 * stratified and seeded, so the same seed gives the same accuracy, bit for bit.
 */
import { createRandom } from '../data/random.js';
import { choleskySolve, gramCols, gramRows } from './linalg.js';

/** Options of `linearProbe`. */
export interface ProbeOptions {
  /** Folds (≥ 2). Default 5. */
  folds?: number;
  /** L2 penalty on standardized features. Default 1. */
  ridge?: number;
  /** Seed of the fold assignment. Default 0. */
  seed?: number;
}

/** What `linearProbe` returns. */
export interface ProbeResult {
  /** Mean held-out accuracy over the folds. */
  accuracy: number;
  /** Standard deviation of the folds' accuracies (population). */
  std: number;
  /** Held-out accuracy of each fold. */
  folds: number[];
}

/**
 * The stratified fold (0 … folds − 1) of each sample: each class's samples, in a seeded random
 * order, are dealt round-robin, so every fold gets ⌊count/folds⌋ or ⌈count/folds⌉ of each class.
 */
export function assignFolds(labels: ArrayLike<number>, folds: number, seed: number): Int32Array {
  const random = createRandom(seed);
  const byClass = new Map<number, number[]>();
  for (let i = 0; i < labels.length; i++) {
    const list = byClass.get(labels[i]) ?? [];
    list.push(i);
    byClass.set(labels[i], list);
  }
  const fold = new Int32Array(labels.length);
  let next = 0;
  for (const label of [...byClass.keys()].sort((a, b) => a - b)) {
    for (const index of random.shuffle(byClass.get(label)!)) fold[index] = next++ % folds;
  }
  return fold;
}

/** k-fold cross-validated accuracy of a ridge classifier on `features` (row-major n×d). */
export function linearProbe(features: ArrayLike<number>, n: number, d: number, labels: ArrayLike<number>, numClasses: number, options: ProbeOptions = {}): ProbeResult {
  const folds = options.folds ?? 5;
  const ridge = options.ridge ?? 1;
  if (!(Number.isInteger(folds) && folds >= 2 && folds <= n)) throw new Error(`linearProbe needs 2 ≤ folds ≤ samples, got ${folds} folds for ${n} samples`);
  const fold = assignFolds(labels, folds, options.seed ?? 0);
  const accuracies: number[] = [];
  for (let k = 0; k < folds; k++) {
    const train: number[] = [];
    const test: number[] = [];
    for (let i = 0; i < n; i++) (fold[i] === k ? test : train).push(i);
    accuracies.push(fitAndScore(features, d, labels, numClasses, train, test, ridge));
  }
  const accuracy = accuracies.reduce((s, a) => s + a, 0) / folds;
  const std = Math.sqrt(accuracies.reduce((s, a) => s + (a - accuracy) ** 2, 0) / folds);
  return { accuracy, std, folds: accuracies };
}

/** Fits on `train` and returns the accuracy on `test`. */
function fitAndScore(features: ArrayLike<number>, d: number, labels: ArrayLike<number>, numClasses: number, train: number[], test: number[], ridge: number): number {
  const nt = train.length;
  const mean = new Float64Array(d);
  const scale = new Float64Array(d);
  for (const i of train) for (let j = 0; j < d; j++) mean[j] += features[i * d + j];
  for (let j = 0; j < d; j++) mean[j] /= nt;
  for (const i of train) for (let j = 0; j < d; j++) scale[j] += (features[i * d + j] - mean[j]) ** 2;
  // A constant feature (a dead unit) is left at 0 rather than divided by 0.
  for (let j = 0; j < d; j++) scale[j] = scale[j] > 0 ? 1 / Math.sqrt(scale[j] / nt) : 0;
  const standardize = (rows: number[]) => {
    const x = new Float64Array(rows.length * d);
    rows.forEach((i, r) => {
      for (let j = 0; j < d; j++) x[r * d + j] = (features[i * d + j] - mean[j]) * scale[j];
    });
    return x;
  };
  const x = standardize(train);
  // ±1 targets, centred: the intercept is their mean (the features are centred).
  const y = new Float64Array(nt * numClasses);
  const intercept = new Float64Array(numClasses);
  train.forEach((i, r) => {
    for (let c = 0; c < numClasses; c++) y[r * numClasses + c] = labels[i] === c ? 1 : -1;
  });
  for (let r = 0; r < nt; r++) for (let c = 0; c < numClasses; c++) intercept[c] += y[r * numClasses + c] / nt;
  for (let r = 0; r < nt; r++) for (let c = 0; c < numClasses; c++) y[r * numClasses + c] -= intercept[c];
  // W = (XᵀX + λI)⁻¹ XᵀY = Xᵀ (XXᵀ + λI)⁻¹ Y: solve the smaller system.
  const weights = new Float64Array(d * numClasses);
  if (nt <= d) {
    const k = gramRows(x, nt, d);
    for (let i = 0; i < nt; i++) k[i * nt + i] += ridge;
    const dual = choleskySolve(k, nt, y, numClasses);
    for (let r = 0; r < nt; r++) for (let j = 0; j < d; j++) for (let c = 0; c < numClasses; c++) weights[j * numClasses + c] += x[r * d + j] * dual[r * numClasses + c];
  } else {
    const h = gramCols(x, nt, d);
    for (let j = 0; j < d; j++) h[j * d + j] += ridge;
    const xty = new Float64Array(d * numClasses);
    for (let r = 0; r < nt; r++) for (let j = 0; j < d; j++) for (let c = 0; c < numClasses; c++) xty[j * numClasses + c] += x[r * d + j] * y[r * numClasses + c];
    weights.set(choleskySolve(h, d, xty, numClasses));
  }
  const xs = standardize(test);
  let correct = 0;
  test.forEach((i, r) => {
    let best = -1;
    let bestScore = -Infinity;
    for (let c = 0; c < numClasses; c++) {
      let score = intercept[c];
      for (let j = 0; j < d; j++) score += xs[r * d + j] * weights[j * numClasses + c];
      if (score > bestScore) {
        bestScore = score;
        best = c;
      }
    }
    if (best === labels[i]) correct++;
  });
  return correct / test.length;
}
