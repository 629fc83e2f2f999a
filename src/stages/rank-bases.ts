/**
 * `rank-bases`: which of several candidate bases will transfer best to the target, from frozen
 * features alone, before any training. Each candidate is loaded as `load-base` would load it,
 * run once over (a stratified sample of) the target's training images in inference mode, and its
 * global-average-pooled features at the cut are scored by
 *
 * - LogME (src/ml/logme.ts): the evidence of a Bayesian linear model per class, closed form;
 * - a k-fold cross-validated ridge classifier (src/ml/probe.ts): held-out accuracy ± std.
 *
 * The artifact (`ranking`) holds `ranking.json` (every score and how to load the best base) and
 * `ranking.md` (the table); `load-base` with `from: rank` loads the chosen base.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import paramsSchema from '../../schemas/stages/rank-bases.schema.json' with { type: 'json' };
import { createRandom, deriveSeed } from '../data/random.js';
import { openDataset, type ShardDataset } from '../data/shards.js';
import { normalizePixels, resolveNormalization, type NormalizeName } from '../data/spec.js';
import { AbortedError, StageError } from '../runtime/errors.js';
import type { Json, StageContext, StageDefinition } from '../runtime/types.js';
import { disposeModels } from '../ml/artifact.js';
import { useLayers, useTf, type Tf } from '../ml/backend.js';
import { canonicalModelPath, checkModelPath, loadBaseModel, modelExternalInput, type BaseSpec } from '../ml/base-model.js';
import { createFrozenRunner } from '../ml/engine.js';
import { logme } from '../ml/logme.js';
import { discrepancyOnImages, judgeNormalization } from '../ml/preprocess-check.js';
import { linearProbe } from '../ml/probe.js';

/** One candidate of `models`. */
export interface CandidateParams extends BaseSpec {
  /** Its name in the table and the ranking. */
  name: string;
  /** The normalization it expects. Default: recorded by the model, else the shards'. */
  normalize?: NormalizeName;
}

/** `with:` of a `rank-bases` stage (see schemas/stages/rank-bases.schema.json). */
export interface RankBasesParams {
  models: CandidateParams[];
  /** Split scored. Default `train`. */
  split: string;
  /** At most this many images (a seeded, stratified sample). Default 1000. */
  max_images: number;
  /** Probe folds. Default 5. */
  folds: number;
  /** Probe L2 penalty. Default 1. */
  ridge: number;
  /** Forward batch. Default 32. */
  batch: number;
  /** What picks the best: `logme` or `probe`. Default `logme`. */
  select: 'logme' | 'probe';
  /** Download cap per file in MiB, as load-base. */
  max_download_mb?: number;
}

/** One scored candidate in `ranking.json`. */
export interface CandidateScore {
  name: string;
  /** How load-base loads it (`from: rank`). */
  spec: BaseSpec;
  /** The seed of its fresh weights (`init: random`), so load-base from: rank builds the very network scored. */
  init_seed: number;
  /** The normalization its images got. */
  normalize: NormalizeName;
  /** LogME of its features (higher is better). */
  logme: number;
  /** The probe's mean held-out accuracy, its standard deviation and per-fold values. */
  probe: { accuracy: number; std: number; folds: number[] };
  /** Seconds to load the base and compute the features. */
  feature_seconds: number;
  /** Seconds of LogME and the probe together. */
  score_seconds: number;
  /** Feature dimension. */
  features: number;
  /** Parameters of the cut base, and their float32 bytes. */
  params: number;
  weight_bytes: number;
  /** `[h, w, c]` the base takes (images are resized to it). */
  input_shape: number[];
  /** Which engine computed the features. */
  engine: string;
  /**
   * For a pretrained base that records no preprocessing: its first BatchNormalization against
   * the images' statistics under each normalization (src/ml/preprocess-check.ts), the closest
   * one, and a warning when `normalize` disagrees badly.
   */
  bn?: { layer: string; best: NormalizeName; discrepancy: Record<NormalizeName, number>; warning?: string };
}

/** `ranking.json`. */
export interface Ranking {
  format: 'finetune-ranking';
  version: 1;
  /** What picked `best`. */
  select: 'logme' | 'probe';
  split: string;
  /** Images scored. */
  images: number;
  /** Name of the chosen candidate. */
  best: string;
  /** Best first. */
  candidates: CandidateScore[];
}

