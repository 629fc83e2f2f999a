/**
 * `ReportInputs` -> `ReportModel`: what the run report says, as plain data, before any HTML,
 * Markdown or chart is drawn. Pure: tests call it on literal inputs. A section is present when
 * the run holds its data; what is missing is said in `notes` rather than left out silently.
 */
import type { EpochRecord, MisclassifiedRecord, ReportInputs, StageArtifact, Thumbnail } from './collect.js';
import { thumbnailKey } from './thumbnails.js';

/** One point of a training curve. */
export interface CurvePoint {
  /** 1-based epoch across all the run's training stages, in run order (head 1-15, fine-tune 16-30, …). */
  epoch: number;
  /** 1-based epoch within its stage. */
  stageEpoch: number;
  stage: string;
  loss: number;
  acc: number;
  valLoss?: number;
  valAcc?: number;
}

/** A training stage's per-epoch history. */
export interface CurveSeries {
  stage: string;
  kind: string;
  points: CurvePoint[];
}

/** One misclassified record as the report shows it. */
export interface MisclassifiedView extends MisclassifiedRecord {
  /** Absent for records past the thumbnail limit. */
  thumbnail?: Thumbnail;
}

export interface EvaluationView {
  stage: string;
  split: string;
  records: number;
  accuracy: number;
  loss: number;
  rocAuc?: number;
  macro?: { precision: number; recall: number; f1: number };
  classes: string[];
  perClass: { class: string; precision: number; recall: number; f1: number; support: number }[];
  /** Rows: true class; columns: predicted class. */
  confusion: number[][];
  misclassified: { total: number; listed: number; records: MisclassifiedView[] };
}

export interface IngestView {
  stage: string;
  classes: string[];
  /** Per split with records: its count per class (in `classes` order) and total. */
  splits: { split: string; perClass: number[]; total: number }[];
  skipped: { path: string; reason: string }[];
  ignored: { path: string; reason: string }[];
  emptyClasses: number;
  missingFromSplit: number;
  duplicates: number;
  notes: string[];
  /** Full path of the ingest artifact's `report.json`. */
  reportPath: string;
}

export interface TimelineRow {
  id: string;
  uses: string;
  status: string;
  /** Seconds from the run's start; undefined when the log does not say. */
  start?: number;
  seconds: number;
  engines: Record<string, string>;
  reasons: string[];
  error?: string;
  /** The artifact's entry directory. */
  dir: string;
}

export interface ModelSizeRow {
  stage: string;
  kind: string;
  params?: number;
  trainableParams?: number;
  weightBytes: number;
}

/** A stage that reports sizes before and after (prune). */
export interface PruningView {
  stage: string;
  method?: string;
  sparsity?: number;
  bytesBefore: number;
  bytesAfter: number;
  paramsBefore?: number;
  paramsAfter?: number;
  nonzeroParamsAfter?: number;
  latencyMsBefore?: number;
  latencyMsAfter?: number;
  valAccBefore?: number;
  valAccAfter?: number;
}

export interface ChangeRow {
  stage: string;
  metric: string;
  before: number;
  after: number;
}

export interface KeyMetric {
  stage: string;
  metric: string;
  value: number;
  /** The previous run's value (from its summary, or this run's `changes`). */
  before?: number;
}

export interface ReportModel {
  run: { id: string; pipeline: string; status: string; started: string; seconds: number; backend: string; previous?: string };
  keyMetrics: KeyMetric[];
  curves: CurveSeries[];
  evaluations: EvaluationView[];
  ingest: IngestView[];
  timeline: TimelineRow[];
  modelSizes: ModelSizeRow[];
  pruning: PruningView[];
  changes: ChangeRow[];
  /** What the report could not show, and why. */
  notes: string[];
}

/** Metrics of an evaluation shown in the key-metrics table, in order. */
const EVALUATION_METRICS = ['accuracy', 'loss', 'macro_f1', 'macro_precision', 'macro_recall', 'roc_auc', 'top_k_accuracy'];
/** Metrics of a training stage shown in the key-metrics table. */
const TRAINING_METRICS = ['val_acc', 'val_loss'];

export function buildReportModel(inputs: ReportInputs): ReportModel {
  const { summary } = inputs;
  const notes: string[] = [];
  const changes = summary.stages.flatMap((s) => Object.entries(s.changes ?? {}).map(([metric, c]) => ({ stage: s.id, metric, before: c.before, after: c.after })));
  if (summary.previous && !inputs.previous) notes.push(`the previous run ${summary.previous} is no longer in the store: its metrics are compared from this run's summary only`);
  if (!summary.previous) notes.push('no previous run of this pipeline to compare with');
  for (const stage of inputs.stages) {
    if (!stage.present && stage.summary.status !== 'skipped' && stage.summary.status !== 'failed' && stage.summary.status !== 'pruned') notes.push(`the artifact of '${stage.summary.id}' is no longer in the store (removed by gc?): its report files are missing`);
  }
  return {
    run: { id: summary.run, pipeline: summary.pipeline, status: summary.status, started: summary.started, seconds: summary.seconds, backend: summary.backend, previous: summary.previous },
    keyMetrics: buildKeyMetrics(inputs),
    curves: buildCurves(inputs.stages, notes),
    evaluations: inputs.stages.filter((s) => s.evaluation).map((s) => buildEvaluation(s, inputs.thumbnails)),
    ingest: inputs.stages.filter((s) => s.dataset).map(buildIngest),
    timeline: inputs.stages.map((s) => ({
      id: s.summary.id,
      uses: s.summary.uses,
      status: s.summary.status,
      start: s.startOffset,
      seconds: s.summary.seconds,
      engines: summary.engines?.[s.summary.id] ?? {},
      reasons: s.summary.reasons ?? [],
      error: s.summary.error ? `${s.summary.error.message} [${s.summary.error.code}]` : undefined,
      dir: s.dir,
    })),
    modelSizes: inputs.stages.filter((s) => s.model).map((s) => ({ stage: s.summary.id, kind: s.summary.uses, params: s.model!.params, trainableParams: s.model!.trainableParams, weightBytes: s.model!.weightBytes! })),
    pruning: inputs.stages.flatMap((s) => buildPruning(s)),
    changes,
    notes,
  };
}

