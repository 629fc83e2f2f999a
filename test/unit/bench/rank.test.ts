/** The statistics of bench/rank.ts: pair tests over images and seeds, Kendall's τ-b, the verdicts. */
import { describe, expect, it } from 'vitest';
import { formatTunedOrder, kendallTauB, pairTest, summarizeTargets, type SeedResult } from '../../../bench/rank-stats.js';
import { formatTable, type RankBenchRow } from '../../../bench/rank.js';

/** A seed result whose model got the first `wrong` of `n` images wrong (or the given indices). */
function result(base: string, seed: number, logme: number, wrong: number | number[], n = 300, probe = 0.8): SeedResult {
  const indices = typeof wrong === 'number' ? Array.from({ length: wrong }, (_, i) => i) : wrong;
  return { target: 'T', base, seed, logme, probe, probeStd: 0.01, headAcc: 0.5, tunedAcc: 1 - indices.length / n, valCount: n, wrong: indices };
}

describe('pairTest', () => {
  it('separates a 20-point gap on 300 images and ties a 1-image one', () => {
    const far = pairTest([result('a', 1, 0, 10), result('a', 2, 0, 12)], [result('b', 1, 0, 70), result('b', 2, 0, 72)]);
    expect(far.diff).toBeCloseTo(0.2, 10);
    expect(far.tied).toBe(false);
    expect(far.z).toBeGreaterThan(5);
    const near = pairTest([result('a', 1, 0, 30)], [result('b', 1, 0, 31)]);
    expect(near.diff).toBeCloseTo(1 / 300, 10);
    expect(near.tied).toBe(true);
  });

  it('computes the standard error from the images and the seeds', () => {
    // Seed 1: a right on all, b wrong on images 0-29 (Δ = 0.1); seed 2: both wrong on 0-29 (Δ = 0).
    const t = pairTest([result('a', 1, 0, 0, 300), result('a', 2, 0, 30, 300)], [result('b', 1, 0, 30, 300), result('b', 2, 0, 30, 300)]);
    // d_i = 0.5 on 30 images, 0 elsewhere: var = (30·0.25 − 300·0.05²)/299; seeds: var(0.1, 0) = 0.005.
    const imageVar = (30 * 0.25 - 300 * 0.05 ** 2) / 299;
    expect(t.diff).toBeCloseTo(0.05, 12);
    expect(t.se).toBeCloseTo(Math.sqrt(imageVar / 300 + 0.005 / 2), 12);
  });

  it('refuses bases scored on different validation splits', () => {
    expect(() => pairTest([result('a', 1, 0, 1, 300)], [result('b', 1, 0, 1, 200)])).toThrow(/different validation splits/);
  });
});

describe('kendallTauB', () => {
  it('is 1 for the same order, -1 for the reverse, and counts forced ties', () => {
    expect(kendallTauB([3, 2, 1], [30, 20, 10])).toBe(1);
    expect(kendallTauB([1, 2, 3], [30, 20, 10])).toBe(-1);
    // One discordant pair of three: (2 − 1)/3.
    expect(kendallTauB([3, 1, 2], [30, 20, 10])).toBeCloseTo(1 / 3, 12);
    // The discordant pair (1, 2) counted as a tie of y: (2 − 0)/√(3·2).
    expect(kendallTauB([3, 1, 2], [30, 20, 10], (i, j) => i === 1 && j === 2)).toBeCloseTo(2 / Math.sqrt(6), 12);
  });
});

describe('summarizeTargets', () => {
  // good ≫ mid ≈ close (1 image apart); LogME swaps mid and close.
  const rows = [1, 2, 3].flatMap((seed) => [result('good', seed, -0.1, 10 + seed), result('mid', seed, -0.5, 60 + seed), result('close', seed, -0.4, 61 + seed)]);
  const [summary] = summarizeTargets(rows);

  it('orders by mean fine-tuned accuracy and marks the tie', () => {
    expect(summary.tunedOrder).toEqual(['good', 'mid', 'close']);
    expect(summary.bases.find((b) => b.base === 'good')!.tunedStd).toBeCloseTo(1 / 300, 12);
    expect(summary.pairs.find((p) => p.a === 'mid' && p.b === 'close')!.tied).toBe(true);
    expect(summary.pairs.find((p) => p.a === 'good' && p.b === 'mid')!.tied).toBe(false);
    expect(formatTunedOrder(summary)).toBe('good > mid ≈ close');
  });

  it('says the LogME order matches up to ties, not strictly', () => {
    expect(summary.logme.order).toEqual(['good', 'close', 'mid']);
    expect(summary.logme.strict).toBe(false);
    expect(summary.logme.upToTies).toBe(true);
    expect(summary.logme.tau).toBeCloseTo(1 / 3, 12);
    expect(summary.logme.tauTies).toBeCloseTo(2 / Math.sqrt(6), 12);
  });

  it("judges each seed's own scores too", () => {
    // At seed 2 LogME puts mid above good.
    const wobbly = rows.map((r) => (r.base === 'mid' && r.seed === 2 ? { ...r, logme: 0 } : r));
    const [s] = summarizeTargets(wobbly);
    expect(s.logmeBySeed.map((a) => a.upToTies)).toEqual([true, false, true]);
    expect(s.probeBySeed).toHaveLength(3);
  });

  it('fails a score that swaps a pair the fine-tunes separate', () => {
    const swapped = rows.map((r) => (r.base === 'good' ? { ...r, logme: -0.9 } : r));
    expect(summarizeTargets(swapped)[0].logme.upToTies).toBe(false);
  });

  it('calls a match vacuous when every pair is tied', () => {
    const close = [1, 2].flatMap((seed) => [result('x', seed, -0.2, 30 + seed), result('y', seed, -0.1, 31 + seed)]);
    const [tiedOnly] = summarizeTargets(close);
    expect(tiedOnly.logme.separated).toBe(0);
    expect(tiedOnly.logme.upToTies).toBe(true);
    const table = formatTable(close.map((r) => ({ ...r, featureSeconds: 0.1, params: 1, tuneSeconds: 1, rankSeconds: 1 })), 'cpu');
    expect(table).toContain('differs from the means, but every pair is tied: nothing to predict');
    expect(table).toContain('LogME matches the fine-tuned order on 0 of 1 targets strictly, 0 up to ties (not counting 1 target(s) where every pair is tied)');
  });

  it('renders the table with the counts of matching targets', () => {
    const benchRows: RankBenchRow[] = rows.map((r) => ({ ...r, featureSeconds: 0.1, params: 1000, tuneSeconds: 2, rankSeconds: 0.5 }));
    const table = formatTable(benchRows, 'cpu');
    expect(table).toContain('| T | good | -0.100 | 0.800 | 1,000 | 0.500 | **0.960** ± 0.003 | 0.963 / 0.960 / 0.957 | 1 | 1 | 1 |');
    expect(table).toContain('fine-tuned good > mid ≈ close; LogME good > close > mid: matches up to ties (orders 2 of the 2 separated pairs right; τ-b 0.33, 0.82 with ties; with one seed\'s scores: up to ties in 3 of 3 seeds)');
    expect(table).toContain('LogME matches the fine-tuned order on 0 of 1 targets strictly, 1 up to ties;');
  });
});
