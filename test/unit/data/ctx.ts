/**
 * Test helpers for the data stages until the runtime lands: a temp-dir fixture and a hand-built
 * StageContext whose logger records entries in memory.
 */
import { createHash } from 'node:crypto';
import { cp, mkdtemp, mkdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { StageError } from '../../../src/runtime/errors.js';
import type { ProgressEvent, StageContext, StageDefinition, StageInput, StageResult } from '../../../src/runtime/types.js';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'images');
export const FASHION = join(FIXTURES, 'fashion');
export const BAD = join(FIXTURES, 'bad');

/** A temp directory; call `remove()` in afterEach. */
export async function testdir(): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), 'data-test-'));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** Copies the Fashion-MNIST fixture (3 classes x 8 PNGs) to `target`. */
export async function copyFashion(target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  await cp(FASHION, target, { recursive: true });
}

export interface TestContext<P> extends StageContext<P> {
  logs: Record<string, unknown>[];
  progressEvents: ProgressEvent[];
}

/** Builds a context with a fresh out dir under `root`. */
export async function makeContext<P>(options: { root: string; params: P; seed?: number; inputs?: StageInput[]; id?: string; kind?: string }): Promise<TestContext<P>> {
  const outDir = await mkdtemp(join(options.root, 'out-'));
  const workDir = await mkdtemp(join(options.root, 'work-'));
  const logs: Record<string, unknown>[] = [];
  const progressEvents: ProgressEvent[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const inputs = options.inputs ?? [];
  return {
    id: options.id ?? 'stage',
    kind: options.kind ?? 'stage',
    params: options.params,
    key: 'test-key',
    seed: options.seed ?? 42,
    baseDir: options.root,
    outDir,
    workDir,
    inputs,
    input(type) {
      const found = inputs.find((input) => input.provides.includes(type));
      if (!found) throw new StageError('input_missing', `no upstream artifact provides ${type}`);
      return found;
    },
    async memo(name, parts, compute) {
      const dir = join(options.root, `memo-${createHash('sha256').update(JSON.stringify([name, parts])).digest('hex').slice(0, 16)}`);
      if (!(await stat(dir).catch(() => null))) {
        await mkdir(dir);
        await compute(dir);
      }
      return dir;
    },
    log,
    progress: (event) => void progressEvents.push(event),
    signal: new AbortController().signal,
    logs,
    progressEvents,
  };
}

/** Runs a stage on a context and returns its result and the context. */
export async function runStage<P>(stage: StageDefinition<P>, options: { root: string; params: P; seed?: number; inputs?: StageInput[] }): Promise<{ result: StageResult; ctx: TestContext<P> }> {
  const ctx = await makeContext({ ...options, id: stage.kind, kind: stage.kind });
  const result = await stage.run(ctx, options.params);
  return { result, ctx };
}

/** An upstream input entry pointing at a finished artifact. */
export function inputFrom(stage: StageDefinition, dir: string, metrics: StageResult['metrics'] = {}): StageInput {
  return { id: stage.kind, kind: stage.kind, key: 'upstream-key', dir, provides: stage.provides, metrics: metrics ?? {} };
}

/** Ingest params with schema defaults, as the runtime would resolve them. */
export function ingestParams(overrides: Record<string, unknown>) {
  return { split: { val: 0.2, test: 0 }, strict: false, extensions: ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif'], ...overrides };
}
