/**
 * Image decoding with sharp: the one place that turns bytes into pixels, shared by `ingest`
 * (verification), `preprocess` (shards) and `predict` (`preprocessImage`), so they agree on
 * what a valid image is and on every decoding step.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { pseudoFilesystemOf, specialFileKind } from './layout.js';
import type Sharp from 'sharp';

/** sharp (libvips) is loaded on first use: a fully cached run must not pay ~130 ms to import it. */
let sharpModule: Promise<typeof Sharp> | undefined;
function loadSharp(): Promise<typeof Sharp> {
  sharpModule ??= import('sharp').then((m) => m.default);
  return sharpModule;
}
import { normalizePixels, type PreprocessSpec } from './spec.js';

/**
 * Decoding fails on any libvips error, including a truncated file (sharp's default would only
 * warn on some truncations and return grey pixels).
 */
const FAIL_ON = 'truncated' as const;

/** Longest side of the thumbnail `inspectImageFile` decodes to. */
const VERIFY_SIZE = 64;

/** The decoding part of a spec: what shapes the uint8 pixels stored in shards. */
export type DecodeSpec = Pick<PreprocessSpec, 'size' | 'fit' | 'channels' | 'background'>;

/** A file or its bytes. */
export type ImageSource = string | Buffer | Uint8Array;

/** What `inspectImageFile` learns about one file. */
export type ImageInspection =
  | { ok: true; sha256: string; size: number; width: number; height: number; format: string }
  | { ok: false; sha256?: string; size?: number; reason: string };

/**
 * Decodes an image to HWC uint8 pixels of `spec.size` and `spec.channels`: applies the EXIF
 * orientation, takes the first frame of a GIF/WebP animation, converts grayscale/CMYK to sRGB
 * (or sRGB to grayscale), flattens alpha onto `spec.background`, then resizes with `spec.fit`.
 * @throws the sharp error when the data is not a readable image.
 */
export async function decodeImage(source: ImageSource, spec: DecodeSpec): Promise<Uint8Array> {
  try {
    return await decodeOnce(source, spec);
  } catch (error) {
    // See inspectImageFile: a concurrent failure can lose libvips's message; decode alone for it.
    let last = error as Error;
    for (let attempt = 0; attempt < 3 && isGenericError(firstLine(last.message)); attempt++) {
      const outcome = await alone(() => decodeOnce(source, spec).then((pixels) => ({ pixels }), (again: Error) => ({ again })));
      if ('pixels' in outcome) return outcome.pixels;
      last = outcome.again;
    }
    throw last;
  }
}

