import { describe, expect, it } from 'vitest';
import { createRandom, deriveSeed, mulberry32 } from '../../../src/data/random.js';

describe('random', () => {
  it('mulberry32 is deterministic per seed and in [0, 1)', () => {
    const a = mulberry32(7);
    const b = mulberry32(7);
    const values = Array.from({ length: 1000 }, () => a());
    expect(values).toEqual(Array.from({ length: 1000 }, () => b()));
    expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...values)).toBeLessThan(1);
    expect(mulberry32(8)()).not.toBe(values[0]);
    // Known first output of mulberry32(0): pins the algorithm so stored seeds stay meaningful.
    expect(mulberry32(0)()).toBeCloseTo(0.26642920868471265, 12);
  });

  it('is roughly uniform', () => {
    const random = createRandom(123);
    const buckets = new Array(10).fill(0);
    for (let i = 0; i < 10_000; i++) buckets[random.int(10)]++;
    for (const count of buckets) expect(Math.abs(count - 1000)).toBeLessThan(150);
  });

  it('shuffle is a seeded permutation', () => {
    const shuffled = createRandom(1).shuffle(Array.from({ length: 50 }, (_, i) => i));
    expect([...shuffled].sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(createRandom(1).shuffle(Array.from({ length: 50 }, (_, i) => i))).toEqual(shuffled);
    expect(createRandom(2).shuffle(Array.from({ length: 50 }, (_, i) => i))).not.toEqual(shuffled);
  });

  it('deriveSeed separates streams', () => {
    expect(deriveSeed(42, 'epoch', 1)).toBe(deriveSeed(42, 'epoch', 1));
    const seeds = new Set([deriveSeed(42, 'epoch', 1), deriveSeed(42, 'epoch', 2), deriveSeed(43, 'epoch', 1), deriveSeed(42, 'shuffle', 1), deriveSeed(42, 'epoch', 1, 0)]);
    expect(seeds.size).toBe(5);
  });
});
