/**
 * The library API: what `import { runPipeline } from 'finetune-pipeline'` gives. Thin wrappers
 * over what the CLI runs (`src/runtime/run.ts`, `src/runtime/plan.ts`, `src/predict.ts`) with
 * the real stage registry and the TF.js backend; results are the same data the CLI prints with
 * `--json`, and failures are the typed error classes re-exported below.
 */
import path from 'node:path';
import { NO_BACKEND } from './cli.js';
import { backendUnavailable, configureBackend, describeBackend, predictBackend, type BackendPreference } from './ml/backend.js';
import { localOffload } from './distributed/local-pool.js';
import { loadExport as loadExportFolder, predictAll, type LoadedExport, type PredictBatchResult } from './predict.js';
import { StageError } from './runtime/errors.js';
import type { RunSummary, StageSummary } from './runtime/execute.js';
import { planPipeline as planStages, runPipeline as runStages } from './runtime/run.js';
import type { ProgressEvent } from './runtime/types.js';
import { stages } from './stages/index.js';

export { AbortedError, GateError, InternalError, LockPathError, LockWaitTimeoutError, PipelineError, StageError, StoreLockedError, UsageError, ValidationError } from './runtime/errors.js';
export type { ErrorCode, ValidationIssue } from './runtime/errors.js';
export type { RunSummary, StageStatus, StageSummary } from './runtime/execute.js';
export type { Json, Metrics, ProgressEvent } from './runtime/types.js';
export type { BackendPreference } from './ml/backend.js';
export type { ImageFailure, ImagePrediction, LabelProbability, PredictBatchResult } from './predict.js';
export type { PreprocessSpec } from './data/spec.js';

/** What `planPipeline` and `runPipeline` take besides the file. */
export interface PipelineOptions {
  /** Artifact store folder. Default `$PIPELINE_ARTIFACTS`, else `./artifacts` (against the current directory). */
  artifacts?: string;
  /** Overrides of the file, as `--set` takes them: `stages.train-head.with.epochs=3` (value read as YAML). */
  set?: string[];
  /** Re-run these stages even when cached (`--force`). */
  force?: string[];
  /** Re-run this stage and everything downstream of it (`--from`). */
  from?: string;
  /** Run just this stage; its upstream must be cached (`--only`). */
  only?: string;
}

/** What `runPipeline` takes. */
export interface RunPipelineOptions extends PipelineOptions {
  /** Concurrent I/O stages. Default 4. */
  jobs?: number;
  /**
   * TF.js stages at once (`--tf-jobs`): beyond the one in this process, in child processes (a
   * sweep's branches). `auto` (default): one per core on wasm/cpu (at most 4), 1 on tfjs-node(-gpu).
   */
  tfJobs?: number | 'auto';
  /** TF.js backend; default the file's `backend:` (else `auto`). One backend per process. */
  backend?: BackendPreference;
  /** Aborting it stops the running stages at their next step; finished stages are kept. */
  signal?: AbortSignal;
  /** Wait while `pipeline gc` holds the store instead of throwing `StoreLockedError`. Default false. */
  wait?: boolean;
  /** Called as the run goes: a stage starts or ends, a long step advances. */
  onEvent?(event: PipelineEvent): void;
}

/** One thing that happened during a run, for `RunPipelineOptions.onEvent`. */
export type PipelineEvent =
  /** A stage starts running (cached stages do not start; they only end). */
  | { type: 'stage-start'; stage: string; kind: string; reasons: string[] }
  /** A stage ended: ran, cached, failed or skipped, with its metrics. */
  | { type: 'stage-end'; summary: StageSummary }
  /**
   * A long step advanced (`progress.phase` `start`/`tick`/`end`: decode, frozen pass, an
   * epoch's batches) or a one-off fact (`progress.unit` `epoch`: an epoch finished, with its
   * loss and accuracy in `progress.info`; `resumed`: continued from a checkpoint).
   */
  | { type: 'progress'; stage: string; progress: ProgressEvent };

/** One stage of a plan. */
export interface PlannedStageInfo {
  id: string;
  /** The stage kind (`uses:`). */
  uses: string;
  /** `run` or `cached`. */
  action: 'run' | 'cached';
  /** Cache key (sha256 hex). */
  key: string;
  /** Why it runs ("param epochs changed (5 -> 10)") or `cached`. */
  reasons: string[];
  /** A branch a halving `select` stops early, as its cached rungs decide (`action` `cached`: it trains nothing). */
  pruned?: true;
}

