/**
 * Inference with an exported folder (written by the `export` stage): loads `model.json`,
 * `labels.json` and `preprocess.json`, and classifies image files with exactly the
 * preprocessing the model was trained with (`preprocessImage`, no augmentation).
 * Used by `pipeline predict DIR IMAGE...`.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { preprocessImage } from './data/image.js';
import { DEFAULT_EXTENSIONS } from './data/layout.js';
import type { PreprocessSpec } from './data/spec.js';
import { useTf } from './ml/backend.js';
import { loadModel, MODEL_FILE } from './ml/io.js';
import { StageError, type ErrorCode } from './runtime/errors.js';
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
 * Loads an export folder (or the folder of the given model.json) and checks its parts agree: labels are a non-empty list of strings,
 * the spec is complete, the model's input is the spec's `[height, width, channels]` and it has
 * one output per label. Throws `StageError` `export_invalid` naming what is missing or wrong.
 */
export async function loadExport(dir: string): Promise<LoadedExport> {
  let folder = resolve(dir);
  let info = await stat(folder).catch(() => null);
  // Its model.json names the folder too (load-base takes either).
  if (info?.isFile() && basename(folder) === MODEL_FILE) {
    folder = dirname(folder);
    info = await stat(folder).catch(() => null);
  }
  if (!info?.isDirectory()) throw invalid(folder, info ? `it is not a folder (nor the ${MODEL_FILE} of one)` : 'it does not exist');
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

/** An image that could not be predicted, and why. */
export interface ImageFailure {
  /** The image path as given (or as found inside a folder that was given). */
  image: string;
  /** Stable code: `image_unreadable`, or `no_images` for a folder without images. */
  code: ErrorCode;
  /** One line: what is wrong with it. */
  message: string;
}

/** What `predictAll` returns: a prediction for every readable image, a failure for each other. */
export interface PredictBatchResult {
  predictions: ImagePrediction[];
  failures: ImageFailure[];
}

/**
 * Classifies images with an export folder: each image is decoded and normalized with the
 * folder's spec, predicted in batches, and its `top` classes returned, most probable first.
 * Throws `StageError` `export_invalid` for a bad folder and `image_unreadable` (with `file`)
 * for the first image that cannot be read or decoded (`predictAll` goes on past bad images).
 */
export async function predictImages(modelDir: string, images: string[], options: PredictOptions): Promise<ImagePrediction[]> {
  const { predictions, failures } = await predictAll(modelDir, images, options);
  if (failures.length) throw new StageError(failures[0].code, failures[0].message, { file: failures[0].image });
  return predictions;
}

/**
 * Like `predictImages`, but a bad image does not stop the batch: it is reported in `failures`
 * with its reason and the others are predicted. `modelDir` may be the export folder or its
 * model.json, or an export already loaded with `loadExport` (then it is left loaded); an entry
 * of `images` may be a folder, whose image files (by extension, hidden files skipped,
 * recursively, in path order) are predicted.
 */
export async function predictAll(modelDir: string | LoadedExport, images: string[], options: PredictOptions): Promise<PredictBatchResult> {
  if (!(Number.isInteger(options.top) && options.top >= 1)) throw new StageError('invalid_option', `top must be a positive integer, got ${options.top}`, { top: options.top });
  const batchSize = options.batch ?? 32;
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new StageError('invalid_option', `batch must be a positive integer, got ${batchSize}`, { batch: batchSize });
  const failures: ImageFailure[] = [];
  const files: string[] = [];
  for (const image of images) {
    const found = await imagesIn(image);
    if (found === null) files.push(image);
    else if (found.length === 0) failures.push({ image, code: 'no_images', message: `${image} is a folder with no image files (${DEFAULT_EXTENSIONS.join(' ')})` });
    else files.push(...found);
  }
  const loaded = typeof modelDir === 'string' ? await loadExport(modelDir) : modelDir;
  const { model, labels, spec } = loaded;
  try {
    const tf = await useTf();
    const [height, width] = spec.size;
    const recordSize = height * width * spec.channels;
    const top = Math.min(options.top, labels.length);
    const predictions: ImagePrediction[] = [];
    for (let start = 0; start < files.length; start += batchSize) {
      const chunk = files.slice(start, start + batchSize);
      const outcomes = await Promise.allSettled(chunk.map((image) => readImage(image, spec)));
      const readable: { image: string; values: Float32Array }[] = [];
      outcomes.forEach((outcome, row) => {
        if (outcome.status === 'fulfilled') readable.push({ image: chunk[row], values: outcome.value });
        else failures.push({ image: chunk[row], code: 'image_unreadable', message: (outcome.reason as Error).message });
      });
      if (readable.length === 0) continue;
      const x = new Float32Array(readable.length * recordSize);
      readable.forEach(({ values }, row) => x.set(values, row * recordSize));
      const probabilities = tf.tidy(() => (model.predict(tf.tensor4d(x, [readable.length, height, width, spec.channels])) as Tensor).dataSync() as Float32Array);
      readable.forEach(({ image }, row) => {
        const ranked = labels
          .map((label, c) => ({ label, probability: probabilities[row * labels.length + c] }))
          .sort((a, b) => b.probability - a.probability);
        predictions.push({ image, top: ranked.slice(0, top) });
      });
    }
    return { predictions, failures };
  } finally {
    if (loaded !== modelDir) model.dispose();
  }
}

/** The image files under `image` when it is a folder (sorted, recursive, hidden skipped); null when it is not a folder. */
async function imagesIn(image: string): Promise<string[] | null> {
  const info = await stat(resolve(image)).catch(() => null);
  if (!info?.isDirectory()) return null;
  const found: string[] = [];
  const walk = async (folder: string) => {
    const entries = (await readdir(folder, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue;
      const full = join(folder, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (DEFAULT_EXTENSIONS.includes(extname(entry.name).toLowerCase())) found.push(full);
    }
  };
  await walk(image);
  return found;
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
