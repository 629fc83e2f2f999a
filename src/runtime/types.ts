/**
 * The contract between the runtime and the stages. The runtime knows no stage by name: it only
 * sees `StageDefinition`s handed to it in a registry.
 */
import type { Logger } from 'pino';

/** A JSON value as it can appear in a pipeline file or a metrics object. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** What a stage reports when it finishes: numbers or small JSON values, shown in the summary. */
export type Metrics = Record<string, Json>;

/**
 * The kind of thing an artifact holds. A stage declares what it `consumes` and `provides`;
 * the runtime checks at validation time that every consumed type is provided by a stage in
 * the consumer's `needs` (or their ancestors), and `ctx.input(type)` finds it at run time.
 */
export type ArtifactType = 'dataset' | 'model' | 'features' | 'evaluation' | 'export' | (string & {});

/** One upstream artifact a stage can read. */
export interface StageInput {
  /** The upstream stage's id in the pipeline. */
  id: string;
  /** The upstream stage's kind. */
  kind: string;
  /** The artifact's cache key (sha256 hex). */
  key: string;
  /** Absolute path of the finished, read-only artifact directory. */
  dir: string;
  /** What the upstream stage provides. */
  provides: ArtifactType[];
  /** The upstream stage's metrics. */
  metrics: Metrics;
}

/** Progress of a long step (epochs, files); rendered on stderr for humans, logged at debug. */
export interface ProgressEvent {
  /** What is being counted ("epoch", "images"). */
  unit: string;
  /** How many are done. */
  done: number;
  /** How many there are in all, when known. */
  total?: number;
  /** Short facts to show beside the bar (loss, accuracy). */
  info?: Record<string, number | string>;
  /**
   * Set on the events of a tracked step (`StageContext.track`): `start` when it begins (a bar
   * appears), `tick` as it advances, `end` when it finished or stopped (the bar goes away).
   * Absent on a one-off report (an epoch finished, a resume), shown as a line that stays.
   */
  phase?: 'start' | 'tick' | 'end';
}

/** The counter of one long step, from `StageContext.track`. */
export interface ProgressTracker {
  /** Counts `n` more items done (default 1); `info` replaces the facts shown beside the bar. */
  tick(n?: number, info?: Record<string, number | string>): void;
  /** The step finished or stopped: its bar goes away. Calling it again does nothing. */
  done(): void;
}

/**
 * `ProgressEvent.unit` of a stage that continues from a checkpoint instead of starting over:
 * `done` is the number of epochs already finished, `total` the epochs it will reach.
 */
export const RESUMED_UNIT = 'resumed';

/** Everything a stage may use while it runs. A stage never touches the cache itself. */
export interface StageContext<P = Record<string, unknown>> {
  /** The stage's id in the pipeline. */
  id: string;
  /** The stage's kind (its `uses`). */
  kind: string;
  /** Resolved params (schema defaults applied). The same object `run` receives. */
  params: P;
  /** This stage's cache key. */
  key: string;
  /** A 32-bit seed derived from the pipeline seed and the stage id. */
  seed: number;
  /** Directory of the pipeline file; relative paths in params resolve against it. */
  baseDir: string;
  /** Empty directory the stage writes its artifact into; renamed into the cache on success. */
  outDir: string;
  /**
   * Directory that survives a killed run of this same key (checkpoints for resume); removed
   * once the stage succeeds.
   */
  workDir: string;
  /** Upstream artifacts of the stage's `needs` (direct ones first, then their ancestors). */
  inputs: StageInput[];
  /**
   * The nearest upstream artifact that provides `type`: direct `needs` first in their order,
   * then their ancestors breadth-first. Throws a `StageError` when there is none.
   */
  input(type: ArtifactType): StageInput;
  /**
   * Computes, or reuses from the cache, an intermediate artifact (e.g. a frozen base's
   * features) keyed by the stage kind, its version, `name` and `parts` (put every input that
   * determines the content in `parts`: upstream keys, the params that matter). `compute`
   * writes into an empty dir; the runtime seals it like a stage entry. Returns the entry dir.
   * This lets a stage re-run (new epochs, new lr) without recomputing what did not change.
   */
  memo(name: string, parts: Json, compute: (dir: string) => Promise<void>, options?: MemoOptions): Promise<string>;
  /**
   * Hints of the stages that depend on this one (transitively), in pipeline order: what they
   * will do, so this stage can plan shared work (e.g. `unfreeze` says which layers will train,
   * and train-head's frozen pass stops below them). Only stages with a `hints` function appear.
   */
  downstream: DownstreamHint[];
  /**
   * For a stage that joins branches (`StageDefinition.join`): one entry per stage in its
   * `needs` that succeeded (ran or came from the cache), in order, with the branch's matrix
   * coordinates and its own upstream artifacts (so the stage can find, say, the model behind a
   * branch's evaluation). Never empty: a join runs when at least one branch succeeded. Absent
   * for other stages.
   */
  branches?: BranchInput[];
  /**
   * For a joining stage: the branches in its `needs` that failed or were skipped (a failed
   * branch is not an input, so it is not in `branches`), in `needs` order; `[]` when every
   * branch succeeded. Only branches of a sweep may fail this way: a need that is not a branch
   * (a stage of the file listed as is) must succeed, or the join is skipped. Absent for other
   * stages.
   */
  failedBranches?: FailedBranch[];
  /**
   * For a joining stage that halves its sweep (`StageDefinition.halving`): the branches it
   * stopped early, with their metrics where they stopped, in `needs` order; `[]` when none
   * was. They are not in `branches`. Absent for other stages.
   */
  prunedBranches?: PrunedBranch[];
  /**
   * For a stage with a `budget` param, run as one rung of a halved sweep: stop after this many
   * of its units (epochs) of the `params[budget]` it is set to, as if interrupted there, and
   * write into `outDir` what a later run needs to continue (`resumeFrom`), with the metrics so
   * far. Absent: run to the end.
   */
  budget?: number;
  /**
   * An entry written by an earlier run of this stage with a smaller `budget` (same params, same
   * inputs): continue from where it stopped instead of starting over. The result must be the
   * same bytes as a run that never stopped.
   */
  resumeFrom?: string;
  /** Child logger bound to run, stage and kind. */
  log: Logger;
  /** Reports a one-off fact worth a line (an epoch finished, a resume); see `track` for bars. */
  progress(event: ProgressEvent): void;
  /**
   * Starts counting a long step (decoding images, a frozen pass, an epoch's batches): `label`
   * names it ("decode", "epoch 3/15"), `total` is how many items it has (when known). The
   * runtime passes its `start`/`tick`/`end` events to whoever watches the run (the CLI draws a
   * bar with rate and ETA; the library API hands them to `onEvent`). Call `done()` in `finally`.
   */
  track(label: string, total?: number): ProgressTracker;
  /** Aborted on SIGINT/SIGTERM; long loops check it between steps. */
  signal: AbortSignal;
}

