/**
 * Reads what a run left in the artifact store — its summary, its log and the report files of
 * every stage's artifact — into `ReportInputs`, the literal data `buildReportModel` turns into
 * the report. Nothing here knows a stage by kind: a section appears because an artifact holds
 * the file it is made from (`history.json`, `evaluation.json`, `dataset.json` + `report.json`,
 * a model's `summary.json`).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../runtime/errors.js';
import type { RunSummary, StageSummary } from '../runtime/execute.js';
import { readJsonMaybe } from '../runtime/fsutil.js';
import { closest } from '../runtime/suggest.js';
import { ArtifactStore, ENTRY_FILE, listFiles } from '../runtime/store.js';

/** One epoch of a training stage's `history.json` (train-head, fine-tune, prune recovery). */
export interface EpochRecord {
  /** 0-based epoch. */
  epoch: number;
  loss: number;
  acc: number;
  valLoss?: number;
  valAcc?: number;
  lr?: number;
  seconds?: number;
}

/** The parts of an `evaluation.json` the report shows. */
export interface EvaluationFile {
  split: string;
  records: number;
  classes: string[];
  accuracy: number;
  loss: number;
  roc_auc?: number | null;
  macro?: { precision: number; recall: number; f1: number };
  per_class: { class: string; precision: number; recall: number; f1: number; support: number }[];
  confusion: { matrix: number[][] };
  misclassified?: { total: number; listed: number; records: MisclassifiedRecord[] };
}

/** One misclassified record as evaluate lists it. */
export interface MisclassifiedRecord {
  /** Record index within the split. */
  index: number;
  /** Path relative to the dataset root, when evaluate could name it. */
  file?: string;
  label: string;
  predicted: string;
  /** Probability of the predicted class. */
  probability: number;
  labelProbability?: number;
}

/** An ingest artifact's `dataset.json` header (the parts shown). */
export interface DatasetFile {
  root?: string;
  classes: string[];
  counts: Record<string, number>;
  classCounts: Record<string, number[]>;
  splitSource?: string;
}

/** An ingest artifact's `report.json`. */
export interface IngestReportFile {
  skipped: { path: string; reason: string }[];
  ignored: { path: string; reason: string }[];
  emptyClasses: unknown[];
  missingFromSplit: unknown[];
  duplicates: unknown[];
  notes: string[];
}

/** A model artifact's `summary.json` (the parts shown). */
export interface ModelSummaryFile {
  params?: number;
  trainableParams?: number;
  weightBytes?: number;
  layers?: number;
}

/** One stage of the run with what its artifact holds. */
export interface StageArtifact {
  summary: StageSummary;
  /** The artifact's entry directory in the store (`cache/<key>/`). */
  dir: string;
  /** Whether the entry is still in the store (gc may have removed it). */
  present: boolean;
  /** The entry's files (relative paths, `_entry.json` left out). */
  files: string[];
  history?: EpochRecord[];
  evaluation?: EvaluationFile;
  dataset?: DatasetFile;
  ingestReport?: IngestReportFile;
  model?: ModelSummaryFile;
  /** Seconds from the run's start to the stage's start, from the run's log. */
  startOffset?: number;
}

/** A thumbnail of one misclassified record: a `data:` URI, or why there is none. */
export type Thumbnail = { uri: string; source: 'image' | 'record' } | { missing: string };

/** Everything the report is made from, read from the store. */
export interface ReportInputs {
  summary: RunSummary;
  /** The run's folder in the store. */
  runDir: string;
  stages: StageArtifact[];
  /** The previous run of the same pipeline (`summary.previous`), when it is still readable. */
  previous?: RunSummary;
  /** Thumbnails of misclassified records, keyed `<stage>:<index>`. */
  thumbnails: Record<string, Thumbnail>;
}

/**
 * The run `requested` names (a run id, `latest`, or undefined for the newest run), with a
 * readable summary; a `UsageError` (exit 2) naming what exists otherwise.
 */
