import { describe, expect, it } from 'vitest';
import {
  accuracy,
  argmaxRows,
  classScores,
  confusionMatrix,
  crossEntropy,
  macroAverages,
  rocAuc,
  scoreClassifier,
  topKAccuracy,
} from '../../../src/ml/metrics.js';

// Six records, three classes; worked by hand:
// confusion rows (true) x columns (predicted): [[1,1,0],[0,2,0],[1,0,1]]
const labels = new Int32Array([0, 0, 1, 1, 2, 2]);
const predicted = new Int32Array([0, 1, 1, 1, 2, 0]);

describe('metrics', () => {
  it('accuracy counts exact matches', () => {
    expect(accuracy(labels, predicted)).toBeCloseTo(4 / 6, 12);
    expect(accuracy([], [])).toBe(0);
    expect(() => accuracy([0, 1], [0])).toThrow(/2 labels but 1/);
  });

  it('confusion matrix has true classes as rows', () => {
    expect(confusionMatrix(labels, predicted, 3)).toEqual([
      [1, 1, 0],
      [0, 2, 0],
      [1, 0, 1],
    ]);
    expect(() => confusionMatrix([3], [0], 3)).toThrow(/label 3/);
  });

  it('per-class precision/recall/F1 and macro averages match the hand computation', () => {
    const scores = classScores(confusionMatrix(labels, predicted, 3));
    const expected = [
      { precision: 1 / 2, recall: 1 / 2, f1: 1 / 2, support: 2 },
      { precision: 2 / 3, recall: 1, f1: 0.8, support: 2 },
      { precision: 1, recall: 1 / 2, f1: 2 / 3, support: 2 },
    ];
    scores.forEach((s, c) => {
      expect(s.precision).toBeCloseTo(expected[c].precision, 12);
      expect(s.recall).toBeCloseTo(expected[c].recall, 12);
      expect(s.f1).toBeCloseTo(expected[c].f1, 12);
      expect(s.support).toBe(expected[c].support);
    });
    const macro = macroAverages(scores);
    expect(macro.precision).toBeCloseTo((1 / 2 + 2 / 3 + 1) / 3, 12);
    expect(macro.recall).toBeCloseTo((1 / 2 + 1 + 1 / 2) / 3, 12);
    expect(macro.f1).toBeCloseTo((1 / 2 + 0.8 + 2 / 3) / 3, 12);
  });

  it('a class never predicted and a class never present score 0, not NaN', () => {
    const scores = classScores(confusionMatrix([0, 0, 1], [0, 0, 0], 3));
    expect(scores[1]).toEqual({ precision: 0, recall: 0, f1: 0, support: 1 });
    expect(scores[2]).toEqual({ precision: 0, recall: 0, f1: 0, support: 0 });
    expect(scores[0].precision).toBeCloseTo(2 / 3, 12);
    expect(scores[0].recall).toBe(1);
  });

  it('ROC-AUC is rank based and counts ties as one half', () => {
    // The textbook example (scikit-learn's roc_auc_score docs): 0.75.
    expect(rocAuc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])).toBeCloseTo(0.75, 12);
    // Pairs (positive, negative): (.5,.5)=1/2, (.5,.2)=1, (.9,.5)=1, (.9,.2)=1 -> 3.5/4.
    expect(rocAuc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])).toBeCloseTo(0.875, 12);
    expect(rocAuc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3])).toBe(0.5);
    expect(rocAuc([0, 0, 1], [0.1, 0.2, 0.9])).toBe(1);
    expect(rocAuc([1, 1, 0], [0.1, 0.2, 0.9])).toBe(0);
    expect(rocAuc([1, 1], [0.1, 0.2])).toBeNull();
    expect(() => rocAuc([0, 2], [0.1, 0.2])).toThrow(/0 or 1/);
  });

  it('top-k accuracy counts ties in the record\'s favour', () => {
    const probabilities = new Float32Array([0.5, 0.3, 0.2, 0.1, 0.6, 0.3, 0.2, 0.2, 0.6]);
    const truth = [2, 2, 1];
    expect(topKAccuracy(probabilities, truth, 3, 1)).toBe(0);
    expect(topKAccuracy(probabilities, truth, 3, 2)).toBeCloseTo(2 / 3, 12);
    expect(topKAccuracy(probabilities, truth, 3, 3)).toBe(1);
    expect(() => topKAccuracy(probabilities, truth, 3, 0)).toThrow(/positive integer/);
  });

  it('cross-entropy is the mean -ln p(true) with clipping', () => {
    expect(crossEntropy([0.5, 0.5, 0.2, 0.8], [0, 1], 2)).toBeCloseTo((Math.log(2) - Math.log(0.8)) / 2, 6);
    expect(crossEntropy([1, 0], [1], 2)).toBeCloseTo(-Math.log(1e-7), 6);
    expect(() => crossEntropy([0.5, 0.5, 0.2], [0], 2)).toThrow(/rows of 2/);
  });

  it('argmax takes the first of equal maxima', () => {
    expect(Array.from(argmaxRows([0.2, 0.4, 0.4, 0.9, 0.05, 0.05], 3))).toEqual([1, 0]);
  });

  it('scoreClassifier combines everything and adds ROC-AUC only for two classes', () => {
    const two = scoreClassifier(new Float32Array([0.9, 0.1, 0.6, 0.4, 0.65, 0.35, 0.2, 0.8]), [0, 0, 1, 1], 2, 5);
    expect(two.accuracy).toBe(0.75);
    expect(two.topK).toBe(2);
    expect(two.topKAccuracy).toBe(1);
    // Positive-class scores .1,.4 (negatives) vs .35,.8 (positives): the textbook 0.75.
    expect(two.rocAuc).toBeCloseTo(0.75, 6);
    expect(two.confusion).toEqual([
      [2, 0],
      [1, 1],
    ]);
    expect(two.loss).toBeCloseTo(-(Math.log(0.9) + Math.log(0.6) + Math.log(0.35) + Math.log(0.8)) / 4, 5);
    const three = scoreClassifier(new Float32Array([0.5, 0.3, 0.2, 0.1, 0.6, 0.3, 0.2, 0.2, 0.6]), [0, 1, 2], 3, 5);
    expect(three.rocAuc).toBeNull();
    expect(three.accuracy).toBe(1);
    expect(Array.from(three.predicted)).toEqual([0, 1, 2]);
    expect(three.macro.f1).toBe(1);
  });
});
