/**
 * Typed errors. Each has a stable snake_case `code`; `src/cli.ts` is the only place that maps
 * them to exit codes (see `exitCodeOf`). Codes come from the one catalogue, `error-codes.ts`.
 */
import type { ErrorCode } from './error-codes.js';

export type { ErrorCode } from './error-codes.js';

/** One problem in a pipeline file or command line, found by validation. */
export interface ValidationIssue {
  /** Stable snake_case code from the catalogue, e.g. `unknown_stage_kind`. */
  code: ErrorCode;
  /** Dotted path in the document, e.g. `stages.head.with.epochs` ('' for the whole file). */
  path: string;
  /** What is wrong and how to fix it. */
  message: string;
  /** File the issue is in (or `--set` for a command-line override). */
  file?: string;
  /** 1-based line and column, when the path maps onto the YAML source. */
  line?: number;
  col?: number;
  /** The source line, for a snippet. */
  snippet?: string;
}

export class PipelineError extends Error {
  /** Stable snake_case code from the catalogue (`error-codes.ts`). */
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The pipeline file or the command line is invalid; nothing was run or written. Exit 2. */
export class ValidationError extends PipelineError {
  readonly issues: ValidationIssue[];
  constructor(issues: ValidationIssue[]) {
    super(issues[0]?.code ?? 'invalid', `${issues.length} problem(s) in the pipeline`);
    this.issues = issues;
  }
}

/** Bad command-line usage (`code` says which kind, default `usage`). Exit 2. */
export class UsageError extends PipelineError {
  constructor(message: string, code: ErrorCode = 'usage') {
    super(code, message);
  }
}

/** Another live process holds the artifact store (gc) or a lock we may not wait for. Exit 3. */
export class StoreLockedError extends PipelineError {
  readonly pid: number;
  readonly lockFile: string;
  constructor(lockFile: string, pid: number, holder = `a running process (pid ${pid})`) {
    super('store_locked', `the artifact store is locked by ${holder}: ${lockFile}; wait for it or pass --wait`);
    this.pid = pid;
    this.lockFile = lockFile;
  }
}

/** `--wait-timeout` ran out while another live process held the lock. Exit 3. */
export class LockWaitTimeoutError extends StoreLockedError {
  constructor(lockFile: string, pid: number, timeoutMs: number) {
    super(lockFile, pid);
    (this as { code: ErrorCode }).code = 'lock_wait_timeout';
    this.message = `gave up after waiting ${Math.round(timeoutMs / 1000)}s for the artifact store lock held by pid ${pid} (${lockFile})`;
  }
}

/** A lock path is not what the store made there (a folder where a file belongs, …). Exit 2: nothing was run. */
export class LockPathError extends PipelineError {
  readonly lockPath: string;
  constructor(lockPath: string, problem: string) {
    super('store_lock_invalid', `the lock ${lockPath} ${problem}; no run of this toolkit made it: remove it (rm -r '${lockPath}') and run again`);
    this.lockPath = lockPath;
  }
}

/**
 * A stage failed for a reason it understands (bad data, a NaN loss, an unreachable URL).
 * `details` are structured facts that go into the log and the summary.
 */
export class StageError extends PipelineError {
  readonly details: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(code, message, options);
    this.details = details;
  }
}

/** A metric gate failed (evaluate's `gate`, prune's `max_accuracy_drop`). Exit 1. */
export class GateError extends StageError {}

/** Our own bug: a broken invariant. */
export class InternalError extends PipelineError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('internal', message, options);
  }
}

/** The run was interrupted by SIGINT/SIGTERM. */
export class AbortedError extends PipelineError {
  constructor(message = 'interrupted') {
    super('aborted', message);
  }
}

/**
 * Renders any thrown value as a one-line message with its code, never a stack. `where` is the
 * folder the failing work wrote to: a system error that names no path (a `write` on a full
 * disk is `ENOSPC: no space left on device, write`) is told where it happened.
 */
export function describeError(error: unknown, where?: string): { code: string; message: string } {
  if (error instanceof PipelineError) return { code: error.code, message: error.message };
  if (error instanceof Error) {
    const system = error as NodeJS.ErrnoException;
    const code = typeof system.code === 'string' ? system.code.toLowerCase() : 'error';
    const unplaced = where !== undefined && typeof system.errno === 'number' && system.path === undefined;
    return { code, message: unplaced ? `${error.message} (writing under ${where})` : error.message };
  }
  return { code: 'error', message: String(error) };
}
