/**
 * `pipeline run --tf-jobs N`: computes TF.js stages in child processes of this machine while
 * one computes in the run's own process, so that independent ones (the branches of a sweep)
 * use more than one core. TF.js on wasm or cpu computes on one thread: a sweep's branches in
 * one process run one after the other, whatever the machine has.
 *
 * The executor keeps the DAG, the key's lock and the records; a child (`local-child.ts`) loads
 * the same pipeline file and the backend once, then for each stage it is given checks that it
 * computes the same key, computes it through `computeStage` into the same store and sends back
 * the entry. Children are kept for the next stage until the run ends, and a sweep's are
 * started ahead (`warm`), so that their start-up overlaps the stages before the branches. Its progress and log lines are
 * forwarded to the run's; `onKey` and `push` are asked of the run. A child that dies (killed,
 * out of memory) fails its stage with `stage_process_died`; the checkpoints it left are kept for
 * the next run. When the run is interrupted, the children are told to stop (a child that gets
 * the SIGINT itself, Ctrl-C in a terminal, stops the same way); when the run's process dies,
 * its children see the IPC channel close and exit.
 */
import { fork, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import type { EntryMeta } from '../runtime/cache.js';
import { ComputeFailure } from '../runtime/compute.js';
import { AbortedError, GateError, StageError, UsageError, type ErrorCode } from '../runtime/errors.js';
import type { OffloadRequest, StageOffloader } from '../runtime/execute.js';
import type { ResolvedPipeline } from '../runtime/load.js';
import type { PlannedStage } from '../runtime/plan.js';
import type { DownstreamHint, FailedBranch, ProgressEvent, PrunedBranch, StageInput } from '../runtime/types.js';

/** The module that exports the stage registry a child loads: `import(url)[name]`. */
export interface RegistryModule {
  url: string;
  name: string;
}

export interface LocalPoolOptions {
  /** The pipeline file and the run's `--set` overrides: a child loads the same pipeline. */
  file: string;
  overrides: string[];
  /** The artifact store's root. */
  artifacts: string;
  registry: RegistryModule;
  /** The TF.js backend preference (`auto`, `wasm`, …) each child configures. */
  backend: string;
  /** Child processes at once (besides the run's own process). */
  slots: number;
}

/** What a child is told once, when it starts: the run it computes stages of. */
export interface LocalRun {
  file: string;
  overrides: string[];
  artifacts: string;
  registry: RegistryModule;
  backend: string;
}

/** One stage a child is asked to compute. */
export interface LocalJob {
  stage: string;
  key: string;
  /** Upstream stage id -> output digest: the child recomputes the key from them. */
  upstream: Record<string, string>;
  inputs: StageInput[];
  downstream: DownstreamHint[];
  /** For a joining stage: its branches that failed. */
  failedBranches?: FailedBranch[];
  /** For a halving join: the branches it stopped early. */
  prunedBranches?: PrunedBranch[];
  /** A rung of a halved sweep: the key to commit under, its epochs, the rung to go on from (`ComputeOptions`). */
  entryKey?: string;
  budget?: number;
  resumeFrom?: string;
  runId: string;
}

/** A failure as the child describes it; rebuilt here as the error it was. */
export interface ChildFailure {
  code: string;
  message: string;
  /** `stage`: a StageError (the stage's own reason); `gate`: a GateError; else a system error or a bug. */
  kind: 'gate' | 'stage' | 'other';
  details?: Record<string, unknown>;
  outDir?: string;
}

export type ParentMessage = { type: 'hello'; run: LocalRun } | { type: 'start'; job: LocalJob } | { type: 'abort' } | { type: 'reply'; id: number; error?: string };
export type ChildMessage =
  | { type: 'progress'; event: ProgressEvent }
  | { type: 'log'; line: Record<string, unknown> }
  | { type: 'request'; id: number; what: 'onKey' | 'push'; key: string }
  /** `exiting`: the child got a signal and exits now (it takes no other stage). */
  | { type: 'done'; entry: EntryMeta; exiting?: boolean }
  | { type: 'failed'; failure: ChildFailure; exiting?: boolean };

/**
 * How many TF.js stages a backend runs usefully at once on this machine: TF.js on wasm and cpu
 * computes on one thread, so one per core (at most 4: each holds its model and data); tfjs-node
 * already uses every core, and tfjs-node-gpu the one GPU, so 1.
 */
export function autoTfJobs(backend: string, cores = os.availableParallelism()): number {
  return backend === 'wasm' || backend === 'cpu' ? Math.max(1, Math.min(4, cores)) : 1;
}

/**
 * `RunOptions.offload` for `--tf-jobs`: once the pipeline is resolved (its `backend:` known), a
 * pool of `tfJobs - 1` children (`auto`: `autoTfJobs` of the backend `predict` names), or none.
 */
export function localOffload(options: Omit<LocalPoolOptions, 'slots' | 'backend'> & { tfJobs: number | 'auto'; backend?: string; predict(): string }): (pipeline: ResolvedPipeline) => LocalProcessPool | undefined {
  // The library's `tfJobs` (the CLI checks `--tf-jobs` itself): refused before anything is written.
  if (options.tfJobs !== 'auto' && !(Number.isInteger(options.tfJobs) && options.tfJobs >= 1)) throw new UsageError(`tfJobs must be a whole number of at least 1 or 'auto', got ${JSON.stringify(options.tfJobs)}`);
  return (pipeline) => {
    const slots = (options.tfJobs === 'auto' ? autoTfJobs(options.predict()) : options.tfJobs) - 1;
    if (slots < 1) return undefined;
    return new LocalProcessPool({ ...options, backend: options.backend ?? pipeline.backend ?? 'auto', slots });
  };
}

/** The child's entry: compiled beside this file, or the TypeScript source under tsx (tests). */
function childEntry(): { file: string; execArgv: string[] } {
  const here = fileURLToPath(import.meta.url);
  // tsx resolved from here, not from the run's folder (which need not hold a node_modules).
  if (here.endsWith('.ts')) return { file: path.join(path.dirname(here), 'local-child.ts'), execArgv: ['--import', import.meta.resolve('tsx')] };
  return { file: path.join(path.dirname(here), 'local-child.js'), execArgv: [] };
}

/** A child process and the job it computes, if any. */
interface Child {
  process: ChildProcess;
  /** The last lines of its stderr, for the message when it dies. */
  stderr: string;
  /** Where its messages go while it computes a job. */
  job?: (message: ChildMessage | { type: 'exit'; code: number | null; signal: NodeJS.Signals | null }) => void;
}

export class LocalProcessPool implements StageOffloader {
  readonly slots: number;
  private readonly idle: Child[] = [];
  private readonly children = new Set<Child>();

  constructor(private readonly options: LocalPoolOptions) {
    this.slots = Math.max(0, options.slots);
  }

  /**
   * Starts up to `count` children now (at most `slots`), so that their start-up (loading the
   * stages and the backend) overlaps the stages that run before the branches.
   */
  warm(count: number): void {
    while (this.children.size < Math.min(count, this.slots)) this.idle.push(this.spawn());
  }

  compute(planned: PlannedStage, request: OffloadRequest): Promise<EntryMeta> {
    const { stage, key } = planned;
    const { prunedBranches, entryKey, budget, resumeFrom } = request;
    const job: LocalJob = { stage: stage.id, key, upstream: planned.record.upstream, inputs: request.inputs, downstream: request.downstream, failedBranches: request.failedBranches, prunedBranches, entryKey, budget, resumeFrom, runId: request.runId };
    const child = this.idle.shift() ?? this.spawn();
    hold(child.process, true);
    const abort = () => send(child.process, { type: 'abort' });
    request.signal.addEventListener('abort', abort);
    request.log.info({ pid: child.process.pid }, 'stage computing in a child process');

    return new Promise<EntryMeta>((resolve, reject) => {
      const settle = (outcome: () => void, reusable: boolean) => {
        child.job = undefined;
        hold(child.process, false);
        request.signal.removeEventListener('abort', abort);
        if (reusable && !request.signal.aborted) this.idle.push(child);
        outcome();
      };
      child.job = (message) => {
        switch (message.type) {
          case 'progress':
            request.progress(message.event);
            break;
          case 'log':
            forwardLog(request.log, message.line, child.process.pid);
            break;
          case 'request': {
            const asked = message.what === 'onKey' ? request.onKey?.(message.key) : request.push?.(message.key);
            Promise.resolve(asked).then(
              () => send(child.process, { type: 'reply', id: message.id }),
              (error: unknown) => send(child.process, { type: 'reply', id: message.id, error: error instanceof Error ? error.message : String(error) }),
            );
            break;
          }
          case 'done':
            settle(() => resolve(message.entry), !message.exiting);
            break;
          case 'failed':
            settle(() => reject(rebuild(message.failure)), !message.exiting);
            break;
          case 'exit': {
            const last = tellingLine(child.stderr);
            const how = message.signal ? `on ${message.signal}` : `with code ${message.code}`;
            const error = new StageError(
              'stage_process_died',
              `the child process (pid ${child.process.pid}) computing stage '${stage.id}' exited ${how} before it finished${last ? ` (${last})` : ''}; its checkpoints are kept: run again to resume`,
              { pid: child.process.pid, code: message.code, signal: message.signal },
            );
            settle(() => reject(new ComputeFailure(error, this.options.artifacts)), false);
            break;
          }
        }
      };
      send(child.process, { type: 'start', job });
    });
  }

  /**
   * The run is over: idle children exit, running ones are told to stop; resolves once all have
   * exited (after `graceMs`, the ones left are killed), so none outlives the run.
   */
  async close(graceMs = 10_000): Promise<void> {
    const exits = [...this.children].map((child) => new Promise<void>((resolve) => (child.process.exitCode !== null || child.process.signalCode !== null ? resolve() : child.process.once('exit', () => resolve()))));
    for (const child of this.children) {
      if (child.job) send(child.process, { type: 'abort' });
      else if (child.process.connected) child.process.disconnect();
    }
    this.idle.length = 0;
    const timer = setTimeout(() => {
      for (const child of this.children) child.process.kill('SIGKILL');
    }, graceMs);
    await Promise.all(exits);
    clearTimeout(timer);
  }

  private spawn(): Child {
    const entry = childEntry();
    const process_ = fork(entry.file, [], { execArgv: entry.execArgv, stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env: process.env });
    const child: Child = { process: process_, stderr: '' };
    this.children.add(child);
    process_.stderr?.on('data', (chunk: Buffer) => (child.stderr = (child.stderr + chunk.toString()).slice(-2000)));
    process_.on('message', (message: ChildMessage) => child.job?.(message));
    process_.on('error', () => undefined); // a failed fork or send shows as its exit
    process_.on('exit', (code, signal) => {
      this.children.delete(child);
      const at = this.idle.indexOf(child);
      if (at >= 0) this.idle.splice(at, 1);
      child.job?.({ type: 'exit', code, signal });
    });
    hold(process_, false);
    const { file, overrides, artifacts, registry, backend } = this.options;
    send(process_, { type: 'hello', run: { file: path.resolve(file), overrides, artifacts: path.resolve(artifacts), registry, backend } });
    return child;
  }
}

/**
 * The line of a dead child's stderr that says why it died: V8's `FATAL ERROR: … heap out of
 * memory`, else the last line that is not a stack frame (`at …`, ` 12: 0x… [node]`), a source
 * excerpt's caret or Node's closing `Node.js v20…`.
 */
export function tellingLine(stderr: string): string | undefined {
  const lines = stderr.split('\n').map((line) => line.trim()).filter(Boolean).reverse();
  return lines.find((line) => line.startsWith('FATAL ERROR')) ?? lines.find((line) => !/^(at |\d+: 0x|Node\.js v\d|\^+$|-{3,}|<-{3,})/.test(line));
}

/** An idle child does not keep the run's process alive (a busy one does, until its job ends). */
function hold(child: ChildProcess, busy: boolean): void {
  const channel = child.channel as { ref(): void; unref(): void } | null | undefined;
  if (busy) {
    child.ref();
    channel?.ref();
  } else {
    child.unref();
    channel?.unref();
  }
}

function send(child: ChildProcess, message: ParentMessage): void {
  if (child.connected) child.send(message, () => undefined);
}

/** A child's log line, into the run's log under the stage's logger (its pid added). */
function forwardLog(log: pino.Logger, line: Record<string, unknown>, pid: number | undefined): void {
  const { level, msg, time, run: _run, stage: _stage, kind: _kind, ...fields } = line;
  const label = (typeof level === 'number' && pino.levels.labels[level]) || 'info';
  (log[label as 'info'] ?? log.info).call(log, { pid, childTime: time, ...fields }, String(msg ?? ''));
}

/** The child's failure as the error it was: the executor reports it as if computed here. */
function rebuild(failure: ChildFailure): ComputeFailure {
  const code = failure.code as ErrorCode;
  const error =
    failure.kind === 'gate'
      ? new GateError(code, failure.message, failure.details ?? {})
      : failure.kind === 'stage'
        ? code === 'aborted'
          ? new AbortedError(failure.message) // as an interrupted stage of the run's process: no details
          : new StageError(code, failure.message, failure.details ?? {})
        : Object.assign(new Error(failure.message), { code: failure.code, ...(typeof failure.details?.stack === 'string' ? { stack: failure.details.stack } : {}) });
  return new ComputeFailure(error, failure.outDir ?? '');
}