/** What `planPipeline` returns: the same data as `pipeline plan --json`. */
export interface PipelinePlan {
  pipeline: string;
  /** The pipeline file, resolved. */
  file: string;
  /** Stages taking part, in topological order. */
  stages: PlannedStageInfo[];
}

/** A loaded export folder; `dispose()` frees the model's tensors. */
export interface ExportedModel extends LoadedExport {
  dispose(): void;
}

/** Options of `predict`. */
export interface PredictOptions {
  /** How many classes per image, most probable first (capped at the class count). Default 1. */
  top?: number;
  /** Images per model call. Default 32. */
  batch?: number;
}

function artifactsOf(options: PipelineOptions): string {
  return path.resolve(options.artifacts ?? process.env.PIPELINE_ARTIFACTS ?? 'artifacts');
}

function common(file: string, options: PipelineOptions) {
  return {
    file,
    registry: stages,
    overrides: options.set,
    selection: { from: options.from, only: options.only, force: options.force },
    artifacts: artifactsOf(options),
  };
}

/**
 * What a run would do and why; validates the file and reads the store, writes nothing.
 * Throws `ValidationError` (every issue, with file:line) for an invalid file or selection.
 */
export async function planPipeline(file: string, options: PipelineOptions = {}): Promise<PipelinePlan> {
  const plan = await planStages(common(file, options));
  return {
    pipeline: plan.pipeline.name,
    file: path.resolve(plan.pipeline.file),
    stages: plan.stages.map((p) => ({ id: p.stage.id, uses: p.stage.kind, action: p.action, key: p.key, reasons: p.reasons, ...(p.pruned ? { pruned: true as const } : {}) })),
  };
}

/**
 * Validates, plans and runs a pipeline, reusing cached stages; the summary is also written to
 * `runs/<id>/summary.json` in the store. A failed stage or gate does not throw: the summary's
 * `status` is `failed` (or `interrupted` after `signal` aborted) and the stage says why. Throws
 * `ValidationError` for an invalid file, `StoreLockedError` when gc holds the store, and
 * `StageError` `backend_unavailable` for a backend that is not installed.
 */
export async function runPipeline(file: string, options: RunPipelineOptions = {}): Promise<RunSummary> {
  const emit = options.onEvent;
  const useBackend = (preference: string) => {
    const why = backendUnavailable(preference as BackendPreference);
    if (why) throw new StageError('backend_unavailable', `backend ${preference}: ${why}`, { backend: preference });
    configureBackend(preference as BackendPreference);
  };
  if (options.backend !== undefined) useBackend(options.backend);
  return runStages({
    ...common(file, options),
    jobs: options.jobs,
    wait: options.wait,
    signal: options.signal,
    observer: emit && {
      stageStarted: (planned) => emit({ type: 'stage-start', stage: planned.stage.id, kind: planned.stage.kind, reasons: planned.reasons }),
      stageFinished: (summary) => emit({ type: 'stage-end', summary }),
      progress: (stage, progress) => emit({ type: 'progress', stage, progress }),
    },
    prepare: (pipeline) => {
      if (options.backend === undefined) useBackend(pipeline.backend);
    },
    backend: () => describeBackend()?.name ?? NO_BACKEND,
    offload: localOffload({
      file,
      overrides: options.set ?? [],
      artifacts: artifactsOf(options),
      registry: { url: new URL('./stages/index.js', import.meta.url).href, name: 'stages' },
      tfJobs: options.tfJobs ?? 'auto',
      backend: options.backend,
      predict: () => predictBackend().name,
    }),
  });
}

/**
 * Loads an export folder (written by the `export` stage), or the folder of its `model.json`:
 * the model, its class names and its preprocessing. Throws `StageError` `export_invalid`
 * naming what is missing or wrong. Call `dispose()` when done.
 */
export async function loadExport(dir: string): Promise<ExportedModel> {
  const loaded = await loadExportFolder(dir);
  return { ...loaded, dispose: () => loaded.model.dispose() };
}

/**
 * Classifies image files (or folders of them, searched recursively) with an export: `model`
 * is what `loadExport` returned (left loaded) or an export folder (loaded and freed here).
 * Every image is preprocessed exactly as in training. A bad image does not stop the others: it
 * is in `failures` with its reason. Throws `StageError` `export_invalid` for a bad folder.
 */
export async function predict(model: ExportedModel | LoadedExport | string, images: string[], options: PredictOptions = {}): Promise<PredictBatchResult> {
  return predictAll(model, images, { top: options.top ?? 1, batch: options.batch });
}
