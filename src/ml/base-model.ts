/**
 * Loading a base model as `load-base` describes it — a path or URL, a cut, an input adaptation,
 * pretrained or fresh weights — shared by `load-base` and `rank-bases` (which loads several).
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { Logger } from 'pino';
import { deriveSeed } from '../data/random.js';
import type { PreprocessSpec } from '../data/spec.js';
import { disposeModels, INFO_METADATA_KEY, type ModelInfo } from './artifact.js';
import { useLayers } from './backend.js';
import { loadModel } from './io.js';
import { adaptInput, cutModel } from './surgery.js';

/** Which base to load and how (the model part of `load-base`'s params). */
export interface BaseSpec {
  /** Path (relative to the pipeline file) or http(s) URL of model.json, or its folder. */
  model: string;
  /** Last layer to keep. Default: all. */
  cut?: string;
  /** New input [h, w, c]. Default: the model's. */
  input_shape?: [number, number, number];
  /** `pretrained` or `random` weights. Default `pretrained`. */
  init?: 'pretrained' | 'random';
}

/** A loaded base. */
export interface LoadedBase {
  /** The base, cut and adapted. */
  model: LayersModel;
  /** Every model made on the way (the loaded one included): dispose with `disposeModels`. */
  made: LayersModel[];
  /** Layers and input of the model as loaded, before the cut. */
  original: { layers: number; inputShape: (number | null)[] };
  /** The preprocessing the source model records it was trained with (a model this toolkit exported), if any. */
  recordedPreprocess?: PreprocessSpec;
}

export const isUrl = (source: string) => /^https?:\/\//i.test(source);

/** The path of a `file:` URL; an unparsable one is returned as is (the loader reports it). */
export function fileUrlPath(url: string): string {
  try {
    return fileURLToPath(url);
  } catch {
    return url;
  }
}

/** One spelling per local model however its path is written (`./m/`, `m`, `m/model.json`); URLs as given. */
export function canonicalModelPath(model: string, baseDir: string): string {
  if (/^[a-z][a-z0-9+.-]+:/i.test(model)) return model;
  const full = path.resolve(baseDir, model);
  let file = full;
  try {
    if (statSync(full).isDirectory()) file = path.join(full, 'model.json');
  } catch {
    // missing: reported by checkModelPath
  }
  return path.relative(baseDir, file).split(path.sep).join('/');
}

/** What is wrong with a local `model` (it is missing, or a folder without model.json), or null. */
export function checkModelPath(model: string, baseDir: string): string | null {
  // http(s) URLs are the loader's to check; a path (or a `file:` URL, which is one) must name model.json or its folder.
  if (isUrl(model)) return null;
  if (/^[a-z][a-z0-9+.-]+:/i.test(model) && !/^file:/i.test(model)) return `"${model}" is neither a local path nor an http(s) URL; model is a TF.js model.json (or its folder) or an http(s) URL of one`;
  const full = path.resolve(baseDir, /^file:/i.test(model) ? fileUrlPath(model) : model);
  let info;
  try {
    info = statSync(full);
  } catch {
    return `the model ${full} does not exist; model is a TF.js model.json (or its folder) relative to the pipeline file's folder (${baseDir}), or an http(s) URL`;
  }
  if (info.isDirectory() && !existsSync(path.join(full, 'model.json'))) return `the folder ${full} has no model.json; point model at a TF.js layers model.json (convert a Keras model with tensorflowjs_converter)`;
  return null;
}

/** The external input that keys a model: its URL, or the folder holding model.json and its weight files. */
export function modelExternalInput(model: string, baseDir: string): string {
  if (isUrl(model)) return model;
  // A `file:` URL is a local path: keyed by the content it names, like a path.
  const local = /^file:/i.test(model) ? fileUrlPath(model) : model;
  try {
    return statSync(path.resolve(baseDir, local)).isDirectory() ? local : path.dirname(local);
  } catch {
    return model;
  }
}

/** Loads, cuts, adapts and (for `init: random`) re-initializes a base; `seed` seeds the fresh weights. */
export async function loadBaseModel(spec: BaseSpec, options: { baseDir: string; seed: number; signal?: AbortSignal; log?: Logger; maxDownloadBytes?: number }): Promise<LoadedBase> {
  const loaded = await loadModel(spec.model, { baseDir: options.baseDir, signal: options.signal, log: options.log, maxDownloadBytes: options.maxDownloadBytes });
  const made: LayersModel[] = [loaded];
  const original = { layers: loaded.layers.length, inputShape: loaded.inputs[0].shape.slice(1) };
  const info = (loaded.getUserDefinedMetadata() as Record<string, unknown> | undefined)?.[INFO_METADATA_KEY] as ModelInfo | undefined;
  try {
    let model = loaded;
    if (spec.cut) made.push((model = await cutModel(model, spec.cut)));
    if (spec.input_shape) made.push((model = await adaptInput(model, { inputShape: spec.input_shape })));
    if (spec.init === 'random') made.push((model = await reinitialize(model, options.seed)));
    return { model, made, original, ...(info?.preprocess ? { recordedPreprocess: info.preprocess } : {}) };
  } catch (error) {
    disposeModels(...made);
    throw error;
  }
}

/**
 * The same architecture with fresh weights: the model is rebuilt from its JSON with every
 * initializer given a seed derived from `seed`, so the baseline is reproducible.
 */
async function reinitialize(model: LayersModel, seed: number): Promise<LayersModel> {
  const tfl = await useLayers();
  const json = JSON.parse(JSON.stringify(model.toJSON(undefined, false))) as { config: { layers: { name: string; config: Record<string, unknown> }[] } };
  for (const layer of json.config.layers) {
    for (const [key, value] of Object.entries(layer.config)) {
      const init = value as { class_name?: string; config?: Record<string, unknown> } | null;
      if (key.endsWith('_initializer') && init?.config && 'seed' in init.config) init.config.seed = deriveSeed(seed, layer.name, key) % 2147483647;
    }
  }
  return tfl.models.modelFromJSON({ modelTopology: json as never });
}
