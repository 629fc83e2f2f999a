/**
 * Classification metrics as pure functions on typed arrays (no TF.js), so they can be tested on
 * literal numbers and reused by any stage that has labels and predicted probabilities.
 *
 * Conventions: `labels` are true class indices; `probabilities` is a row-major `count x classes`
 * matrix (one softmax row per record); a confusion matrix's rows are true classes and its
 * columns predicted classes. A ratio whose denominator is zero (precision of a class never
 * predicted, recall of a class absent from the data) is 0, as scikit-learn's `zero_division=0`.
 */

/** Precision, recall and F1 of one class. */
export interface ClassScores {
  /** Of the records predicted as this class, the fraction that are; 0 when none was predicted. */
  precision: number;
  /** Of the records of this class, the fraction predicted as it; 0 when it has none. */
  recall: number;
  /** Harmonic mean of precision and recall; 0 when both are 0. */
  f1: number;
  /** Records of this class in the data. */
  support: number;
}

/** Unweighted means over classes of `ClassScores`. */
export interface MacroScores {
  precision: number;
  recall: number;
  f1: number;
}

/** Everything `scoreClassifier` computes. */
export interface ClassifierScores {
  /** Records scored. */
  count: number;
  /** Fraction of records whose highest-probability class is the true one. */
  accuracy: number;
  /** Mean cross-entropy (natural log) of the true class's probability. */
  loss: number;
  /** The `k` of `topKAccuracy` (the requested k capped at the class count). */
  topK: number;
  /** Fraction of records whose true class is among the `topK` most probable. */
  topKAccuracy: number;
  /** Per class, in label order. */
  perClass: ClassScores[];
  macro: MacroScores;
  /** `confusion[true][predicted]` counts. */
  confusion: number[][];
  /** ROC-AUC of class 1 vs class 0 for two classes; null otherwise or when one class is absent. */
  rocAuc: number | null;
  /** Predicted class (argmax) per record. */
  predicted: Int32Array;
}

/** Smallest probability used in the log of `crossEntropy` (as Keras's epsilon), so log(0) stays finite. */
export const PROBABILITY_EPSILON = 1e-7;

/** Fraction of positions where `predicted` equals `labels`; 0 for no records. */
export function accuracy(labels: ArrayLike<number>, predicted: ArrayLike<number>): number {
  assertSameLength(labels, predicted, 'predicted');
  if (labels.length === 0) return 0;
  let correct = 0;
  for (let i = 0; i < labels.length; i++) if (labels[i] === predicted[i]) correct++;
  return correct / labels.length;
}

/** Index of the largest value in each row of a `count x classes` matrix (first one on ties). */
export function argmaxRows(probabilities: ArrayLike<number>, classCount: number): Int32Array {
  const count = rowCount(probabilities, classCount);
  const out = new Int32Array(count);
  for (let row = 0; row < count; row++) {
    let best = 0;
    for (let c = 1; c < classCount; c++) if (probabilities[row * classCount + c] > probabilities[row * classCount + best]) best = c;
    out[row] = best;
  }
  return out;
}

/** `confusion[true][predicted]` counts, `classCount x classCount`. */
export function confusionMatrix(labels: ArrayLike<number>, predicted: ArrayLike<number>, classCount: number): number[][] {
  assertSameLength(labels, predicted, 'predicted');
  const matrix = Array.from({ length: classCount }, () => new Array<number>(classCount).fill(0));
  for (let i = 0; i < labels.length; i++) {
    assertLabel(labels[i], classCount);
    assertLabel(predicted[i], classCount);
    matrix[labels[i]][predicted[i]]++;
  }
  return matrix;
}

/** Precision, recall, F1 and support of each class, from a confusion matrix. */
export function classScores(confusion: number[][]): ClassScores[] {
  return confusion.map((row, c) => {
    const truePositives = row[c];
    const support = row.reduce((sum, n) => sum + n, 0);
    const predictedAs = confusion.reduce((sum, other) => sum + other[c], 0);
    const precision = ratio(truePositives, predictedAs);
    const recall = ratio(truePositives, support);
    const f1 = precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall);
    return { precision, recall, f1, support };
  });
}

/** Unweighted means of per-class precision, recall and F1 (every class counts the same). */
export function macroAverages(scores: ClassScores[]): MacroScores {
  const mean = (pick: (s: ClassScores) => number) => (scores.length === 0 ? 0 : scores.reduce((sum, s) => sum + pick(s), 0) / scores.length);
  return { precision: mean((s) => s.precision), recall: mean((s) => s.recall), f1: mean((s) => s.f1) };
}

/**
 * Area under the ROC curve for a binary problem, computed from ranks (the Mann-Whitney U
 * statistic): the probability that a random positive scores above a random negative, ties
 * counting one half. `labels` are 1 (positive) or 0; `scores` are the positive class's
 * probabilities. Returns null when either class is absent (the AUC is undefined).
 */
