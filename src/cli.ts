/**
 * The `pipeline` command. The ONLY place that maps errors to exit codes:
 * 0 success; 1 a stage or a gate failed; 2 invalid file or command line (nothing run or
 * written); 3 the artifact store is locked by another live run; 130 interrupted.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createProgressView } from './progress-view.js';
import { planJson, renderGrid, renderIssues, renderPlan, renderSummary } from './render.js';
import { commandCache, remoteCacheOf } from './commands/cache.js';
import { RemoteError } from './remote/remote.js';
import { AbortedError, describeError, LockPathError, PipelineError, StoreLockedError, UsageError, ValidationError } from './runtime/errors.js';
import type { RunSummary } from './runtime/execute.js';
import { planPipeline, resolvePipeline, runPipeline } from './runtime/run.js';
import { refusePseudoLocation } from './runtime/fsutil.js';
import { ArtifactStore } from './runtime/store.js';
import { commandWorker, openExecutor, WORKER_COMMAND, WORKER_OPTION_HELP } from './commands/worker.js';
import type { StageRegistry } from './runtime/types.js';
import { localOffload, type RegistryModule } from './distributed/local-pool.js';

export const EXIT = { ok: 0, failed: 1, invalid: 2, locked: 3, interrupted: 130 } as const;

export interface CliIo {
  registry: StageRegistry;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  isTTY: boolean;
  /** The stderr stream, for live progress bars when `isTTY` (absent: plain progress lines). */
  stderrStream?: NodeJS.WritableStream;
  /** The TF.js backend: chosen lazily by the stages that need it. Absent in runtime-only use. */
  backend?: BackendControl;
  /**
   * The module exporting `registry` (`import(url)[name]`): child processes of `--tf-jobs` load
   * their stages from it. Absent: TF.js stages run one at a time in this process.
   */
  registryModule?: RegistryModule;
}

/** How the CLI configures and names the backend without knowing TF.js. */
export interface BackendControl {
  /** Records the preference (`auto`, `wasm`, ...); nothing is loaded yet. */
  configure(preference: string): void;
  /** The backend in use, or `NO_BACKEND` when no TF.js was loaded (every TF.js stage was cached). */
  describe(): string;
  /** Why a preference cannot be used (its package is not installed), or null; checked before anything runs. */
  unavailable?(preference: string): string | null;
  /** The backend the configured preference will load (without loading it), for `--tf-jobs auto`. */
  predict?(): string;
}

/** The summary's `backend` of a run that loaded no TF.js. */
export const NO_BACKEND = 'none (no TF.js stage ran: cached or not needed)';

const BACKENDS = ['auto', 'node-gpu', 'node', 'wasm', 'cpu'];

/** One line per command for the general usage text; `help COMMAND` shows the full entry. */
const COMMANDS: Record<string, { synopsis: string; summary: string; details?: string }> = {
  run: { synopsis: 'run FILE', summary: 'validate, plan and execute; reuse cached stages' },
  validate: { synopsis: 'validate FILE', summary: 'parse + schema + graph checks, local input paths exist; touches nothing' },
  plan: { synopsis: 'plan FILE', summary: 'what would run and what is cached, and why; touches nothing' },
  status: { synopsis: 'status', summary: 'the latest run of each pipeline, its stages and metrics' },
  runs: { synopsis: 'runs', summary: 'recent runs' },
  gc: { synopsis: 'gc', summary: 'remove cache entries no recent run of any pipeline uses (--dry-run lists them)' },
  report: {
    synopsis: 'report [RUN]',
    summary: 'a run\'s report: one self-contained HTML page + Markdown + chart PNGs (default: the latest run)',
    details: 'Written to runs/<run-id>/report.html in the store (report.md and report-assets/ beside it); the page\'s path is printed.',
  },
  show: {
    synopsis: 'show STAGE [FILE]',
    summary: 'a stage\'s latest metrics, its history across runs, its report files and where its artifact lives',
    details: 'FILE (a pipeline file) picks the pipeline when several have a stage of that id; default: the latest run\'s.',
  },
  worker: WORKER_COMMAND,
  cache: {
    synopsis: 'cache push|pull [KEY...|FILE]',
    summary: 'share cache entries through a remote cache (S3): push local entries, pull what a pipeline needs',
    details: [
      'push: the given keys, or every key the newest run of each pipeline used. pull FILE: the',
      'entries a run of FILE would use; pull KEY...: those keys. Blobs go by sha256 (only the',
      'missing ones), the manifest last; every downloaded blob is re-hashed before use.',
      'Credentials come from the AWS environment/profile chain; the endpoint from AWS_ENDPOINT_URL.',
    ].join('\n'),
  },
  predict: {
    synopsis: 'predict MODEL IMAGE...',
    summary: 'classify images with an exported model',
    details: [
      'MODEL is an export folder or its model.json; IMAGE is an image file or a folder of images',
      '(searched recursively). A bad image is reported with its reason and the others are still',
      'predicted; the exit code is then 1.',
    ].join('\n'),
  },
};