function numberOf(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function buildKeyMetrics(inputs: ReportInputs): KeyMetric[] {
  const out: KeyMetric[] = [];
  for (const stage of inputs.stages) {
    const { id, metrics, changes } = stage.summary;
    const previous = inputs.previous?.stages.find((s) => s.id === id)?.metrics;
    const names = stage.evaluation ? EVALUATION_METRICS : stage.history ? TRAINING_METRICS : numberOf(metrics.bytes_before) !== undefined ? ['sparsity', 'bytes_after'] : [];
    for (const metric of names) {
      const value = numberOf(metrics[metric]);
      const before = changes?.[metric]?.before ?? numberOf(previous?.[metric]);
      if (value !== undefined) out.push({ stage: id, metric, value, ...(before !== undefined ? { before } : {}) });
    }
  }
  return out;
}

function buildCurves(stages: StageArtifact[], notes: string[]): CurveSeries[] {
  const series: CurveSeries[] = [];
  let offset = 0;
  for (const stage of stages) {
    if (!stage.history) {
      // A training stage whose artifact predates history.json, or a gc'd entry.
      if (stage.present && numberOf(stage.summary.metrics.epochs_run)) notes.push(`'${stage.summary.id}' trained ${stage.summary.metrics.epochs_run} epochs but its artifact has no history.json (made by an older version): no curve for it`);
      continue;
    }
    if (!stage.history.length) continue;
    const points = stage.history.map((h: EpochRecord, i) => ({
      epoch: offset + i + 1,
      stageEpoch: h.epoch + 1,
      stage: stage.summary.id,
      loss: h.loss,
      acc: h.acc,
      ...(numberOf(h.valLoss) !== undefined ? { valLoss: h.valLoss } : {}),
      ...(numberOf(h.valAcc) !== undefined ? { valAcc: h.valAcc } : {}),
    }));
    offset += points.length;
    series.push({ stage: stage.summary.id, kind: stage.summary.uses, points });
  }
  return series;
}

function buildEvaluation(stage: StageArtifact, thumbnails: Record<string, Thumbnail>): EvaluationView {
  const e = stage.evaluation!;
  const listed = e.misclassified?.records ?? [];
  return {
    stage: stage.summary.id,
    split: e.split,
    records: e.records,
    accuracy: e.accuracy,
    loss: e.loss,
    rocAuc: numberOf(e.roc_auc),
    macro: e.macro,
    classes: e.classes,
    perClass: e.per_class,
    confusion: e.confusion.matrix,
    misclassified: {
      total: e.misclassified?.total ?? listed.length,
      listed: listed.length,
      records: listed.map((r) => ({ ...r, thumbnail: thumbnails[thumbnailKey(stage.summary.id, r.index)] })),
    },
  };
}

function buildIngest(stage: StageArtifact): IngestView {
  const d = stage.dataset!;
  const r = stage.ingestReport;
  const splits = Object.entries(d.classCounts ?? {})
    .map(([split, perClass]) => ({ split, perClass, total: perClass.reduce((a, b) => a + b, 0) }))
    .filter((s) => s.total > 0);
  return {
    stage: stage.summary.id,
    classes: d.classes,
    splits,
    skipped: r?.skipped ?? [],
    ignored: r?.ignored ?? [],
    emptyClasses: r?.emptyClasses.length ?? 0,
    missingFromSplit: r?.missingFromSplit.length ?? 0,
    duplicates: r?.duplicates.length ?? 0,
    notes: r?.notes ?? [],
    reportPath: `${stage.dir}/report.json`,
  };
}

function buildPruning(stage: StageArtifact): PruningView[] {
  const m = stage.summary.metrics;
  const bytesBefore = numberOf(m.bytes_before);
  const bytesAfter = numberOf(m.bytes_after);
  if (bytesBefore === undefined || bytesAfter === undefined) return [];
  return [
    {
      stage: stage.summary.id,
      method: typeof m.method === 'string' ? m.method : undefined,
      sparsity: numberOf(m.sparsity),
      bytesBefore,
      bytesAfter,
      paramsBefore: numberOf(m.params_before),
      paramsAfter: numberOf(m.params_after),
      nonzeroParamsAfter: numberOf(m.nonzero_params_after),
      latencyMsBefore: numberOf(m.latency_ms_before),
      latencyMsAfter: numberOf(m.latency_ms_after),
      valAccBefore: numberOf(m.val_acc_before),
      valAccAfter: numberOf(m.val_acc_after),
    },
  ];
}