export function rocAuc(labels: ArrayLike<number>, scores: ArrayLike<number>): number | null {
  assertSameLength(labels, scores, 'scores');
  const count = labels.length;
  let positives = 0;
  for (let i = 0; i < count; i++) {
    if (labels[i] !== 0 && labels[i] !== 1) throw new RangeError(`rocAuc needs labels 0 or 1, got ${labels[i]} at ${i}`);
    positives += labels[i];
  }
  const negatives = count - positives;
  if (positives === 0 || negatives === 0) return null;
  const order = Array.from({ length: count }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  // Sum of the positives' ranks (1-based), tied scores sharing their average rank.
  let positiveRankSum = 0;
  for (let start = 0; start < count; ) {
    let end = start + 1;
    while (end < count && scores[order[end]] === scores[order[start]]) end++;
    const averageRank = (start + 1 + end) / 2;
    for (let i = start; i < end; i++) if (labels[order[i]] === 1) positiveRankSum += averageRank;
    start = end;
  }
  const u = positiveRankSum - (positives * (positives + 1)) / 2;
  return u / (positives * negatives);
}

/**
 * Fraction of records whose true class is among the `k` most probable. Ties are resolved in the
 * record's favour: it counts when fewer than `k` classes have a strictly higher probability
 * than the true class. `k` is capped at the class count.
 */
export function topKAccuracy(probabilities: ArrayLike<number>, labels: ArrayLike<number>, classCount: number, k: number): number {
  const count = rowCount(probabilities, classCount);
  assertSameLength(labels, { length: count }, 'probability rows');
  if (!(Number.isInteger(k) && k >= 1)) throw new RangeError(`k must be a positive integer, got ${k}`);
  if (count === 0) return 0;
  let hits = 0;
  for (let row = 0; row < count; row++) {
    assertLabel(labels[row], classCount);
    const truth = probabilities[row * classCount + labels[row]];
    let higher = 0;
    for (let c = 0; c < classCount; c++) if (probabilities[row * classCount + c] > truth) higher++;
    if (higher < k) hits++;
  }
  return hits / count;
}

/**
 * Mean categorical cross-entropy, `-ln p(true class)`, with probabilities clipped to
 * `[epsilon, 1 - epsilon]` as Keras does, so a confident mistake costs about 16.1, not infinity.
 */
export function crossEntropy(probabilities: ArrayLike<number>, labels: ArrayLike<number>, classCount: number, epsilon = PROBABILITY_EPSILON): number {
  const count = rowCount(probabilities, classCount);
  assertSameLength(labels, { length: count }, 'probability rows');
  if (count === 0) return 0;
  let sum = 0;
  for (let row = 0; row < count; row++) {
    assertLabel(labels[row], classCount);
    const p = Math.min(1 - epsilon, Math.max(epsilon, probabilities[row * classCount + labels[row]]));
    sum -= Math.log(p);
  }
  return sum / count;
}

/**
 * All of the above for one set of predictions: accuracy, loss, top-k, per-class and macro
 * scores, the confusion matrix, and ROC-AUC when there are exactly two classes.
 */
export function scoreClassifier(probabilities: ArrayLike<number>, labels: ArrayLike<number>, classCount: number, k: number): ClassifierScores {
  const predicted = argmaxRows(probabilities, classCount);
  const confusion = confusionMatrix(labels, predicted, classCount);
  const perClass = classScores(confusion);
  const topK = Math.min(k, classCount);
  let auc: number | null = null;
  if (classCount === 2) {
    const positive = new Float64Array(predicted.length);
    for (let row = 0; row < positive.length; row++) positive[row] = probabilities[row * 2 + 1];
    auc = rocAuc(labels, positive);
  }
  return {
    count: predicted.length,
    accuracy: accuracy(labels, predicted),
    loss: crossEntropy(probabilities, labels, classCount),
    topK,
    topKAccuracy: topKAccuracy(probabilities, labels, classCount, topK),
    perClass,
    macro: macroAverages(perClass),
    confusion,
    rocAuc: auc,
    predicted,
  };
}

function ratio(numerator: number, denominator: number): number {
  return denominator === 0 ? 0 : numerator / denominator;
}

function rowCount(probabilities: ArrayLike<number>, classCount: number): number {
  if (!(Number.isInteger(classCount) && classCount >= 1)) throw new RangeError(`classCount must be a positive integer, got ${classCount}`);
  if (probabilities.length % classCount !== 0) {
    throw new RangeError(`${probabilities.length} probabilities do not form rows of ${classCount} classes`);
  }
  return probabilities.length / classCount;
}

function assertSameLength(labels: ArrayLike<number>, other: ArrayLike<number>, name: string): void {
  if (labels.length !== other.length) throw new RangeError(`${labels.length} labels but ${other.length} ${name}`);
}

function assertLabel(label: number, classCount: number): void {
  if (!(Number.isInteger(label) && label >= 0 && label < classCount)) throw new RangeError(`label ${label} is not a class index below ${classCount}`);
}