export async function findRun(store: ArtifactStore, requested: string | undefined): Promise<RunSummary> {
  const ids = await store.listRuns();
  if (!ids.length) throw new UsageError(`no runs in the artifact store ${store.root}; run a pipeline first, or pass --artifacts DIR`, 'no_runs');
  if (requested === undefined || requested === 'latest') {
    for (const id of ids) {
      const summary = await store.readSummary(id);
      if (summary.ok) return summary.value;
    }
    throw new UsageError(`no run in ${store.root} has a readable summary.json (every run was killed or damaged; see \`pipeline runs\`)`, 'no_runs');
  }
  const matches = ids.filter((id) => id === requested || id.startsWith(requested));
  if (matches.length !== 1) {
    const hint = matches.length > 1 ? `; it is the start of ${matches.length} runs (${matches.slice(0, 3).join(', ')}…): give more of it` : closestHint(requested, ids);
    throw new UsageError(`run '${requested}' is not in the artifact store ${store.root}${hint}`, 'run_not_found');
  }
  const summary = await store.readSummary(matches[0]);
  if (!summary.ok) throw new UsageError(`run ${matches[0]} has no usable summary (summary.json ${summary.reason}); it was killed or damaged, see runs/${matches[0]}/log.jsonl`, 'run_not_found');
  return summary.value;
}

function closestHint(requested: string, ids: string[]): string {
  const near = closest(requested, ids);
  return near ? ` (did you mean '${near}'?)` : `; \`pipeline runs\` lists them (newest: ${ids[0]})`;
}

/** Reads one stage's artifact: which files it holds and the report files among them. */
export async function readStageArtifact(store: ArtifactStore, summary: StageSummary): Promise<StageArtifact> {
  const dir = store.entryDir(summary.key);
  const meta = await readJsonMaybe<{ files?: Record<string, unknown> }>(path.join(dir, ENTRY_FILE));
  const files = meta?.files ? Object.keys(meta.files).sort() : (await listFiles(dir).catch(() => [] as string[])).filter((f) => f !== ENTRY_FILE);
  const read = <T>(name: string): Promise<T | undefined> => (files.includes(name) ? readJsonMaybe<T>(path.join(dir, name)) : Promise.resolve(undefined));
  const artifact: StageArtifact = { summary, dir, present: meta !== undefined, files };
  const history = await read<unknown>('history.json');
  if (Array.isArray(history) && history.every((h) => typeof h?.epoch === 'number' && typeof h?.loss === 'number')) artifact.history = history as EpochRecord[];
  const evaluation = await read<EvaluationFile>('evaluation.json');
  if (evaluation && Array.isArray(evaluation.classes) && Array.isArray(evaluation.confusion?.matrix)) artifact.evaluation = evaluation;
  const dataset = await read<DatasetFile>('dataset.json');
  if (dataset && Array.isArray(dataset.classes)) artifact.dataset = dataset;
  const ingestReport = dataset ? await read<IngestReportFile>('report.json') : undefined;
  if (ingestReport && Array.isArray(ingestReport.skipped)) artifact.ingestReport = ingestReport;
  const model = files.includes('model.json') ? await read<ModelSummaryFile>('summary.json') : undefined;
  if (model && typeof model.weightBytes === 'number') artifact.model = model;
  return artifact;
}

/** Seconds from the run's start to each stage's `stage start` (or first) line in `log.jsonl`. */
export async function readStartOffsets(runDir: string, started: string): Promise<Record<string, number>> {
  const text = await readFile(path.join(runDir, 'log.jsonl'), 'utf8').catch(() => '');
  const t0 = Date.parse(started);
  const offsets: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.includes('"stage"')) continue;
    let entry: { stage?: unknown; time?: unknown; msg?: unknown };
    try {
      entry = JSON.parse(line);
    } catch {
      continue; // a line cut short by a kill
    }
    if (typeof entry.stage !== 'string' || typeof entry.time !== 'number' || entry.msg === 'stage planned') continue;
    if (entry.msg === 'stage start' || offsets[entry.stage] === undefined) offsets[entry.stage] = Math.max(0, (entry.time - t0) / 1000);
  }
  return offsets;
}

/** Reads a run and its stages' artifacts (no thumbnails: `attachThumbnails` adds them). */
export async function collectRun(store: ArtifactStore, summary: RunSummary): Promise<ReportInputs> {
  const runDir = store.runDir(summary.run);
  const offsets = await readStartOffsets(runDir, summary.started);
  const stages = await Promise.all(summary.stages.map((s) => readStageArtifact(store, s)));
  for (const stage of stages) stage.startOffset = offsets[stage.summary.id];
  const previousSummary = summary.previous ? await store.readSummary(summary.previous) : undefined;
  return { summary, runDir, stages, previous: previousSummary?.ok ? previousSummary.value : undefined, thumbnails: {} };
}
