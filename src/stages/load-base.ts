/**
 * `load-base`: a pretrained TF.js layers model from a file or an http(s) URL, cut below its
 * top, optionally adapted to another input, or re-initialized for a from-scratch baseline.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import paramsSchema from '../../schemas/stages/load-base.schema.json' with { type: 'json' };
import { deriveSeed } from '../data/random.js';
import type { StageDefinition } from '../runtime/types.js';
import { disposeModels, writeModelArtifact } from '../ml/artifact.js';
import { useLayers, useTf } from '../ml/backend.js';
import { loadModel } from '../ml/io.js';
import { adaptInput, cutModel } from '../ml/surgery.js';

/** `with:` of a `load-base` stage (see schemas/stages/load-base.schema.json). */
export interface LoadBaseParams {
  /** Path or http(s) URL of model.json (or its folder). */
  model: string;
  /** Last layer to keep. Default: all. */
  cut?: string;
  /** New input [h, w, c]. Default: the model's. */
  input_shape?: [number, number, number];
  /** `pretrained` or `random` weights. Default `pretrained`. */
  init: 'pretrained' | 'random';
  /** Most megabytes (MiB) one downloaded file may have. Default: env `PIPELINE_MAX_DOWNLOAD_BYTES`, else 4096. */
  max_download_mb?: number;
}

const isUrl = (source: string) => /^https?:\/\//i.test(source);

/** The path of a `file:` URL; an unparsable one is returned as is (the stage reports it). */
function fileUrlPath(url: string): string {
  try {
    return fileURLToPath(url);
  } catch {
    return url;
  }
}

export const loadBase: StageDefinition<LoadBaseParams> = {
  kind: 'load-base',
  version: 1,
  description: 'Load a pretrained TF.js layers model (path or URL), cut it at a layer, adapt its input',
  paramsSchema,
  consumes: [],
  provides: ['model'],
  resource: 'tf',
  canonicalParams(params, baseDir) {
    // One key per model however its path is written (`./m/`, `m`, `m/model.json`); URLs as given.
    if (/^[a-z][a-z0-9+.-]+:/i.test(params.model)) return params;
    const full = path.resolve(baseDir, params.model);
    let file = full;
    try {
      if (statSync(full).isDirectory()) file = path.join(full, 'model.json');
    } catch {
      // missing: reported by checkPaths
    }
    return { ...params, model: path.relative(baseDir, file).split(path.sep).join('/') };
  },

  checkPaths(params, baseDir) {
    // http(s) URLs are the loader's to check; a path (or a `file:` URL, which is one) must name model.json or its folder.
    if (isUrl(params.model)) return [];
    if (/^[a-z][a-z0-9+.-]+:/i.test(params.model) && !/^file:/i.test(params.model)) return [{ path: 'model', message: `"${params.model}" is neither a local path nor an http(s) URL; model is a TF.js model.json (or its folder) or an http(s) URL of one` }];
    const full = path.resolve(baseDir, /^file:/i.test(params.model) ? fileUrlPath(params.model) : params.model);
    let info;
    try {
      info = statSync(full);
    } catch {
      return [{ path: 'model', message: `the model ${full} does not exist; model is a TF.js model.json (or its folder) relative to the pipeline file's folder (${baseDir}), or an http(s) URL` }];
    }
    if (info.isDirectory() && !existsSync(path.join(full, 'model.json'))) return [{ path: 'model', message: `the folder ${full} has no model.json; point model at a TF.js layers model.json (convert a Keras model with tensorflowjs_converter)` }];
    return [];
  },

  externalInputs(params, baseDir) {
    if (isUrl(params.model)) return [params.model];
    // A `file:` URL is a local path: keyed by the content it names, like a path.
    const model = /^file:/i.test(params.model) ? fileUrlPath(params.model) : params.model;
    // The model folder holds model.json and its weight files: all of it is the input.
    const full = path.resolve(baseDir, model);
    try {
      return [statSync(full).isDirectory() ? model : path.dirname(model)];
    } catch {
      return [params.model];
    }
  },
  async run(ctx, params) {
    await useTf(ctx.log);
    const maxDownloadBytes = params.max_download_mb !== undefined ? params.max_download_mb * 1024 * 1024 : undefined;
    const loaded = await loadModel(params.model, { baseDir: ctx.baseDir, signal: ctx.signal, log: ctx.log, maxDownloadBytes });
    const made: LayersModel[] = [loaded];
    const original = { layers: loaded.layers.length, inputShape: loaded.inputs[0].shape.slice(1) };
    let summary;
    try {
      let model = loaded;
      if (params.cut) made.push((model = await cutModel(model, params.cut)));
      if (params.input_shape) made.push((model = await adaptInput(model, { inputShape: params.input_shape })));
      if (params.init === 'random') made.push((model = await reinitialize(model, ctx.seed)));
      summary = await writeModelArtifact(ctx.outDir, model, {
        base: { source: params.model, cut: params.cut, init: params.init, inputShape: params.input_shape },
        lineage: ['load-base'],
      });
    } finally {
      disposeModels(...made);
    }
    return {
      metrics: {
        layers: summary.layers,
        params: summary.params,
        source_layers: original.layers,
        output_shape: summary.outputShape as number[],
        input_shape: summary.inputShape as number[],
        init: params.init,
      },
    };
  },
};

/**
 * The same architecture with fresh weights: the model is rebuilt from its JSON with every
 * initializer given a seed derived from the stage seed, so the baseline is reproducible.
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