async function decodeOnce(source: ImageSource, spec: DecodeSpec): Promise<Uint8Array> {
  const [height, width] = spec.size;
  const [r, g, b] = spec.background;
  const background = { r, g, b, alpha: 1 };
  const input = typeof source === 'string' ? source : Buffer.from(source.buffer, source.byteOffset, source.byteLength);
  const sharp = await loadSharp();
  const { data, info } = await sharp(input, { failOn: FAIL_ON, pages: 1 })
    .rotate()
    .flatten({ background })
    .resize(width, height, { fit: spec.fit, background, position: 'centre' })
    .toColourspace(spec.channels === 1 ? 'b-w' : 'srgb')
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== width || info.height !== height || info.channels !== spec.channels) {
    throw new Error(
      `decoded to ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x${spec.channels}`,
    );
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Decodes, resizes and normalizes one image exactly as the training data was (without
 * augmentation). This is what `predict` and exported models use.
 * @returns HWC float32 values, length `size[0] * size[1] * channels`.
 */
export async function preprocessImage(source: ImageSource, spec: PreprocessSpec): Promise<Float32Array> {
  const pixels = await decodeImage(source, spec);
  return normalizePixels(pixels, spec.normalize);
}

/** sha256 (hex) of bytes. */
export function hashBytes(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Reads a file, hashes it and fully decodes it (every pixel, so truncated data is caught, not
 * just the header). Never throws: failures come back as `{ ok: false, reason }`.
 */
export async function inspectImageFile(file: string): Promise<ImageInspection> {
  let bytes: Buffer;
  try {
    // Never open a FIFO, socket or device (a manifest row or a link may name one): the read could block forever.
    const special = specialFileKind(await stat(file));
    if (special) return { ok: false, reason: `${special}, not a regular file; not read` };
    if (pseudoFilesystemOf(file)) return { ok: false, reason: 'in a kernel pseudo-filesystem (/proc, /sys, /dev); not read' };
    bytes = await readFile(file);
  } catch (error) {
    return { ok: false, reason: `unreadable: ${(error as Error).message}` };
  }
  const sha256 = hashBytes(bytes);
  const size = bytes.byteLength;
  if (size === 0) return { ok: false, sha256, size, reason: 'empty file' };
  const ok = (metadata: Awaited<ReturnType<typeof verifyDecode>>): ImageInspection => ({ ok: true, sha256, size, width: metadata.width ?? 0, height: metadata.height ?? 0, format: metadata.format ?? 'unknown' });
  try {
    return ok(await shared(() => verifyDecode(bytes)));
  } catch (error) {
    let reason = firstLine((error as Error).message);
    // libvips keeps one error buffer for all threads: when several decodes fail at once, one
    // failure's message can be taken (cleared) by another and sharp then says "Unknown error".
    // Decoding the file again on its own gives the real message (what `strict` used to show).
    for (let attempt = 0; attempt < 3 && isGenericError(reason); attempt++) {
      const outcome = await alone(() => verifyDecode(bytes).then((metadata) => ({ metadata }), (again: Error) => ({ reason: firstLine(again.message) })));
      if ('metadata' in outcome) return ok(outcome.metadata);
      reason = outcome.reason;
    }
    if (isGenericError(reason)) reason = 'the decoder failed without saying why (libvips gave no message); the file is corrupt or truncated';
    return { ok: false, sha256, size, reason };
  }
}

/** Decodes every pixel (to a thumbnail); returns the header's metadata, throws the decoder's error. */
async function verifyDecode(bytes: Buffer) {
  const sharp = await loadSharp();
  const image = sharp(bytes, { failOn: FAIL_ON, pages: 1 });
  const metadata = await image.metadata();
  // Decoding to a small thumbnail still reads all of the compressed data (so truncation and
  // corruption fail here) while keeping memory small for big photos; JPEG and WebP use
  // shrink-on-load. (stats() would be 15x slower on small images.)
  await image.resize(VERIFY_SIZE, VERIFY_SIZE, { fit: 'inside', withoutEnlargement: true }).raw().toBuffer();
  return metadata;
}

function isGenericError(reason: string): boolean {
  return reason === '' || /^unknown error$/i.test(reason);
}

/**
 * First decodes run side by side (`shared`); a re-decode runs `alone`: it waits until no other
 * decode of this module is in flight and holds new ones back, so libvips' shared error buffer
 * holds its own message. Re-decodes queue one after another.
 */
let active = 0;
let drained: (() => void) | null = null;
let exclusive: Promise<unknown> | null = null;
let retries: Promise<unknown> = Promise.resolve();

async function shared<T>(task: () => Promise<T>): Promise<T> {
  while (exclusive) await exclusive.catch(() => undefined);
  active++;
  try {
    return await task();
  } finally {
    active--;
    if (active === 0) drained?.();
  }
}

function alone<T>(task: () => Promise<T>): Promise<T> {
  const run = async () => {
    const held = (async () => {
      while (active > 0) await new Promise<void>((resolve) => (drained = resolve));
      drained = null;
      return task();
    })();
    exclusive = held;
    try {
      return await held;
    } finally {
      if (exclusive === held) exclusive = null;
    }
  };
  const result = retries.then(run, run);
  retries = result.catch(() => undefined);
  return result;
}

function firstLine(message: string): string {
  return message.split('\n')[0].trim();
}