export const RANKING_FILE = 'ranking.json';
/** Images of the sample the BatchNorm statistics check uses. */
const BN_SAMPLE = 32;
export const RANKING_REPORT = 'ranking.md';

export const rankBases: StageDefinition<RankBasesParams> = {
  kind: 'rank-bases',
  version: 1,
  description: 'Score candidate bases on the target from frozen features (LogME, cross-validated linear probe); load-base from: rank takes the best',
  paramsSchema,
  consumes: ['shards'],
  provides: ['ranking'],
  resource: 'tf',
  check(params) {
    const seen = new Set<string>();
    return params.models.flatMap((m, i) => {
      if (!seen.has(m.name)) return (seen.add(m.name), []);
      return [{ path: `models.${i}.name`, message: `the name '${m.name}' is used by two candidates; give each its own` }];
    });
  },
  canonicalParams(params, baseDir) {
    return { ...params, models: params.models.map((m) => ({ ...m, model: canonicalModelPath(m.model, baseDir) })) };
  },
  checkPaths(params, baseDir) {
    return params.models.flatMap((m, i) => {
      const problem = checkModelPath(m.model, baseDir);
      return problem ? [{ path: `models.${i}.model`, message: problem }] : [];
    });
  },
  externalInputs(params, baseDir) {
    return [...new Set(params.models.map((m) => modelExternalInput(m.model, baseDir)))];
  },
  async run(ctx, params) {
    const tf = await useTf(ctx.log);
    const dataset = await openDataset(ctx.input('shards').dir);
    try {
      const labelsAll = await dataset.labels(params.split);
      const indices = stratifiedSample(labelsAll, params.max_images, deriveSeed(ctx.seed, 'sample'));
      const labels = Int32Array.from(indices, (i) => labelsAll[i]);
      const numClasses = dataset.classes.length;
      const smallest = Math.min(...Array.from({ length: numClasses }, (_, c) => labels.filter((l) => l === c).length));
      if (smallest < params.folds) {
        throw new StageError('rank_bad_input', `split '${params.split}' has a class with ${smallest} image(s), fewer than folds (${params.folds}); lower folds or add images`, { split: params.split, smallest, folds: params.folds });
      }
      const scores: CandidateScore[] = [];
      for (const [done, candidate] of params.models.entries()) {
        ctx.progress({ unit: 'models', done, total: params.models.length, info: { model: candidate.name } });
        scores.push(await scoreCandidate(tf, ctx, params, candidate, dataset, indices, labels, numClasses));
        ctx.log.info({ candidate: candidate.name, logme: scores.at(-1)!.logme, probe: scores.at(-1)!.probe.accuracy }, 'candidate scored');
      }
      const key = (s: CandidateScore) => (params.select === 'probe' ? s.probe.accuracy : s.logme);
      scores.sort((a, b) => key(b) - key(a) || b.logme - a.logme);
      const ranking: Ranking = { format: 'finetune-ranking', version: 1, select: params.select, split: params.split, images: indices.length, best: scores[0].name, candidates: scores };
      await writeFile(path.join(ctx.outDir, RANKING_FILE), JSON.stringify(ranking, null, 1) + '\n');
      const table = formatRanking(ranking);
      await writeFile(path.join(ctx.outDir, RANKING_REPORT), table);
      ctx.log.info({ best: ranking.best, table }, 'bases ranked');
      const byProbe = [...scores].sort((a, b) => b.probe.accuracy - a.probe.accuracy);
      const warnings = scores.flatMap((c) => (c.bn?.warning ? [c.bn.warning] : []));
      for (const warning of warnings) ctx.log.warn(warning);
      return {
        metrics: {
          best: ranking.best,
          best_logme: round(scores[0].logme, 4),
          best_probe_acc: round(scores[0].probe.accuracy, 4),
          candidates: scores.length,
          images: indices.length,
          // Do the two scores pick the same base? When not, the table is worth a look.
          agree: byProbe[0].name === scores[0].name,
          ranking: scores.map((s) => ({ name: s.name, logme: round(s.logme, 4), probe_acc: round(s.probe.accuracy, 4), probe_std: round(s.probe.std, 4) })) as Json,
          report: RANKING_REPORT,
          ...(warnings.length ? { warnings } : {}),
        },
      };
    } finally {
      await dataset.close();
    }
  },
};