/** Each option's help line, in the order shown. */
const OPTION_HELP: Record<string, string> = {
  json: '--json               print one JSON object on stdout (progress and logs go to stderr)',
  set: '--set path=value     override a value of the file (read as YAML), e.g. stages.fine-tune.with.lr=1e-5',
  force: '--force STAGE        re-run STAGE even if cached (repeatable)',
  from: '--from STAGE         re-run STAGE and everything downstream of it',
  only: '--only STAGE         run just STAGE (its upstream must be cached)',
  jobs: '--jobs N             concurrent I/O stages (default 4)',
  'tf-jobs': '--tf-jobs N|auto     TF.js stages at once, the extra ones in child processes (a sweep\'s branches); auto: one per core on wasm/cpu (at most 4), 1 on tfjs-node(-gpu)',
  artifacts: '--artifacts DIR      artifact store (default ./artifacts or $PIPELINE_ARTIFACTS)',
  backend: '--backend NAME       auto | node-gpu | node | wasm | cpu (overrides the file\'s backend:)',
  wait: '--wait               wait while gc (or, for gc, a run) holds the store instead of exiting with code 3',
  'wait-timeout': '--wait-timeout S     with --wait: give up after S seconds (exit 3)',
  keep: '--keep N             keep what the newest N runs of each pipeline use (default 10)',
  'dry-run': '--dry-run            gc: list what would be removed; remove nothing',
  top: '--top K              print the K most probable classes per image (default 1)',
  out: '--out FILE           report: write the HTML page here (FILE.md and FILE-assets/ beside it)',
  ...WORKER_OPTION_HELP,
  remote: '--remote URL         remote cache s3://bucket/prefix (default $PIPELINE_REMOTE); run: pull on a miss, push after each stage; worker: pull inputs, push results',
  'remote-endpoint': '--remote-endpoint U  S3 endpoint of the remote, e.g. http://127.0.0.1:8080 (default $AWS_ENDPOINT_URL, else AWS)',
};

const USAGE = `usage: pipeline <command> [options]

commands:
${Object.values(COMMANDS).map((c) => `  ${c.synopsis.padEnd(Math.max(...Object.values(COMMANDS).map((d) => d.synopsis.length)))}  ${c.summary}`).join('\n')}

options (\`pipeline help COMMAND\` or \`pipeline COMMAND --help\` lists the ones a command takes):
${Object.values(OPTION_HELP).map((line) => `  ${line}`).join('\n')}
  --help, -h           this text, or a command's own
  --version            print the version
`;

/** The help of one command: its synopsis, what it does, and only the options it takes. */
export function commandHelp(command: string): string {
  const entry = COMMANDS[command];
  const options = COMMAND_OPTIONS[command].map((name) => `  ${OPTION_HELP[name]}`).join('\n');
  return `usage: pipeline ${entry.synopsis} [options]\n\n${entry.summary}\n${entry.details ? `\n${entry.details}\n` : ''}\noptions:\n${options}\n`;
}

/** The package's version, from package.json above this file (src/ or dist/src/). */
function readVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++, dir = path.dirname(dir)) {
    const manifest = readJsonFileMaybe(path.join(dir, 'package.json')) as { name?: string; version?: string } | undefined;
    if (manifest?.name === 'finetune-pipeline' && manifest.version) return manifest.version;
  }
  return 'unknown';
}

