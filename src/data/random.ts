/**
 * Seeded randomness shared by every stage. All randomness in a pipeline derives from its seed,
 * so runs are reproducible; these helpers never touch `Math.random`.
 */

/** A seeded pseudo-random source. */
export interface Random {
  /** A float uniform in [0, 1). */
  next(): number;
  /** An integer uniform in [0, n) (n ≥ 1). */
  int(n: number): number;
  /** A float uniform in [low, high). */
  uniform(low: number, high: number): number;
  /** Shuffles `items` in place (Fisher–Yates) and returns it. */
  shuffle<T extends { length: number; [index: number]: unknown }>(items: T): T;
}

/**
 * The mulberry32 generator: 32 bits of state, fast, good enough for shuffling and augmentation
 * (not for cryptography). The same seed always gives the same sequence.
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Builds a `Random` on mulberry32 from a 32-bit seed. */
export function createRandom(seed: number): Random {
  const next = mulberry32(seed);
  return {
    next,
    int: (n) => Math.floor(next() * n),
    uniform: (low, high) => low + (high - low) * next(),
    shuffle(items) {
      for (let i = items.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        const swap = items[i];
        items[i] = items[j];
        items[j] = swap;
      }
      return items;
    },
  };
}

/**
 * Mixes a seed with further numbers or strings into a new 32-bit seed (FNV-1a over the parts,
 * then a murmur3 finalizer), so independent streams (per epoch, per record, per class) never
 * overlap by accident: `deriveSeed(seed, 'epoch', 3)`.
 */
export function deriveSeed(seed: number, ...parts: (number | string)[]): number {
  let hash = 0x811c9dc5 ^ (seed >>> 0);
  const mix = (value: number) => {
    hash ^= value & 0xff;
    hash = Math.imul(hash, 0x01000193);
  };
  for (const part of parts) {
    if (typeof part === 'number') {
      const value = Number.isInteger(part) ? part >>> 0 : Math.round(part * 1e6) >>> 0;
      for (let shift = 0; shift < 32; shift += 8) mix(value >>> shift);
      mix(0x1f);
    } else {
      for (let i = 0; i < part.length; i++) {
        const code = part.charCodeAt(i);
        mix(code);
        mix(code >>> 8);
      }
      mix(0x1e);
    }
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}