/** Loads one candidate, computes its pooled features on the sample, scores them. */
async function scoreCandidate(tf: Tf, ctx: StageContext<RankBasesParams>, params: RankBasesParams, candidate: CandidateParams, dataset: ShardDataset, indices: Int32Array, labels: Int32Array, numClasses: number): Promise<CandidateScore> {
  const t0 = performance.now();
  const maxDownloadBytes = params.max_download_mb !== undefined ? params.max_download_mb * 1024 * 1024 : undefined;
  const spec: BaseSpec = { model: candidate.model, ...(candidate.cut ? { cut: candidate.cut } : {}), ...(candidate.input_shape ? { input_shape: candidate.input_shape } : {}), init: candidate.init ?? 'pretrained' };
  const initSeed = deriveSeed(ctx.seed, 'init', candidate.name);
  const base = await loadBaseModel(spec, { baseDir: ctx.baseDir, seed: initSeed, signal: ctx.signal, log: ctx.log, maxDownloadBytes });
  let featureModel: LayersModel | undefined;
  try {
    const inputShape = base.model.inputs[0].shape.slice(1) as number[];
    if (inputShape.length !== 3) throw new StageError('rank_bad_input', `candidate '${candidate.name}' takes input [${inputShape.join(', ')}], not an image [h, w, c]`, { candidate: candidate.name });
    const [height, width, channels] = inputShape;
    const [recordH, recordW, recordC] = dataset.recordShape;
    if (recordC !== channels && !(recordC === 1 && channels === 3)) {
      throw new StageError('rank_bad_input', `candidate '${candidate.name}' takes ${channels}-channel images and the shards hold ${recordC}-channel ones; set preprocess channels: ${channels}, or the candidate's input_shape: [${height}, ${width}, ${recordC}]`, { candidate: candidate.name });
    }
    const normalize = candidate.normalize ?? base.recordedPreprocess?.normalize.name ?? dataset.spec.normalize.name;
    const norm = resolveNormalization(normalize, recordC as 1 | 3);
    featureModel = await pooledFeatures(base.model);
    const outLayer = featureModel.outputs[0].sourceLayer.name;
    const runner = await createFrozenRunner(tf, featureModel, featureModel, { from: null, to: [outLayer] }, { log: ctx.log });
    const d = featureModel.outputs[0].shape[1] as number;
    const features = new Float32Array(indices.length * d);
    // Normalized records -> the base's input: a grayscale channel repeated, another size resized.
    const toInput = (normalized: Float32Array) => {
      const count = normalized.length / (recordH * recordW * recordC);
      let x = recordC !== channels ? repeatChannel(normalized, channels) : normalized;
      if (recordH !== height || recordW !== width) x = resize(tf, x, [count, recordH, recordW, channels], [height, width]);
      return { x, shape: [count, height, width, channels] };
    };
    try {
      for (let start = 0; start < indices.length; start += params.batch) {
        if (ctx.signal.aborted) throw new AbortedError();
        const batch = indices.subarray(start, Math.min(indices.length, start + params.batch));
        const [out] = await runner.run([toInput(normalizePixels(await dataset.readRecords(params.split, batch), norm))]);
        features.set(out, start * d);
      }
    } finally {
      await runner.dispose();
    }
    // A base that records no preprocessing: does its first BatchNorm agree with this normalization?
    let bn: CandidateScore['bn'];
    if (!base.recordedPreprocess && spec.init !== 'random') {
      const sample = indices.filter((_, i) => i % Math.max(1, Math.floor(indices.length / BN_SAMPLE)) === 0).slice(0, BN_SAMPLE);
      const stats = await discrepancyOnImages(tf, base.model, { raw: await dataset.readRecords(params.split, sample), count: sample.length, shape: dataset.recordShape, prepare: toInput });
      if (stats) {
        const judged = judgeNormalization(stats, normalize);
        bn = { layer: stats.layer, best: judged.best, discrepancy: Object.fromEntries(Object.entries(stats.discrepancy).map(([k, v]) => [k, round(v, 3)])) as Record<NormalizeName, number>, ...(judged.mismatch ? { warning: `candidate '${candidate.name}': ${judged.mismatch}; its scores are for normalize: ${normalize}: set normalize: ${judged.best} on it` } : {}) };
      }
    }
    const featureSeconds = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const evidence = logme(features, indices.length, d, labels, numClasses);
    const probe = linearProbe(features, indices.length, d, labels, numClasses, { folds: params.folds, ridge: params.ridge, seed: deriveSeed(ctx.seed, 'probe') });
    const paramCount = base.model.countParams();
    return {
      name: candidate.name,
      spec,
      init_seed: initSeed,
      normalize,
      logme: evidence.score,
      probe,
      feature_seconds: round(featureSeconds, 3),
      score_seconds: round((performance.now() - t1) / 1000, 3),
      features: d,
      params: paramCount,
      weight_bytes: paramCount * 4,
      input_shape: inputShape,
      engine: runner.engine,
      ...(bn ? { bn } : {}),
    };
  } finally {
    disposeModels(featureModel, ...base.made);
  }
}