function readJsonFileMaybe(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Which options each command takes; any other is a usage error (exit 2). */
const COMMAND_OPTIONS: Record<string, string[]> = {
  worker: ['redis', 'artifacts', 'queue', 'concurrency', 'remote', 'remote-endpoint', 'backend', 'stall-seconds'],
  run: ['json', 'set', 'force', 'from', 'only', 'jobs', 'tf-jobs', 'artifacts', 'backend', 'wait', 'wait-timeout', 'executor', 'redis', 'remote', 'remote-endpoint'],
  validate: ['json', 'set', 'force', 'from', 'only'],
  plan: ['json', 'set', 'force', 'from', 'only', 'artifacts'],
  status: ['json', 'artifacts'],
  runs: ['json', 'artifacts'],
  gc: ['json', 'keep', 'artifacts', 'wait', 'wait-timeout', 'dry-run'],
  predict: ['json', 'top', 'backend'],
  report: ['json', 'out', 'artifacts'],
  show: ['json', 'artifacts'],
  cache: ['json', 'set', 'artifacts', 'remote', 'remote-endpoint'],
};

const OPTIONS = {
  json: { type: 'boolean' },
  set: { type: 'string', multiple: true },
  force: { type: 'string', multiple: true },
  from: { type: 'string' },
  only: { type: 'string' },
  jobs: { type: 'string' },
  'tf-jobs': { type: 'string' },
  artifacts: { type: 'string' },
  backend: { type: 'string' },
  wait: { type: 'boolean' },
  'wait-timeout': { type: 'string' },
  'dry-run': { type: 'boolean' },
  keep: { type: 'string' },
  top: { type: 'string' },
  out: { type: 'string' },
  executor: { type: 'string' },
  redis: { type: 'string' },
  queue: { type: 'string' },
  concurrency: { type: 'string' },
  remote: { type: 'string' },
  'stall-seconds': { type: 'string' },
  'remote-endpoint': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

/** Runs one command; returns the exit code. Never throws. */
export async function main(argv: string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    return reportError(new UsageError((error as Error).message), io, argv.includes('--json'), argv.find((arg) => !arg.startsWith('-')));
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  const allowed = COMMAND_OPTIONS[command ?? ''];
  if (values.version || command === 'version') {
    io.stdout(`${readVersion()}\n`);
    return EXIT.ok;
  }
  if (command === 'help' || (values.help && command)) {
    const topic = command === 'help' ? rest[0] : command;
    if (topic === undefined || topic === 'help') {
      io.stdout(USAGE);
      return EXIT.ok;
    }
    if (!COMMANDS[topic]) return reportError(new UsageError(`unknown command '${topic}'`), io, values.json ?? false);
    io.stdout(commandHelp(topic));
    return EXIT.ok;
  }
  const stray = allowed ? Object.keys(values).filter((name) => name !== 'help' && !allowed.includes(name)) : [];
  if (stray.length) return reportError(new UsageError(`${stray.map((s) => `--${s}`).join(', ')} does not apply to '${command}'`), io, values.json ?? false, command);
  if (values.help || !command) {
    (values.help ? io.stdout : io.stderr)(USAGE);
    return values.help ? EXIT.ok : EXIT.invalid;
  }
  const artifacts = path.resolve(values.artifacts ?? io.env.PIPELINE_ARTIFACTS ?? 'artifacts');
  try {
    refusePseudoLocation(artifacts, values.artifacts !== undefined ? '--artifacts' : io.env.PIPELINE_ARTIFACTS !== undefined ? '$PIPELINE_ARTIFACTS' : 'the artifact store');
    switch (command) {
      case 'run':
        return await commandRun(requireFile(rest, command), values, artifacts, io);
      case 'validate': {
        const pipeline = resolvePipeline({ file: requireFile(rest, command), registry: io.registry, overrides: values.set, selection: selectionOf(values) });
        if (values.json) io.stdout(JSON.stringify({ valid: true, pipeline: pipeline.name, stages: pipeline.stages.map((s) => ({ id: s.id, uses: s.kind, needs: s.needs, with: s.params })) }) + '\n');
        else io.stdout(`${pipeline.file}: valid (${pipeline.stages.length} stages: ${pipeline.stages.map((s) => s.id).join(' -> ')})\n`);
        return EXIT.ok;
      }
      case 'plan': {
        const plan = await planPipeline({ file: requireFile(rest, command), registry: io.registry, overrides: values.set, selection: selectionOf(values), artifacts });
        if (values.json)
          io.stdout(JSON.stringify(planJson(plan)) + '\n');
        else io.stdout(renderPlan(plan));
        return EXIT.ok;
      }
      case 'status':
      case 'runs':
        return await commandRuns(command, values.json ?? false, artifacts, io);
      case 'gc':
        return await commandGc(values, artifacts, io);
      case 'worker':
        if (rest.length) throw new UsageError(`worker takes no file (the jobs name theirs), got ${rest.join(' ')}`);
        if (values.backend !== undefined) usableBackend(values.backend, '--backend', io);
        return await commandWorker(values, artifacts, io);
      case 'cache':
        return await commandCache(rest, values, artifacts, io);
      case 'predict': {
        const [dir, ...images] = rest;
        if (!dir || images.length === 0) throw new UsageError('predict takes an export folder and at least one image or folder of images (the export may be given as its model.json)');
        const top = positiveInt(values.top ?? '1', '--top');
        io.backend?.configure(usableBackend(values.backend ?? 'auto', '--backend', io));
        // Imported here so that the other commands never load TF.js or sharp.
        const { predictAll } = await import('./predict.js');
        const { predictions, failures } = await predictAll(dir, images, { top });
        if (values.json) io.stdout(JSON.stringify({ backend: io.backend?.describe() ?? 'none', predictions, failures }) + '\n');
        else for (const p of predictions) for (const t of p.top) io.stdout(`${p.image}\t${t.label} ${t.probability.toFixed(4)}\n`);
        // Every bad image with its reason; the good ones were still predicted.
        for (const failure of failures) io.stderr(`pipeline: ${failure.message} [${failure.code}]\n`);
        if (failures.length) io.stderr(`pipeline: ${failures.length} of ${predictions.length + failures.length} images could not be predicted\n`);
        return failures.length ? EXIT.failed : EXIT.ok;
      }
      case 'report':
        return await (await import('./commands/report.js')).commandReport(rest, values, artifacts, io);
      case 'show':
        return await (await import('./commands/show.js')).commandShow(rest, values, artifacts, io);
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (error) {
    return reportError(error, io, values.json ?? false, command);
  }
}

async function commandRun(file: string, values: Record<string, any>, artifacts: string, io: CliIo): Promise<number> {
  const jobs = values.jobs === undefined ? 4 : positiveInt(values.jobs, '--jobs');
  const tfJobs = values['tf-jobs'] === undefined || values['tf-jobs'] === 'auto' ? 'auto' : positiveInt(values['tf-jobs'], '--tf-jobs', ' or auto');
  if (tfJobs !== 'auto' && tfJobs > 1 && !io.registryModule) throw new UsageError('--tf-jobs above 1 needs the stage registry as a module for its child processes; this embedding of the CLI gives none');
  if (tfJobs !== 'auto' && tfJobs > 1 && values.executor === 'bullmq') throw new UsageError('--tf-jobs is for runs on this machine; with --executor bullmq, run more workers (or --concurrency) instead');
  if (values.backend !== undefined) usableBackend(values.backend, '--backend', io); // refuse a bad flag before anything is written
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    interrupts++;
    if (interrupts > 1) {
      if (values.json) io.stdout(JSON.stringify({ status: 'interrupted', error: { code: 'aborted', message: 'interrupted twice: exited without waiting for running stages' } }) + '\n');
      process.exit(EXIT.interrupted);
    }
    io.stderr(`\n${signal}: stopping; finished stages are kept (press Ctrl-C again to exit now)\n`);
    controller.abort();
  };
  const dispatcher = await openExecutor(values, file);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // With --json, stdout carries only the summary; stage lines still go to stderr (CONTRACT).
  const quiet = io.env.PIPELINE_QUIET === '1';
  const live = io.isTTY && io.env.CI !== 'true' && !values.json;
  const view = quiet ? undefined : createProgressView({ write: io.stderr, tty: live ? io.stderrStream : undefined, entryDir: (key) => new ArtifactStore(artifacts).entryDir(key), intervalMs: progressIntervalOf(io.env) });
  const openCache = await remoteCacheOf(values, io.env);
  try {
    const summary: RunSummary = await runPipeline({
      file,
      registry: io.registry,
      overrides: values.set,
      selection: selectionOf(values),
      artifacts,
      openCache,
      jobs,
      wait: values.wait,
      waitTimeoutMs: waitTimeoutOf(values),
      onWait: (holder) => io.stderr(`waiting for ${holder} to finish…\n`),
      signal: controller.signal,
      observer: view,
      prepare: (pipeline) => io.backend?.configure(values.backend !== undefined ? values.backend : usableBackend(pipeline.backend, `${pipeline.file}: backend:`, io)),
      backend: () => dispatcher?.describeBackends() ?? io.backend?.describe() ?? 'none',
      dispatcher,
      offload: dispatcher || !io.registryModule ? undefined : localOffload({ file, overrides: values.set ?? [], artifacts, registry: io.registryModule, tfJobs, backend: values.backend, predict: () => io.backend?.predict?.() ?? 'auto' }),
    });
    if (values.json) io.stdout(JSON.stringify(summary) + '\n');
    else io.stderr(renderSummary(summary));
    return summary.status === 'succeeded' ? EXIT.ok : summary.status === 'interrupted' ? EXIT.interrupted : EXIT.failed;
  } finally {
    view?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await dispatcher?.close();
  }
}

/** `PIPELINE_PROGRESS_INTERVAL` (seconds between plain progress lines without a TTY) in ms; default 5 s. */
function progressIntervalOf(env: NodeJS.ProcessEnv): number | undefined {
  const seconds = Number(env.PIPELINE_PROGRESS_INTERVAL);
  return env.PIPELINE_PROGRESS_INTERVAL !== undefined && Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}

/** Seconds of `--wait-timeout` as ms (it needs `--wait`). */
function waitTimeoutOf(values: Record<string, any>): number | undefined {
  if (values['wait-timeout'] === undefined) return undefined;
  if (!values.wait) throw new UsageError('--wait-timeout needs --wait');
  const seconds = Number(values['wait-timeout']);
  if (!Number.isFinite(seconds) || seconds < 0) throw new UsageError(`--wait-timeout must be a number of seconds, got '${values['wait-timeout']}'`);
  return seconds * 1000;
}

/** Runs `body` with an AbortSignal that SIGINT/SIGTERM fire (a wait for the store obeys it). */
async function withSignals<T>(body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await body(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function commandGc(values: Record<string, any>, artifacts: string, io: CliIo): Promise<number> {
  const keep = positiveInt(values.keep ?? '10', '--keep');
  const timeoutMs = waitTimeoutOf(values);
  const dryRun = values['dry-run'] ?? false;
  if (!existsSync(artifacts)) {
    io.stdout(values.json ? JSON.stringify({ removed: [], kept: 0, freedBytes: 0, removedBlobs: 0, removedWork: [], skippedRuns: [], dryRun }) + '\n' : `no artifact store at ${artifacts}; nothing to do\n`);
    return EXIT.ok;
  }
  const store = new ArtifactStore(artifacts);
  return withSignals(async (signal) => {
    const release = await store.lockStore({ wait: values.wait, timeoutMs, signal, onWait: (holder) => io.stderr(`waiting for ${holder} to finish…\n`) });
    try {
      const result = await store.gc(keep, { dryRun });
      if (values.json) io.stdout(JSON.stringify(result) + '\n');
      else {
        for (const skipped of result.skippedRuns) io.stderr(`note: run ${skipped.run} ignored (${skipped.reason})\n`);
        if (dryRun) for (const key of result.removed) io.stdout(`would remove cache/${key}\n`);
        if (dryRun) for (const key of result.removedWork) io.stdout(`would remove work/${key}\n`);
        io.stdout(`${dryRun ? 'would remove' : 'removed'} ${result.removed.length} cache entries and ${result.removedBlobs} blobs (${(result.freedBytes / 1e6).toFixed(1)} MB) and ${result.removedWork.length} work dirs, kept ${result.kept}\n`);
      }
    } finally {
      await release();
    }
    return EXIT.ok;
  });
}

async function commandRuns(command: 'status' | 'runs', json: boolean, artifacts: string, io: CliIo): Promise<number> {
  const store = new ArtifactStore(artifacts);
  const summaries: RunSummary[] = [];
  const incomplete: { id: string; reason: string }[] = [];
  for (const id of (await store.listRuns()).slice(0, 50)) {
    const summary = await store.readSummary(id);
    if (summary.ok) summaries.push(summary.value);
    else incomplete.push({ id, reason: summary.reason }); // killed before it wrote its summary (kill -9, power loss), or damaged
  }
  const chosen = command === 'status' ? summaries.filter((s, i) => summaries.findIndex((t) => t.pipeline === s.pipeline) === i) : summaries;
  if (json) {
    io.stdout(JSON.stringify(command === 'status' ? { pipelines: chosen } : { runs: chosen.map(({ stages: _s, ...rest }) => rest) }) + '\n');
    return EXIT.ok;
  }
  if (!chosen.length) io.stdout(`no runs in ${artifacts}\n`);
  if (command === 'runs') for (const { id, reason } of incomplete) io.stdout(`${id}  (no usable summary: summary.json ${reason}; the run was killed or the file damaged; see runs/${id}/log.jsonl)\n`);
  else if (incomplete.length) io.stderr(`note: ${incomplete.length} run(s) without a usable summary skipped (see \`pipeline runs\`)\n`);
  for (const summary of chosen) {
    io.stdout(`${summary.run}  ${summary.pipeline}  ${summary.status}  ${summary.seconds.toFixed(1)}s  backend ${summary.backend}\n`);
    const idWidth = Math.max(16, ...summary.stages.map((s) => s.id.length));
    if (command === 'status')
      for (const s of summary.stages) io.stdout(`    ${s.status.padEnd(7)} ${s.id.padEnd(idWidth)} ${s.error ? `${s.error.message} [${s.error.code}]` : Object.entries(s.metrics).filter(([, v]) => typeof v !== 'object').map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(4) : v}`).slice(0, 6).join(' ')}\n`);
    if (command === 'status') io.stdout(renderGrid(summary));
  }
  return EXIT.ok;
}

/** Prints an error (after a usage error: the help of `command` when it is one, else the general usage); returns the exit code. */
function reportError(error: unknown, io: CliIo, json: boolean, command?: string): number {
  let code: number = EXIT.failed;
  let text: string;
  if (error instanceof ValidationError) {
    code = EXIT.invalid;
    text = renderIssues(error.issues);
    if (json) io.stdout(JSON.stringify({ status: 'invalid', issues: error.issues }) + '\n');
  } else {
    if (error instanceof UsageError) code = EXIT.invalid;
    else if (error instanceof StoreLockedError) code = EXIT.locked;
    else if (error instanceof LockPathError) code = EXIT.invalid;
    else if (error instanceof PipelineError && error.code === 'redis_unreachable') code = EXIT.invalid; // nothing was run
    else if (error instanceof RemoteError && (error.code === 'remote_config' || error.code === 'remote_auth')) code = EXIT.invalid;
    else if (error instanceof AbortedError) code = EXIT.interrupted;
    const { code: errorCode, message } = describeError(error);
    // A system error (disk full, permission denied) is the machine's state, not our bug.
    const system = error instanceof Error && typeof (error as NodeJS.ErrnoException).errno === 'number';
    const bug = !(error instanceof PipelineError) && !system ? ' (unexpected: please report it)' : '';
    text = `pipeline: ${message} [${errorCode}]${bug}\n${error instanceof UsageError && error.code === 'usage' ? '\n' + (command && COMMANDS[command] ? commandHelp(command) : USAGE) : ''}`;
    if (json) io.stdout(JSON.stringify({ status: 'error', error: { code: errorCode, message } }) + '\n');
  }
  io.stderr(text);
  return code;
}

function requireFile(rest: string[], command: string): string {
  if (rest.length !== 1) throw new UsageError(`${command} takes exactly one pipeline file, got ${rest.length}`);
  return rest[0];
}

function selectionOf(values: Record<string, any>) {
  return { from: values.from, only: values.only, force: values.force };
}

function positiveInt(text: string, flag: string, orElse = ''): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a whole number of at least 1${orElse}, got '${text}'`);
  return n;
}

/** A known backend that looks installed, or a `UsageError` (exit 2) saying why not and how to fix it. */
function usableBackend(name: string, source: string, io: CliIo): string {
  backendOf(name);
  const why = io.backend?.unavailable?.(name);
  if (why) throw new UsageError(`${source} ${name}: ${why}`);
  return name;
}

function backendOf(name: string): string {
  if (!BACKENDS.includes(name)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${name}'`);
  return name;
}
