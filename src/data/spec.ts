/**
 * The preprocessing spec: everything needed to turn an image file into the exact tensor a model
 * was trained on. `preprocess` records it in its artifact as `preprocess.json`; the shard reader,
 * `predict` and `export` read it back, so train and inference never disagree.
 */

/** Named normalizations; each is `(pixel / 255 - mean) / std` per channel. */
export type NormalizeName = 'imagenet' | 'unit' | 'tf';

/** How the image is brought to `size`. */
export type FitMode = 'fill' | 'cover' | 'contain';

/** Train-time augmentation, applied when the shard reader is asked to (never to val/test). */
export interface AugmentSpec {
  /** Mirror left-right with probability 0.5. Default false. */
  flip: boolean;
  /**
   * Random crop: the crop's side is a fraction in [1 - crop, 1] of the image side, placed
   * uniformly, then resized back to `size`. 0 disables. Default 0.
   */
  crop: number;
  /** Random rotation by up to ± this many degrees about the centre (edges replicated). Default 0. */
  rotate: number;
  /** Multiplies pixel values by a factor in [1 - brightness, 1 + brightness]. Default 0. */
  brightness: number;
  /** Scales distance from the image's mean by a factor in [1 - contrast, 1 + contrast]. Default 0. */
  contrast: number;
}

/** The normalization as numbers, so consumers need not know the preset names. */
export interface NormalizeSpec {
  /** The preset it came from. */
  name: NormalizeName;
  /** Per-channel mean on [0, 1] pixels (length = channels). */
  mean: number[];
  /** Per-channel standard deviation on [0, 1] pixels (length = channels). */
  std: number[];
}

/** Everything `preprocess` did to an image; stored as `preprocess.json`. */
export interface PreprocessSpec {
  /** Output `[height, width]` in pixels. */
  size: [number, number];
  /** `cover` scales to fill and centre-crops (no distortion), `contain` letterboxes with `background`, `fill` stretches. */
  fit: FitMode;
  /** 3 for RGB, 1 for grayscale. */
  channels: 1 | 3;
  /** RGB 0–255 that transparent pixels are flattened onto and `contain` pads with. */
  background: [number, number, number];
  /** Applied at read time, after augmentation. */
  normalize: NormalizeSpec;
  /** Train-only augmentation, applied at read time. */
  augment: AugmentSpec;
}

const IMAGENET_MEAN = [0.485, 0.456, 0.406];
const IMAGENET_STD = [0.229, 0.224, 0.225];

/** No augmentation at all. */
export const NO_AUGMENT: AugmentSpec = Object.freeze({ flip: false, crop: 0, rotate: 0, brightness: 0, contrast: 0 });

/**
 * The mean/std of a named normalization for a channel count. For a grayscale target
 * (`channels: 1`) imagenet uses the average of its RGB statistics (mean 0.449, std 0.226).
 */
export function resolveNormalization(name: NormalizeName, channels: 1 | 3): NormalizeSpec {
  const pick = (values: number[]) =>
    channels === 3 ? values : [Math.round((values.reduce((a, b) => a + b, 0) / 3) * 1000) / 1000];
  switch (name) {
    case 'imagenet':
      return { name, mean: pick(IMAGENET_MEAN), std: pick(IMAGENET_STD) };
    case 'unit':
      return { name, mean: new Array(channels).fill(0), std: new Array(channels).fill(1) };
    case 'tf':
      return { name, mean: new Array(channels).fill(0.5), std: new Array(channels).fill(0.5) };
    default:
      throw new Error(`unknown normalization ${String(name)}`);
  }
}

/** True when `augment` would change an image. */
export function isAugmenting(augment: AugmentSpec | undefined): boolean {
  return !!augment && (augment.flip || augment.crop > 0 || augment.rotate > 0 || augment.brightness > 0 || augment.contrast > 0);
}

/**
 * Per-channel `scale` and `offset` such that `value = pixel * scale + offset` equals
 * `(pixel / 255 - mean) / std`; one multiply-add per value in the hot loops.
 */
export function normalizationCoefficients(normalize: NormalizeSpec): { scale: Float32Array; offset: Float32Array } {
  const channels = normalize.mean.length;
  const scale = new Float32Array(channels);
  const offset = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    scale[c] = 1 / (255 * normalize.std[c]);
    offset[c] = -normalize.mean[c] / normalize.std[c];
  }
  return { scale, offset };
}

/**
 * Normalizes HWC uint8 pixels into `out` (allocated when omitted) starting at `outOffset`.
 * @returns `out`.
 */
export function normalizePixels(
  pixels: Uint8Array,
  normalize: NormalizeSpec,
  out: Float32Array = new Float32Array(pixels.length),
  outOffset = 0,
): Float32Array {
  const { scale, offset } = normalizationCoefficients(normalize);
  const channels = scale.length;
  if (channels === 3) {
    const [s0, s1, s2] = scale;
    const [o0, o1, o2] = offset;
    for (let i = 0; i < pixels.length; i += 3) {
      out[outOffset + i] = pixels[i] * s0 + o0;
      out[outOffset + i + 1] = pixels[i + 1] * s1 + o1;
      out[outOffset + i + 2] = pixels[i + 2] * s2 + o2;
    }
  } else {
    for (let i = 0; i < pixels.length; i++) out[outOffset + i] = pixels[i] * scale[i % channels] + offset[i % channels];
  }
  return out;
}