/** The base with its output global-average-pooled (a feature map) or flattened (anything else but a vector). */
async function pooledFeatures(model: LayersModel): Promise<LayersModel> {
  const tfl = await useLayers();
  const out = model.outputs[0] as SymbolicTensor;
  if (out.shape.length === 2) return tfl.model({ inputs: model.inputs, outputs: out, name: `${model.name}_features` });
  const taken = new Set(model.layers.map((l) => l.name));
  let name = 'rank_features';
  for (let i = 1; taken.has(name); i++) name = `rank_features_${i}`;
  const layer = out.shape.length === 4 ? tfl.layers.globalAveragePooling2d({ name }) : tfl.layers.flatten({ name });
  return tfl.model({ inputs: model.inputs, outputs: layer.apply(out) as SymbolicTensor, name: `${model.name}_features` });
}

/** One-channel NHWC values repeated onto `channels` channels. */
function repeatChannel(x: Float32Array, channels: number): Float32Array {
  const out = new Float32Array(x.length * channels);
  for (let i = 0; i < x.length; i++) out.fill(x[i], i * channels, (i + 1) * channels);
  return out;
}

/** Bilinear resize of an NHWC batch (the base takes another size than the shards hold). */
function resize(tf: Tf, x: Float32Array, shape: [number, number, number, number], size: [number, number]): Float32Array {
  const resized = tf.tidy(() => tf.image.resizeBilinear(tf.tensor4d(x, shape), size));
  try {
    return resized.dataSync() as Float32Array;
  } finally {
    resized.dispose();
  }
}

/**
 * At most `max` indices, sorted: all when there are that few, else each class's share (at
 * least one per class), drawn in a seeded random order.
 */
export function stratifiedSample(labels: Int32Array, max: number, seed: number): Int32Array {
  if (labels.length <= max) return Int32Array.from(labels, (_, i) => i);
  const random = createRandom(seed);
  const byClass = new Map<number, number[]>();
  labels.forEach((label, i) => byClass.set(label, [...(byClass.get(label) ?? []), i]));
  const picked: number[] = [];
  for (const label of [...byClass.keys()].sort((a, b) => a - b)) {
    const members = random.shuffle(byClass.get(label)!);
    picked.push(...members.slice(0, Math.max(1, Math.floor((members.length * max) / labels.length))));
  }
  return Int32Array.from(picked.sort((a, b) => a - b));
}

/** The ranking as a Markdown table, best first. */
export function formatRanking(ranking: Ranking): string {
  const lines = [
    `Ranked by ${ranking.select === 'probe' ? 'probe accuracy' : 'LogME'} on ${ranking.images} '${ranking.split}' images; best: **${ranking.best}**`,
    '',
    '| rank | base | LogME | probe accuracy | features (s) | weights (MiB) | params | feature dim | normalize | engine |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...ranking.candidates.map((c, i) =>
      `| ${i + 1} | ${c.name} | ${c.logme.toFixed(4)} | ${c.probe.accuracy.toFixed(3)} ± ${c.probe.std.toFixed(3)} | ${c.feature_seconds.toFixed(2)} | ${(c.weight_bytes / 2 ** 20).toFixed(2)} | ${c.params} | ${c.features} | ${c.normalize}${c.bn && c.bn.best !== c.normalize ? ` (BatchNorm statistics suggest ${c.bn.best})` : ''} | ${c.engine} |`,
    ),
  ];
  return lines.join('\n') + '\n';
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
