/**
 * Inference with an exported folder (written by the `export` stage): loads `model.json`,
 * `labels.json` and `preprocess.json`, and classifies image files with exactly the
 * preprocessing the model was trained with (`preprocessImage`, no augmentation).
 * Used by `pipeline predict DIR IMAGE...`.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { preprocessImage } from './data/image.js';
import type { PreprocessSpec } from './data/spec.js';
import { useTf } from './ml/backend.js';
import { loadModel, MODEL_FILE } from './ml/io.js';
import { StageError } from './runtime/errors.js';
import { LABELS_FILE, PREPROCESS_FILE } from './stages/export.js';

/** One class and its probability. */
export interface LabelProbability {
  label: string;
  /** Softmax output for the class, in [0, 1]. */
  probability: number;
}

/** The prediction for one image. */
export interface ImagePrediction {
  /** The image path as given. */
  image: string;
  /** The most probable classes, most probable first. */
  top: LabelProbability[];
}

/** Options of `predictImages`. */
export interface PredictOptions {
  /** How many classes to return per image (capped at the class count). */
  top: number;
  /** Images per model call. Default 32. */
  batch?: number;
}

/** A loaded export folder. Call `model.dispose()` when done. */
export interface LoadedExport {
  model: LayersModel;
  /** Class names in output order. */
  labels: string[];
  /** The inference preprocessing. */
  spec: PreprocessSpec;
}

/**
 * Loads an export folder and checks its parts agree: labels are a non-empty list of strings,
 * the spec is complete, the model's input is the spec's `[height, width, channels]` and it has
 * one output per label. Throws `StageError` `export_invalid` naming what is missing or wrong.
 */
export async function loadExport(dir: string): Promise<LoadedExport> {
  const folder = resolve(dir);
  const info = await stat(folder).catch(() => null);
  if (!info?.isDirectory()) throw invalid(folder, 'it is not a folder');
  const labels = await readJson(folder, LABELS_FILE);
  if (!Array.isArray(labels) || labels.length === 0 || !labels.every((l) => typeof l === 'string')) {
    throw invalid(folder, `${LABELS_FILE} must be a non-empty list of class names`);
  }
  const spec = await readJson(folder, PREPROCESS_FILE);
  if (!isSpec(spec)) throw invalid(folder, `${PREPROCESS_FILE} is not a complete preprocessing spec (size, fit, channels, background, normalize)`);
  await stat(join(folder, MODEL_FILE)).catch((error) => {
    throw invalid(folder, `it has no ${MODEL_FILE}`, error);
  });
  const model = await loadModel(join(folder, MODEL_FILE));
  const inputShape = (model.inputs[0]?.shape ?? []).slice(1);
  const expected = [spec.size[0], spec.size[1], spec.channels];
  const units = model.outputs[0]?.shape.at(-1);
  const problem =
    model.inputs.length !== 1 || inputShape.length !== 3 || inputShape.some((size, i) => size !== null && size !== expected[i])
      ? `the model takes [${inputShape.map((s) => s ?? '?').join(', ')}] but ${PREPROCESS_FILE} makes [${expected.join(', ')}]`
      : units !== labels.length
        ? `the model has ${units ?? 'no'} outputs but ${LABELS_FILE} lists ${labels.length} classes`
        : null;
  if (problem) {
    model.dispose();
    throw invalid(folder, problem);
  }
  return { model, labels: labels as string[], spec };
}

/**
 * Classifies images with an export folder: each image is decoded and normalized with the
 * folder's spec, predicted in batches, and its `top` classes returned, most probable first.
 * Throws `StageError` `export_invalid` for a bad folder and `image_unreadable` (with `file`)
 * for an image that cannot be read or decoded.
 */
export async function predictImages(modelDir: string, images: string[], options: PredictOptions): Promise<ImagePrediction[]> {
  if (!(Number.isInteger(options.top) && options.top >= 1)) throw new StageError('invalid_option', `top must be a positive integer, got ${options.top}`, { top: options.top });
  const batchSize = options.batch ?? 32;
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new StageError('invalid_option', `batch must be a positive integer, got ${batchSize}`, { batch: batchSize });
  const { model, labels, spec } = await loadExport(modelDir);
  try {
    const tf = await useTf();
    const [height, width] = spec.size;
    const recordSize = height * width * spec.channels;
    const top = Math.min(options.top, labels.length);
    const results: ImagePrediction[] = [];
    for (let start = 0; start < images.length; start += batchSize) {
      const chunk = images.slice(start, start + batchSize);
      const x = new Float32Array(chunk.length * recordSize);
      const pixels = await Promise.all(chunk.map((image) => readImage(image, spec)));
      pixels.forEach((values, row) => x.set(values, row * recordSize));
      const probabilities = tf.tidy(() => (model.predict(tf.tensor4d(x, [chunk.length, height, width, spec.channels])) as Tensor).dataSync() as Float32Array);
      chunk.forEach((image, row) => {
        const ranked = labels
          .map((label, c) => ({ label, probability: probabilities[row * labels.length + c] }))
          .sort((a, b) => b.probability - a.probability);
        results.push({ image, top: ranked.slice(0, top) });
      });
    }
    return results;
  } finally {
    model.dispose();
  }
}

async function readImage(image: string, spec: PreprocessSpec): Promise<Float32Array> {
  try {
    // Read first: the file system's error (ENOENT, EACCES) is clearer than the decoder's.
    return await preprocessImage(await readFile(resolve(image)), spec);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : (error as Error).message.split('\n')[0];
    throw new StageError('image_unreadable', `cannot read image ${image}: ${why}`, { file: image }, { cause: error });
  }
}

async function readJson(folder: string, file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(join(folder, file), 'utf8');
  } catch (error) {
    throw invalid(folder, `it has no ${file}`, error);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw invalid(folder, `${file} is not JSON`, error);
  }
}

function isSpec(value: unknown): value is PreprocessSpec {
  const spec = value as PreprocessSpec | null;
  const numbers = (list: unknown, length: number) => Array.isArray(list) && list.length === length && list.every((n) => typeof n === 'number' && Number.isFinite(n));
  return (
    typeof spec === 'object' &&
    spec !== null &&
    numbers(spec.size, 2) &&
    spec.size.every((n) => Number.isInteger(n) && n > 0) &&
    (spec.channels === 1 || spec.channels === 3) &&
    ['cover', 'contain', 'fill'].includes(spec.fit) &&
    numbers(spec.background, 3) &&
    typeof spec.normalize === 'object' &&
    spec.normalize !== null &&
    numbers(spec.normalize.mean, spec.channels) &&
    numbers(spec.normalize.std, spec.channels) &&
    spec.normalize.std.every((s) => s > 0)
  );
}

function invalid(folder: string, why: string, cause?: unknown): StageError {
  return new StageError('export_invalid', `${folder} is not a usable export folder: ${why} (write one with the export stage)`, { dir: folder }, cause === undefined ? undefined : { cause });
}