/** Options of `StageContext.memo`. */
export interface MemoOptions {
  /**
   * Share the entry across stage kinds: the key is `name` and `parts` alone, so `parts` must
   * name everything that determines the content (including an implementation version).
   */
  shared?: boolean;
}

/** One branch a joining stage reads (`StageContext.branches`). */
export interface BranchInput {
  /** The branch stage's artifact. */
  input: StageInput;
  /** The stage id in the pipeline file the branch was expanded from (the stage's own id when it is not a branch). */
  template: string;
  /** Its matrix coordinates, axis label -> value (`{ blocks: 2, lr: 0.0001 }`); `{}` when it is not a branch. */
  coords: Record<string, Json>;
  /** The branch stage's upstream artifacts, nearest first (its `needs`, then their ancestors). */
  upstream: StageInput[];
}

/** A branch a joining stage does not read because it failed (`StageContext.failedBranches`). */
export interface FailedBranch {
  /** The branch stage's id. */
  id: string;
  /** The stage id in the pipeline file the branch was expanded from. */
  template: string;
  /** Its matrix coordinates, axis label -> value. */
  coords: Record<string, Json>;
  /** `failed`: the branch stage itself failed; `skipped`: a stage upstream of it in the branch failed. */
  status: 'failed' | 'skipped';
  /** The failure that took the branch out: the stage that failed (the branch itself, or the one upstream of it), its error code and message. */
  error: { stage: string; code: string; message: string };
}

/** A branch a halving join stopped early (`StageContext.prunedBranches`). */
export interface PrunedBranch {
  /** The branch stage's id. */
  id: string;
  /** The stage id in the pipeline file the branch was expanded from. */
  template: string;
  /** Its matrix coordinates, axis label -> value. */
  coords: Record<string, Json>;
  /** The units (epochs) it ran of the `of` it was set to. */
  budget: number;
  of: number;
  /** Its metrics where it stopped. */
  metrics: Metrics;
}

/**
 * How a joining stage halves its sweep (successive halving, as in Hyperband): every branch runs
 * `min` units of its budget param, the best 1/`factor` of them (at least one) go on to
 * `min·factor`, and so on; the last ones run to the end. Branches are ranked by `metric`.
 */
export interface HalvingSpec {
  metric: string;
  mode: 'max' | 'min';
  /** Keeps 1 of every `factor` branches per rung (>= 2). */
  factor: number;
  /** Units of the first rung (>= 1). */
  min: number;
}

/** One downstream stage's hints (`StageDefinition.hints`). */
export interface DownstreamHint {
  id: string;
  kind: string;
  hints: Json;
}

/** What `run` returns. */
export interface StageResult {
  /** Metrics shown in the summary and reused verbatim on a cache hit. */
  metrics?: Metrics;
}

