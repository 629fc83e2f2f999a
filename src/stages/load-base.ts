/**
 * `load-base`: a pretrained TF.js layers model from a file or an http(s) URL, cut below its
 * top, optionally adapted to another input, or re-initialized for a from-scratch baseline.
 * With `from: rank` it loads the base a `rank-bases` stage it needs chose.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import paramsSchema from '../../schemas/stages/load-base.schema.json' with { type: 'json' };
import { StageError } from '../runtime/errors.js';
import type { StageDefinition } from '../runtime/types.js';
import { disposeModels, writeModelArtifact } from '../ml/artifact.js';
import { useTf } from '../ml/backend.js';
import { canonicalModelPath, checkModelPath, loadBaseModel, modelExternalInput, type BaseSpec } from '../ml/base-model.js';
import { RANKING_FILE, type Ranking } from './rank-bases.js';

/** `with:` of a `load-base` stage (see schemas/stages/load-base.schema.json). */
export interface LoadBaseParams {
  /** Path or http(s) URL of model.json (or its folder). Required unless `from`. */
  model?: string;
  /** `rank`: the base the `rank-bases` stage in `needs` chose (model, cut, input shape, init). */
  from?: 'rank';
  /** Last layer to keep. Default: all. */
  cut?: string;
  /** New input [h, w, c]. Default: the model's. */
  input_shape?: [number, number, number];
  /** `pretrained` or `random` weights. Default `pretrained`. */
  init: 'pretrained' | 'random';
  /** Most megabytes (MiB) one downloaded file may have. Default: env `PIPELINE_MAX_DOWNLOAD_BYTES`, else 4096. */
  max_download_mb?: number;
  /** Train with other preprocessing than the base records (size, channels, normalize). Default false. */
  allow_preprocess_mismatch: boolean;
}

export const loadBase: StageDefinition<LoadBaseParams> = {
  kind: 'load-base',
  // 2: the artifact records the source model's preprocessing (info.base.preprocess).
  version: 2,
  description: 'Load a pretrained TF.js layers model (path or URL, or the one rank-bases chose), cut it at a layer, adapt its input',
  paramsSchema,
  consumes: [],
  consumesFor: (params) => (params.from === 'rank' ? ['ranking'] : []),
  provides: ['model'],
  resource: 'tf',
  check(params) {
    if (params.from === undefined && params.model === undefined) return [{ path: 'model', message: "give the base's model (a model.json path or URL), or from: rank to take the one a rank-bases stage chose" }];
    if (params.from !== undefined) {
      const given = [...(['model', 'cut', 'input_shape'] as const).filter((key) => params[key] !== undefined), ...(params.init !== 'pretrained' ? ['init'] : [])];
      return given.map((key) => ({ path: key, message: `from: rank takes ${key} from the ranking's choice; remove ${key} here (set it on the candidate in rank-bases models)` }));
    }
    return [];
  },
  canonicalParams(params, baseDir) {
    return params.model === undefined ? params : { ...params, model: canonicalModelPath(params.model, baseDir) };
  },
  checkPaths(params, baseDir) {
    const problem = params.model === undefined ? null : checkModelPath(params.model, baseDir);
    return problem ? [{ path: 'model', message: problem }] : [];
  },
  externalInputs(params, baseDir) {
    // With from: rank the candidates' files are rank-bases' inputs, and its output is in this key.
    return params.model === undefined ? [] : [modelExternalInput(params.model, baseDir)];
  },
  async run(ctx, params) {
    await useTf(ctx.log);
    const maxDownloadBytes = params.max_download_mb !== undefined ? params.max_download_mb * 1024 * 1024 : undefined;
    const { spec, rankedBy, initSeed } = params.from === 'rank' ? await rankedChoice(ctx.input('ranking')) : { spec: { model: params.model!, cut: params.cut, input_shape: params.input_shape, init: params.init }, rankedBy: undefined, initSeed: ctx.seed };
    const base = await loadBaseModel(spec, { baseDir: ctx.baseDir, seed: initSeed, signal: ctx.signal, log: ctx.log, maxDownloadBytes });
    let summary;
    try {
      summary = await writeModelArtifact(ctx.outDir, base.model, {
        base: {
          source: spec.model,
          cut: spec.cut,
          init: spec.init ?? 'pretrained',
          inputShape: spec.input_shape,
          ...(base.recordedPreprocess ? { preprocess: base.recordedPreprocess } : {}),
          ...(params.allow_preprocess_mismatch ? { allowPreprocessMismatch: true } : {}),
          ...(rankedBy ? { rankedBy } : {}),
        },
        lineage: ['load-base'],
      });
    } finally {
      disposeModels(...base.made);
    }
    return {
      metrics: {
        layers: summary.layers,
        params: summary.params,
        source_layers: base.original.layers,
        output_shape: summary.outputShape as number[],
        input_shape: summary.inputShape as number[],
        init: spec.init ?? 'pretrained',
        ...(rankedBy ? { model: spec.model, ranked_by: rankedBy } : {}),
        ...(base.recordedPreprocess ? { recorded_normalize: base.recordedPreprocess.normalize.name } : {}),
      },
    };
  },
};

/** The base a rank-bases artifact chose. */
async function rankedChoice(input: { id: string; dir: string }): Promise<{ spec: BaseSpec; rankedBy: string; initSeed: number }> {
  const file = path.join(input.dir, RANKING_FILE);
  let ranking: Ranking;
  try {
    ranking = JSON.parse(await readFile(file, 'utf8')) as Ranking;
  } catch (error) {
    throw new StageError('ranking_unreadable', `cannot read the ranking ${file} of '${input.id}': ${(error as Error).message}; re-run it with --force ${input.id}`, { file }, { cause: error });
  }
  const best = ranking.candidates.find((c) => c.name === ranking.best);
  if (!best) throw new StageError('ranking_unreadable', `the ranking ${file} of '${input.id}' names no candidate '${ranking.best}'; re-run it with --force ${input.id}`, { file });
  // A random candidate gets the weights it was scored with.
  return { spec: best.spec, rankedBy: input.id, initSeed: best.init_seed };
}
