import { describe, expect, it } from 'vitest';
import { applyAugmentation, augmentRecord, drawAugmentation } from '../../../src/data/augment.js';
import { createRandom } from '../../../src/data/random.js';
import { NO_AUGMENT, resolveNormalization } from '../../../src/data/spec.js';

const unit = resolveNormalization('unit', 1);
const shape = [3, 4, 1] as const;
/** A 3x4 grayscale ramp: pixel (y, x) = 10 * (4y + x). */
const ramp = Uint8Array.from({ length: 12 }, (_, i) => i * 10);
const identity = { flip: false, scale: 1, offsetX: 0.5, offsetY: 0.5, angle: 0, brightness: 1, contrast: 1 };
const run = (draw: typeof identity | null) => {
  const out = new Float32Array(12);
  applyAugmentation(ramp, shape, draw, unit, out);
  return Array.from(out, (v) => Math.round(v * 255 * 1000) / 1000);
};

describe('augmentation', () => {
  it('identity draws leave the image unchanged', () => {
    expect(run(null)).toEqual(Array.from(ramp));
    expect(run(identity)).toEqual(Array.from(ramp));
  });

  it('flip mirrors rows exactly', () => {
    expect(run({ ...identity, flip: true })).toEqual([30, 20, 10, 0, 70, 60, 50, 40, 110, 100, 90, 80]);
  });

  it('a flip of an RGB image is the plain normalization mirrored, value for value (the fast path)', () => {
    const rgb = Uint8Array.from({ length: 5 * 7 * 3 }, (_, i) => (i * 37) % 256);
    const imagenet = resolveNormalization('imagenet', 3);
    const plain = new Float32Array(rgb.length);
    const flipped = new Float32Array(rgb.length);
    applyAugmentation(rgb, [5, 7, 3], null, imagenet, plain);
    applyAugmentation(rgb, [5, 7, 3], { ...identity, flip: true }, imagenet, flipped);
    for (let y = 0; y < 5; y++) for (let x = 0; x < 7; x++) for (let c = 0; c < 3; c++) expect(flipped[(y * 7 + x) * 3 + c]).toBe(plain[(y * 7 + 6 - x) * 3 + c]);
    // and the general (bilinear) path agrees where it samples whole pixels: a flip with a 1e-9 crop
    const nearly = new Float32Array(rgb.length);
    applyAugmentation(rgb, [5, 7, 3], { ...identity, flip: true, scale: 1 - 1e-12 }, imagenet, nearly);
    for (let i = 0; i < rgb.length; i++) expect(nearly[i]).toBeCloseTo(flipped[i], 5);
  });

  it('rotating 180° reverses the image', () => {
    expect(run({ ...identity, angle: Math.PI })).toEqual(Array.from(ramp).reverse());
  });

  it('brightness scales and clips; contrast scales about the mean', () => {
    expect(run({ ...identity, brightness: 3 })).toEqual(Array.from(ramp, (v) => Math.min(255, v * 3)));
    const mean = ramp.reduce((a, b) => a + b, 0) / 12;
    const contrasted = run({ ...identity, contrast: 0.5 });
    contrasted.forEach((value, i) => expect(value).toBeCloseTo((ramp[i] - mean) * 0.5 + mean, 2));
  });

  it('crop zooms in on a window', () => {
    // half-size crop at the top-left corner samples source [0, 2) x [0, 1.5)
    const cropped = run({ ...identity, scale: 0.5, offsetX: 0, offsetY: 0 });
    expect(Math.max(...cropped)).toBeLessThan(60);
  });

  it('draws are seeded and within the configured ranges', () => {
    const augment = { flip: true, crop: 0.3, rotate: 15, brightness: 0.1, contrast: 0.2 };
    for (let seed = 0; seed < 200; seed++) {
      const draw = drawAugmentation(augment, createRandom(seed));
      expect(draw).toEqual(drawAugmentation(augment, createRandom(seed)));
      expect(draw.scale).toBeGreaterThanOrEqual(0.7);
      expect(Math.abs(draw.angle)).toBeLessThanOrEqual((15 * Math.PI) / 180);
      expect(Math.abs(draw.brightness - 1)).toBeLessThanOrEqual(0.1);
      expect(Math.abs(draw.contrast - 1)).toBeLessThanOrEqual(0.2);
    }
    const flips = Array.from({ length: 200 }, (_, seed) => drawAugmentation(augment, createRandom(seed)).flip).filter(Boolean).length;
    expect(flips).toBeGreaterThan(70);
    expect(flips).toBeLessThan(130);
  });

  it('NO_AUGMENT consumes no randomness and only normalizes', () => {
    const random = createRandom(5);
    const out = new Float32Array(12);
    augmentRecord(ramp, shape, NO_AUGMENT, unit, random, out);
    expect(random.next()).toBe(createRandom(5).next());
    expect(out[11]).toBeCloseTo(110 / 255, 6);
  });
});