/** One stage kind: its params, its implementation and what it reads and writes. */
export interface StageDefinition<P = any> {
  /** The YAML `uses:` value, kebab-case. */
  kind: string;
  /** Bump when outputs would change for the same inputs; part of the cache key. */
  version: number;
  /** One line for `pipeline --help` and the generated reference. */
  description: string;
  /** JSON Schema (2020-12) of `with:`; defaults in it are applied before the key is computed. */
  paramsSchema: Record<string, unknown>;
  /** Artifact types this stage reads via `ctx.input`. */
  consumes: ArtifactType[];
  /**
   * Artifact types this stage reads with these params, when they depend on the params (e.g.
   * `load-base` with `from: rank` reads a `ranking`); validation checks them instead of
   * `consumes`. Default: `consumes`.
   */
  consumesFor?(params: P): ArtifactType[];
  /** Artifact types this stage writes. */
  provides: ArtifactType[];
  /**
   * `tf` stages compute with TF.js, one at a time in a process (they share one backend; with
   * `--tf-jobs`, others in child processes);
   * `io` stages may run concurrently up to `--jobs`. Default `io`.
   */
  resource?: 'tf' | 'io';
  /**
   * A `tf` stage that computes in well under a second (model surgery on a loaded model): with
   * `--tf-jobs` it waits for the run's own process rather than start a child process, whose
   * start-up (loading the stages, the backend, the model) would cost more than it.
   */
  light?: boolean;
  /**
   * External inputs whose *content* is part of the cache key: local files or folders (hashed
   * with a size+mtime fast path), or URLs (the URL string is hashed). Paths are resolved
   * against `baseDir`.
   */
  externalInputs?(params: P, baseDir: string): string[];
  /**
   * Checks that need more than the schema (cross-field rules). Returns messages keyed by the
   * param path relative to `with` (e.g. `split.val`); an empty array means valid.
   */
  check?(params: P): { path: string; message: string }[];
  /**
   * Checks of the local files and folders the params name (that they exist and are of the right
   * kind), run at validation so `validate`/`plan` catch a missing data folder with its file:line.
   * Paths resolve against `baseDir` (the pipeline file's folder). Same result shape as `check`;
   * URLs are not fetched. Only reads the file system.
   */
  checkPaths?(params: P, baseDir: string): { path: string; message: string }[];
  /**
   * The params in one canonical spelling, applied at load time before the cache key is computed:
   * e.g. `./data/`, `data` and `../proj/data` name one folder and must give one key. `run`
   * receives the canonical params. Must not change what the stage does.
   */
  canonicalParams?(params: P, baseDir: string): P;
  /**
   * Called when the stage's result comes from the cache, to restore what it writes outside the
   * store (export's copy to `dir`), like DVC's checkout. `dir` is the cached entry (read-only).
   */
  checkout?(ctx: { dir: string; baseDir: string; log: Logger }, params: P): Promise<void>;
  /**
   * What this stage tells the stages upstream of it (`ctx.downstream`), from its params alone;
   * undefined for none. Part of the upstream stages' keys when they set `lookahead`.
   */
  hints?(params: P): Json | undefined;
  /** The stage reads `ctx.downstream`: its key includes its descendants' hints. */
  lookahead?: boolean;
  /**
   * The stage joins the branches of a sweep: it reads every branch of the stages in its
   * `needs` (`ctx.branches`) and is not itself expanded per branch, so the stages after it
   * run once. Validation requires two or more branches to read. It runs when at least one
   * branch succeeded: the others are in `ctx.failedBranches`, and its key covers which
   * branches it read and which failed (a rerun where a failed branch succeeds runs it again;
   * one with the same survivors reuses it). It is skipped when every branch, or a need that is
   * not a branch, failed.
   */
  join?: boolean;
  /**
   * For a joining stage: whether, with these params, it halves the sweep it joins (see
   * `HalvingSpec`); undefined for a plain join. The branches it reads must be stages with a
   * `budget`. Branches it stops early end with status `pruned`, and are in `ctx.prunedBranches`.
   */
  halving?(params: P): HalvingSpec | undefined;
  /**
   * The integer param that is how long the stage trains (`epochs`): the stage honours
   * `ctx.budget` (stop early, leave what is needed to go on) and `ctx.resumeFrom` (go on),
   * so a halving join can run it in rungs. Its metrics at any budget are those it reports; a
   * rung that reports `stopped: true` stopped by itself (early stopping): it is run to its end
   * (no more units) and ranked by its final metrics, never pruned.
   */
  budget?: string;
  /**
   * The metrics a `budget` stage can report after a rung (a halving join's `metric` must be one
   * of them: checked when the pipeline loads). Absent: not checked until a rung reports.
   */
  budgetMetrics?: readonly string[];
  /** Does the work: reads `ctx.inputs`, writes `ctx.outDir`, returns metrics. */
  run(ctx: StageContext<P>, params: P): Promise<StageResult>;
}

/** A static map from kind to definition. */
export type StageRegistry = Readonly<Record<string, StageDefinition>>;
