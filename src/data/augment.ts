/**
 * Train-time augmentation on uint8 HWC records, fused with normalization so each value is
 * written once. Runs at read time (shards stay uint8 and every epoch sees new variants) and is
 * seeded per record, so a batch's content depends only on (seed, epoch, record), never on the
 * batch size or read order.
 */
import type { Random } from './random.js';
import { isAugmenting, normalizationCoefficients, type AugmentSpec, type NormalizeSpec } from './spec.js';

/** The random draws for one record; exported so tests can check the geometry directly. */
export interface AugmentDraw {
  /** Mirror left-right. */
  flip: boolean;
  /** Crop side as a fraction of the image side (1 = no crop). */
  scale: number;
  /** Crop window's top-left corner as a fraction of the free space, in [0, 1]. */
  offsetX: number;
  offsetY: number;
  /** Rotation in radians. */
  angle: number;
  /** Multiplier on pixel values. */
  brightness: number;
  /** Multiplier on the distance from the image mean. */
  contrast: number;
}

/** The draw of an exact left-right mirror and nothing else (the second view of flip-only augmentation). */
export const MIRROR_DRAW: Readonly<AugmentDraw> = Object.freeze({ flip: true, scale: 1, offsetX: 0.5, offsetY: 0.5, angle: 0, brightness: 1, contrast: 1 });

/** Draws one record's augmentation parameters, always in the same order. */
export function drawAugmentation(augment: AugmentSpec, random: Random): AugmentDraw {
  return {
    flip: augment.flip ? random.next() < 0.5 : false,
    scale: augment.crop > 0 ? random.uniform(1 - augment.crop, 1) : 1,
    offsetX: augment.crop > 0 ? random.next() : 0.5,
    offsetY: augment.crop > 0 ? random.next() : 0.5,
    angle: augment.rotate > 0 ? (random.uniform(-augment.rotate, augment.rotate) * Math.PI) / 180 : 0,
    brightness: augment.brightness > 0 ? random.uniform(1 - augment.brightness, 1 + augment.brightness) : 1,
    contrast: augment.contrast > 0 ? random.uniform(1 - augment.contrast, 1 + augment.contrast) : 1,
  };
}

/**
 * Writes one augmented, normalized record into `out` at `outOffset`.
 * @param pixels the record, HWC uint8 of `height * width * channels`.
 * @param augment what may be applied; with nothing enabled this is plain normalization.
 * @param random the record's own seeded source.
 */
export function augmentRecord(
  pixels: Uint8Array,
  shape: readonly [number, number, number],
  augment: AugmentSpec,
  normalize: NormalizeSpec,
  random: Random,
  out: Float32Array,
  outOffset = 0,
): void {
  const draw = isAugmenting(augment) ? drawAugmentation(augment, random) : null;
  applyAugmentation(pixels, shape, draw, normalize, out, outOffset);
}

/** A left-right mirror and nothing else (no crop, no rotation). */
function isPureFlip(draw: AugmentDraw): boolean {
  return draw.flip && draw.scale === 1 && draw.angle === 0;
}

/** Applies fixed draws (null = none): geometry by inverse mapping + bilinear sampling, then photometry. */
export function applyAugmentation(
  pixels: Uint8Array,
  shape: readonly [number, number, number],
  draw: AugmentDraw | null,
  normalize: NormalizeSpec,
  out: Float32Array,
  outOffset = 0,
): void {
  const [height, width, channels] = shape;
  const { scale, offset } = normalizationCoefficients(normalize);
  const geometric = draw !== null && (draw.flip || draw.scale !== 1 || draw.angle !== 0);
  const photometric = draw !== null && (draw.brightness !== 1 || draw.contrast !== 1);
  let gain = 1;
  let bias = 0;
  if (photometric && draw) {
    // brightness then contrast about the (brightened) mean: v' = (b·v − m)·k + m with m = b·mean.
    let sum = 0;
    for (let i = 0; i < pixels.length; i++) sum += pixels[i];
    const mean = (sum / pixels.length) * draw.brightness;
    gain = draw.brightness * draw.contrast;
    bias = mean * (1 - draw.contrast);
  }
  const write = (index: number, value: number) => {
    if (photometric) value = Math.min(255, Math.max(0, value * gain + bias));
    const c = index % channels;
    out[outOffset + index] = value * scale[c] + offset[c];
  };
  if (!photometric && (!geometric || !draw || isPureFlip(draw))) {
    // The hot path of every frozen pass: plain normalization, or an exact mirror (a flip with
    // no crop or rotation samples whole pixels, so bilinear sampling would return them as they
    // are). One multiply-add per value, a channel at a time; the same arithmetic as `write`.
    const mirror = geometric && draw !== null;
    for (let c = 0; c < channels; c++) {
      const k = scale[c];
      const b = offset[c];
      for (let y = 0; y < height; y++) {
        const row = y * width;
        for (let x = 0; x < width; x++) {
          const source = (row + (mirror ? width - 1 - x : x)) * channels + c;
          out[outOffset + (row + x) * channels + c] = pixels[source] * k + b;
        }
      }
    }
    return;
  }
  if (!geometric || !draw) {
    for (let i = 0; i < pixels.length; i++) write(i, pixels[i]);
    return;
  }
  const cropWidth = draw.scale * width;
  const cropHeight = draw.scale * height;
  const centreX = draw.offsetX * (width - cropWidth) + cropWidth / 2;
  const centreY = draw.offsetY * (height - cropHeight) + cropHeight / 2;
  const cos = Math.cos(draw.angle);
  const sin = Math.sin(draw.angle);
  for (let y = 0; y < height; y++) {
    const dy = ((y + 0.5) / height - 0.5) * cropHeight;
    for (let x = 0; x < width; x++) {
      let dx = ((x + 0.5) / width - 0.5) * cropWidth;
      if (draw.flip) dx = -dx;
      const sourceX = Math.min(width - 1, Math.max(0, centreX + cos * dx - sin * dy - 0.5));
      const sourceY = Math.min(height - 1, Math.max(0, centreY + sin * dx + cos * dy - 0.5));
      const x0 = Math.floor(sourceX);
      const y0 = Math.floor(sourceY);
      const x1 = Math.min(width - 1, x0 + 1);
      const y1 = Math.min(height - 1, y0 + 1);
      const fx = sourceX - x0;
      const fy = sourceY - y0;
      const row0 = y0 * width;
      const row1 = y1 * width;
      const target = (y * width + x) * channels;
      for (let c = 0; c < channels; c++) {
        const top = pixels[(row0 + x0) * channels + c] * (1 - fx) + pixels[(row0 + x1) * channels + c] * fx;
        const bottom = pixels[(row1 + x0) * channels + c] * (1 - fx) + pixels[(row1 + x1) * channels + c] * fx;
        write(target + c, top * (1 - fy) + bottom * fy);
      }
    }
  }
}
