import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { decodeImage, inspectImageFile, preprocessImage } from '../../../src/data/image.js';
import { normalizePixels, resolveNormalization, type PreprocessSpec } from '../../../src/data/spec.js';
import { BAD, FASHION } from './ctx.js';
import { testdir } from '../../fixtures/testdir.js';

const spec = (overrides: Partial<PreprocessSpec> = {}): PreprocessSpec => ({
  size: [8, 8], fit: 'cover', channels: 3, background: [255, 255, 255],
  normalize: resolveNormalization('imagenet', 3), augment: { flip: false, crop: 0, rotate: 0, brightness: 0, contrast: 0 },
  ...overrides,
});

/** A 40x20 image: left half red, right half blue. */
const halves = () =>
  sharp({ create: { width: 40, height: 20, channels: 3, background: { r: 255, g: 0, b: 0 } } })
    .composite([{ input: { create: { width: 20, height: 20, channels: 3, background: { r: 0, g: 0, b: 255 } } }, left: 20, top: 0 }]);

const pixel = (pixels: Uint8Array, width: number, x: number, y: number, channels = 3) => Array.from(pixels.subarray((y * width + x) * channels, (y * width + x) * channels + channels));

describe('decodeImage', () => {
  it('decodes a real grayscale PNG to RGB at the requested size', async () => {
    const dir = join(FASHION, 'trouser');
    const file = join(dir, (await readdir(dir))[0]);
    const pixels = await decodeImage(file, spec({ size: [32, 24] }));
    expect(pixels.length).toBe(32 * 24 * 3);
    // grayscale source: R = G = B everywhere
    for (let i = 0; i < pixels.length; i += 3) expect(pixels[i]).toBe(pixels[i + 1]);
    expect(Math.max(...pixels)).toBeGreaterThan(100); // not blank
  });

  it('fit: fill stretches, contain pads with background, cover crops', async () => {
    const png = await halves().png().toBuffer();
    const fill = await decodeImage(png, spec({ size: [10, 10], fit: 'fill' }));
    expect(pixel(fill, 10, 0, 5)).toEqual([255, 0, 0]);
    expect(pixel(fill, 10, 9, 5)).toEqual([0, 0, 255]);
    const contain = await decodeImage(png, spec({ size: [10, 10], fit: 'contain', background: [0, 255, 0] }));
    expect(pixel(contain, 10, 5, 0)).toEqual([0, 255, 0]); // padded top
    expect(pixel(contain, 10, 0, 5)).toEqual([255, 0, 0]);
    const cover = await decodeImage(png, spec({ size: [10, 10], fit: 'cover' }));
    expect(pixel(cover, 10, 0, 0)).toEqual([255, 0, 0]); // centre crop keeps both halves, no padding
    expect(pixel(cover, 10, 9, 9)).toEqual([0, 0, 255]);
  });

  it('applies EXIF orientation', async () => {
    // Stored 40x20 with orientation 6 (rotate 90° clockwise to display): displays as 20x40, red on top.
    const jpeg = await halves().jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toBuffer();
    const pixels = await decodeImage(jpeg, spec({ size: [40, 20], fit: 'fill' }));
    const [r, , b] = pixel(pixels, 20, 10, 5);
    expect(r).toBeGreaterThan(200);
    expect(b).toBeLessThan(60);
    const [r2, , b2] = pixel(pixels, 20, 10, 35);
    expect(b2).toBeGreaterThan(200);
    expect(r2).toBeLessThan(60);
  });

  it('flattens alpha onto the background', async () => {
    const png = await sharp({ create: { width: 4, height: 4, channels: 4, background: { r: 255, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
    expect(pixel(await decodeImage(png, spec({ size: [4, 4], background: [0, 0, 255] })), 4, 1, 1)).toEqual([0, 0, 255]);
  });

  it('converts CMYK JPEG to 3-channel sRGB', async () => {
    const jpeg = await sharp({ create: { width: 16, height: 16, channels: 3, background: { r: 200, g: 30, b: 30 } } }).toColourspace('cmyk').jpeg().toBuffer();
    expect((await sharp(jpeg).metadata()).space).toBe('cmyk');
    const [r, g, b] = pixel(await decodeImage(jpeg, spec({ size: [4, 4] })), 4, 1, 1);
    expect(r).toBeGreaterThan(150);
    expect(g).toBeLessThan(90);
    expect(b).toBeLessThan(90);
  });

  it('reads the first frame of an animated GIF and WebP', async () => {
    const frames = Buffer.concat([Buffer.alloc(8 * 8 * 4, 0).fill(Buffer.from([0, 200, 0, 255])), Buffer.alloc(8 * 8 * 4, 0).fill(Buffer.from([200, 0, 0, 255]))]);
    const raw = { width: 8, height: 16, channels: 4 as const, pageHeight: 8 };
    for (const encoded of [await sharp(frames, { raw }).gif().toBuffer(), await sharp(frames, { raw }).webp({ lossless: true }).toBuffer()]) {
      const [r, g] = pixel(await decodeImage(encoded, spec({ size: [8, 8] })), 8, 4, 4);
      expect(g).toBeGreaterThan(150);
      expect(r).toBeLessThan(50);
    }
  });

  it('gives one channel for a grayscale target', async () => {
    const png = await halves().png().toBuffer();
    const pixels = await decodeImage(png, spec({ size: [5, 10], fit: 'fill', channels: 1 }));
    expect(pixels.length).toBe(50);
  });

  it('rejects truncated and non-image data', async () => {
    await expect(decodeImage(join(BAD, 'truncated.png'), spec())).rejects.toThrow();
    await expect(decodeImage(join(BAD, 'not-an-image.jpg'), spec())).rejects.toThrow(/unsupported image format/);
  });
});

describe('inspectImageFile', () => {
  it('hashes and verifies good files, reports bad ones', async () => {
    const dir = join(FASHION, 'sneaker');
    const good = await inspectImageFile(join(dir, (await readdir(dir))[0]));
    expect(good).toMatchObject({ ok: true, width: 28, height: 28, format: 'png' });
    expect(good.ok && good.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(await inspectImageFile(join(BAD, 'truncated.png'))).toMatchObject({ ok: false, reason: expect.stringMatching(/png/i) });
    expect(await inspectImageFile(join(BAD, 'not-an-image.jpg'))).toMatchObject({ ok: false });
    expect(await inspectImageFile(join(BAD, 'missing.png'))).toMatchObject({ ok: false, reason: expect.stringMatching(/unreadable/) });
  });
});

describe('normalization', () => {
  it('imagenet, unit and tf give the documented values', () => {
    const pixels = new Uint8Array([0, 128, 255, 255, 255, 255]);
    const imagenet = normalizePixels(pixels, resolveNormalization('imagenet', 3));
    expect(imagenet[0]).toBeCloseTo((0 - 0.485) / 0.229, 5);
    expect(imagenet[1]).toBeCloseTo((128 / 255 - 0.456) / 0.224, 5);
    expect(imagenet[2]).toBeCloseTo((1 - 0.406) / 0.225, 5);
    expect(imagenet[3]).toBeCloseTo((1 - 0.485) / 0.229, 5);
    expect(Array.from(normalizePixels(pixels, resolveNormalization('unit', 3))).map((v) => +v.toFixed(5))).toEqual([0, +(128 / 255).toFixed(5), 1, 1, 1, 1]);
    const tf = normalizePixels(pixels, resolveNormalization('tf', 3));
    expect(tf[0]).toBeCloseTo(-1, 6);
    expect(tf[2]).toBeCloseTo(1, 6);
    expect(resolveNormalization('imagenet', 1)).toEqual({ name: 'imagenet', mean: [0.449], std: [0.226] });
  });

  it('preprocessImage = decode then normalize', async () => {
    const png = await halves().png().toBuffer();
    const s = spec({ size: [4, 4], fit: 'fill', normalize: resolveNormalization('tf', 3) });
    const values = await preprocessImage(png, s);
    expect(values).toBeInstanceOf(Float32Array);
    expect(values.length).toBe(48);
    expect(values[0]).toBeCloseTo(1, 5); // red pixel: R = 255 → 1
    expect(values[2]).toBeCloseTo(-1, 5); // B = 0 → -1
  });
});

describe('decoder messages under concurrency', () => {
  it('truncated JPEGs decoded at the same time each get libvips\'s real reason, not "Unknown error"', async () => {
    const dir = testdir();
    try {
      const jpeg = await sharp({ create: { width: 640, height: 480, channels: 3, noise: { type: 'gaussian', mean: 128, sigma: 30 } } }).jpeg().toBuffer();
      const files = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99].map((fraction) => dir.write(`cut-${fraction}.jpg`, jpeg.subarray(0, Math.floor(jpeg.length * fraction))));
      const results = await Promise.all(files.map((file) => inspectImageFile(file)));
      expect(results.map((r) => (r.ok ? 'ok' : r.reason))).toEqual(files.map(() => 'VipsJpeg: premature end of JPEG image'));
      const pixels = await Promise.allSettled(files.map((file) => decodeImage(file, spec())));
      for (const outcome of pixels) expect(outcome.status === 'rejected' && String(outcome.reason.message)).toMatch(/premature end/);
    } finally {
      dir.cleanup();
    }
  });
});
