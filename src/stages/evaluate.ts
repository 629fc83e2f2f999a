/**
 * `evaluate`: scores a classifier (`model`) on one split of the `shards` it was trained for and
 * writes `evaluation.json` (every metric, a per-class table, the confusion matrix with class
 * names, the misclassified records). An optional `gate` fails the run when a metric is below
 * its minimum; the metrics are still reported.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import paramsSchema from '../../schemas/stages/evaluate.schema.json' with { type: 'json' };
import { readDatasetEntries, readDatasetHeader } from '../data/dataset.js';
import { openDataset, type ShardDataset } from '../data/shards.js';
import type { PreprocessSpec } from '../data/spec.js';
import { readModelArtifact } from '../ml/artifact.js';
import { useTf } from '../ml/backend.js';
import { passMetrics, prepareSources, type TrainingSources } from '../ml/sources.js';
import { batchInputs } from '../ml/train.js';
import { scoreClassifier, type ClassifierScores } from '../ml/metrics.js';
import { AbortedError, GateError, StageError } from '../runtime/errors.js';
import { requireHead, requireInputShape, requireOutputPerClass, requireSameClasses } from './guards.js';
import type { Json, Metrics, StageContext, StageDefinition } from '../runtime/types.js';

/** Metrics a `gate` may bound from below (all are "higher is better", in [0, 1]). */
export const GATE_METRICS = ['accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'top_k_accuracy', 'roc_auc'] as const;
/** One of `GATE_METRICS`. */
export type GateMetric = (typeof GATE_METRICS)[number];

/** `with:` of an `evaluate` stage (see schemas/stages/evaluate.schema.json). */
export interface EvaluateParams {
  /** Split to score. Default `val`. */
  split: string;
  /** Records per prediction batch. Default 32. */
  batch: number;
  /** k of `top_k_accuracy`, capped at the class count. Default 5. */
  top_k: number;
  /** Minimum per metric; any metric below fails the stage with a `GateError`. Default `{}` (no gate). */
  gate: Partial<Record<GateMetric, number>>;
}

/**
 * Random augmented views the training stages cache by default (their `augment_views`): asking
 * for the same lets evaluate reuse their frozen pass (only the val split is read).
 */
const EVALUATE_AUGMENT_VIEWS = 4;

/** File name of the evaluation report in the artifact. */
export const EVALUATION_FILE = 'evaluation.json';

/** At most this many misclassified records are listed in `evaluation.json` (all are counted). */
export const MISCLASSIFIED_LIMIT = 1000;

/** One record the model got wrong. */
export interface Misclassified {
  /** Record index within the split (the shard reader's `indices`). */
  index: number;
  /** The image, relative to the dataset root, when the upstream dataset is reachable. */
  file?: string;
  /** True class name. */
  label: string;
  /** Predicted class name. */
  predicted: string;
  /** Probability the model gave the predicted class. */
  probability: number;
  /** Probability the model gave the true class. */
  labelProbability: number;
}

/** One gate bound that was not met. */
export interface GateFailure {
  metric: GateMetric;
  value: number;
  minimum: number;
}

export const evaluate: StageDefinition<EvaluateParams> = {
  kind: 'evaluate',
  version: 2,
  description: 'Score a classifier on a split: accuracy, loss, per-class P/R/F1, confusion, top-k, ROC-AUC; optional gate',
  paramsSchema,
  consumes: ['shards', 'model'],
  provides: ['evaluation'],
  resource: 'tf',

  async run(ctx, params) {
    const dataset = await openDataset(ctx.input('shards').dir);
    let model: LayersModel | undefined;
    try {
      const split = params.split;
      if (!dataset.splits[split]) {
        throw new StageError('split_missing', `the shards have no '${split}' split to evaluate on (available: ${Object.keys(dataset.splits).join(', ') || 'none'})`, {
          split,
          available: Object.keys(dataset.splits),
        });
      }
      const artifact = await readModelArtifact(ctx.input('model').dir);
      model = artifact.model;
      const classes = dataset.classes;
      checkCompatible(model, artifact.info.classes, artifact.info.preprocess, dataset, ctx);
      if (params.gate?.roc_auc !== undefined && classes.length !== 2) {
        throw new StageError('gate_metric_unavailable', `gate.roc_auc needs exactly two classes; this dataset has ${classes.length}`, { metric: 'roc_auc', classes: classes.length });
      }

      const { probabilities, sources } = await predictSplit(ctx, model, dataset, split, params.batch, artifact.info.frozenFrom);
      const labels = await dataset.labels(split);
      const scores = scoreClassifier(probabilities, labels, classes.length, params.top_k);
      const files = await splitFiles(ctx, dataset, split);
      const misclassified = listMisclassified(scores, probabilities, labels, classes, files);
      const wrong = scores.count - scores.confusion.reduce((sum, row, c) => sum + row[c], 0);
      const metrics = { ...summarize(scores, classes), ...passMetrics(sources) };

      await writeFile(
        join(ctx.outDir, EVALUATION_FILE),
        JSON.stringify(
          {
            split,
            records: scores.count,
            classes,
            accuracy: scores.accuracy,
            loss: scores.loss,
            top_k: scores.topK,
            top_k_accuracy: scores.topKAccuracy,
            roc_auc: scores.rocAuc,
            macro: scores.macro,
            per_class: classes.map((name, c) => ({ class: name, ...scores.perClass[c] })),
            confusion: { rows: 'true class', columns: 'predicted class', classes, matrix: scores.confusion },
            misclassified: { total: wrong, listed: misclassified.length, records: misclassified },
            gate: params.gate,
          },
          null,
          1,
        ) + '\n',
      );
      ctx.log.info({ split, records: scores.count, accuracy: metrics.accuracy, loss: metrics.loss }, 'evaluated');

      const failed = checkGate(params.gate, scores);
      if (failed.length) {
        const text = failed.map((f) => `${f.metric} ${round(f.value)} < ${f.minimum}`).join(', ');
        throw new GateError('gate_failed', `gate failed on '${split}': ${text}`, { metrics, failed: failed as unknown as Json });
      }
      return { metrics };
    } finally {
      model?.dispose();
      await dataset.close();
    }
  },
};

/**
 * Refuses to score a model on data it was not built for: same classes in the same order, an
 * input shape equal to the records' shape, one output per class. A different preprocessing
 * (normalization, fit) only warns: the numbers would be valid for that data, just not comparable.
 */
function checkCompatible(model: LayersModel, modelClasses: string[] | undefined, spec: PreprocessSpec | undefined, dataset: ShardDataset, ctx: StageContext<EvaluateParams>): void {
  requireHead(modelClasses, 'run train-head before evaluate', { model: ctx.input('model').id });
  requireSameClasses(modelClasses, dataset.classes, 'evaluate on data from the same ingest');
  requireInputShape(model, dataset.recordShape, 'the shards hold records of', "preprocess to the model's size");
  requireOutputPerClass(model, modelClasses);
  if (spec && !sameDecoding(spec, dataset.spec)) {
    ctx.log.warn({ model: spec, shards: dataset.spec }, 'the shards were preprocessed differently from the training data');
  }
}

function sameDecoding(a: PreprocessSpec, b: PreprocessSpec): boolean {
  const key = (s: PreprocessSpec) => JSON.stringify([s.size, s.fit, s.channels, s.background, s.normalize]);
  return key(a) === key(b);
}

/** Softmax rows of every record of the split, in record order. */
async function predictSplit(ctx: StageContext<EvaluateParams>, model: LayersModel, dataset: ShardDataset, split: string, batchSize: number, frozenFrom: string | undefined): Promise<{ probabilities: Float32Array; sources: TrainingSources }> {
  const tf = await useTf();
  // The frozen bottom's activations are usually cached by the training stages already.
  const sources = await prepareSources(tf, ctx, model, dataset, { batch: batchSize, augmentViews: EVALUATE_AUGMENT_VIEWS, frozenFrom });
  const classCount = dataset.classes.length;
  const source = sources.splits[split];
  const out = new Float32Array(source.count * classCount);
  // The view prints the stage id before the label: the label says only what is counted.
  const scoring = ctx.track(`score ${split}`, Math.ceil(source.count / batchSize));
  let index = 0;
  try {
    for await (const batch of source.batches(0, { shuffle: false })) {
      if (ctx.signal.aborted) throw new AbortedError();
      const rows = tf.tidy(() => (sources.trainee.predict(batchInputs(tf, batch)) as Tensor).dataSync() as Float32Array);
      for (let row = 0; row < batch.count; row++, index++) {
        const values = rows.subarray(row * classCount, (row + 1) * classCount);
        const sum = values.reduce((a, b) => a + b, 0);
        if (!values.every((p) => p >= 0 && p <= 1) || Math.abs(sum - 1) > 1e-3) {
          throw new StageError('not_probabilities', `the model's outputs for record ${index} are not probabilities (sum ${sum}); its last layer must be a softmax`, {
            index,
            outputs: Array.from(values),
          });
        }
        out.set(values, index * classCount);
      }
      scoring.tick();
    }
  } finally {
    scoring.done();
  }
  return { probabilities: out, sources };
}

/**
 * File names of the split's records, when an upstream `dataset` is reachable and matches the
 * shards (same classes and record count; records are in `files.jsonl` order). Otherwise null.
 */
async function splitFiles(ctx: StageContext<EvaluateParams>, dataset: ShardDataset, split: string): Promise<string[] | null> {
  const source = ctx.inputs.find((input) => input.provides.includes('dataset'));
  if (!source) return null;
  try {
    const header = await readDatasetHeader(source.dir);
    if (header.classes.join('\n') !== dataset.classes.join('\n')) return null;
    const files: string[] = [];
    for await (const entry of readDatasetEntries(source.dir, header)) if (entry.split === split) files.push(entry.path);
    return files.length === dataset.splits[split].count ? files : null;
  } catch (error) {
    ctx.log.warn({ err: error }, 'cannot read the dataset file list; misclassified records are listed without names');
    return null;
  }
}

function listMisclassified(scores: ClassifierScores, probabilities: Float32Array, labels: Int32Array, classes: string[], files: string[] | null): Misclassified[] {
  const out: Misclassified[] = [];
  const classCount = classes.length;
  for (let i = 0; i < labels.length && out.length < MISCLASSIFIED_LIMIT; i++) {
    const predicted = scores.predicted[i];
    if (predicted === labels[i]) continue;
    out.push({
      index: i,
      ...(files ? { file: files[i] } : {}),
      label: classes[labels[i]],
      predicted: classes[predicted],
      probability: round(probabilities[i * classCount + predicted]),
      labelProbability: round(probabilities[i * classCount + labels[i]]),
    });
  }
  return out;
}

/** The summary's metrics: rounded to 4 decimals so the run summary stays readable. */
function summarize(scores: ClassifierScores, classes: string[]): Metrics {
  const perClass: Record<string, Json> = {};
  classes.forEach((name, c) => {
    const s = scores.perClass[c];
    perClass[name] = { precision: round(s.precision), recall: round(s.recall), f1: round(s.f1), support: s.support };
  });
  return {
    records: scores.count,
    accuracy: round(scores.accuracy),
    loss: round(scores.loss),
    macro_precision: round(scores.macro.precision),
    macro_recall: round(scores.macro.recall),
    macro_f1: round(scores.macro.f1),
    top_k: scores.topK,
    top_k_accuracy: round(scores.topKAccuracy),
    ...(scores.rocAuc !== null ? { roc_auc: round(scores.rocAuc) } : {}),
    per_class: perClass,
    confusion: scores.confusion,
  };
}

/** Compares unrounded values, so a gate at 0.9 is not passed by 0.89996. */
function checkGate(gate: Partial<Record<GateMetric, number>>, scores: ClassifierScores): GateFailure[] {
  const values: Record<GateMetric, number | null> = {
    accuracy: scores.accuracy,
    macro_precision: scores.macro.precision,
    macro_recall: scores.macro.recall,
    macro_f1: scores.macro.f1,
    top_k_accuracy: scores.topKAccuracy,
    roc_auc: scores.rocAuc,
  };
  const failed: GateFailure[] = [];
  for (const metric of GATE_METRICS) {
    const minimum = gate[metric];
    if (minimum === undefined) continue;
    // roc_auc is null when the split lacks one of the two classes: that cannot pass a bound.
    const value = values[metric] ?? Number.NaN;
    if (!(value >= minimum)) failed.push({ metric, value, minimum });
  }
  return failed;
}

function round(value: number): number {
  return Math.round(value * 10_000) / 10_000;
}
