/**
 * What pruning buys and costs: sparsity (magnitude) or kept-channel ratio (structured) against
 * bytes of the saved weights, MACs, measured latency and validation accuracy.
 *
 *   npx tsx bench/prune.ts            (or `npm run bench prune`)
 *
 * It trains its own model with the real stages: ingest + preprocess of `data/fashion-mnist`
 * (28x28 grayscale, 4 classes, 320 images; the 24-image test fixture when that folder is
 * absent), `build-model` (conv+BN+ReLU blocks of 16/32/64 filters) and `train-head` with the
 * whole network trainable, then runs the `prune` stage's `run` once per row on that model, each
 * with 5 recovery epochs at lr 1e-3. Latency is the stage's own measurement: median of 21 `predict` calls
 * on a batch of 32, same backend for before and after. Rows are independent (each prunes the
 * same trained model). Takes about a minute on two cores with the wasm backend.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { configureBackend, describeBackend, useTf } from '../src/ml/backend.js';
import { compileStageValidator } from '../src/runtime/schema.js';
import type { Json, Metrics, StageContext, StageDefinition, StageInput } from '../src/runtime/types.js';
import { buildModel } from '../src/stages/build-model.js';
import { ingest } from '../src/stages/ingest.js';
import { preprocess } from '../src/stages/preprocess.js';
import { prune, type PruneParams } from '../src/stages/prune.js';
import { trainHead } from '../src/stages/train-head.js';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');

/** One row of the table. */
export interface PruneBenchRow {
  label: string;
  metrics: Metrics;
}

/** Runs the stages, prints the table and returns its rows. */
export async function benchPrune(): Promise<PruneBenchRow[]> {
  const root = await mkdtemp(join(tmpdir(), 'bench-prune-'));
  try {
    if (!describeBackend()) configureBackend((process.env.PIPELINE_BACKEND as 'wasm') ?? 'auto');
    await useTf();
    const demo = join(ROOT, 'data', 'fashion-mnist');
    const images = existsSync(demo) ? demo : join(ROOT, 'test', 'fixtures', 'images', 'fashion');
    const t0 = performance.now();
    const ingested = await runBenchStage(root, ingest, { path: images }, []);
    const shards = await runBenchStage(root, preprocess, { size: [28, 28], channels: 1, normalize: 'imagenet' }, [ingested]);
    const base = await runBenchStage(root, buildModel, { input_shape: [28, 28, 1] }, []);
    const trained = await runBenchStage(root, trainHead, { lr: 0.001, epochs: 30, batch: 16, early_stopping: false, dropout: 0.2 }, [shards, base]);
    const trainSeconds = (performance.now() - t0) / 1000;
    if (process.env.BENCH_DEBUG) process.stdout.write(JSON.stringify(trained.metrics) + "\n");
    const rows: { label: string; params: Partial<PruneParams> }[] = [
      { label: 'magnitude 0.50 per-layer', params: { method: 'magnitude', sparsity: 0.5 } },
      { label: 'magnitude 0.75 per-layer', params: { method: 'magnitude', sparsity: 0.75 } },
      { label: 'magnitude 0.90 per-layer', params: { method: 'magnitude', sparsity: 0.9 } },
      { label: 'magnitude 0.90 global', params: { method: 'magnitude', sparsity: 0.9, scope: 'global' } },
      { label: 'structured 0.25 l1', params: { method: 'structured', sparsity: 0.25 } },
      { label: 'structured 0.50 l1', params: { method: 'structured', sparsity: 0.5 } },
      { label: 'structured 0.50 bn', params: { method: 'structured', sparsity: 0.5, importance: 'bn' } },
    ];
    const results: PruneBenchRow[] = [];
    for (const row of rows) {
      const out = await runBenchStage(root, prune, { epochs: 5, lr: 0.001, batch: 16, latency_batch: 32, latency_runs: 21, layers: 'all', ...row.params }, [shards, trained]);
      results.push({ label: row.label, metrics: out.metrics });
    }
    const info = describeBackend();
    process.stdout.write(`\nprune bench: ${images.startsWith(demo) ? 'data/fashion-mnist' : 'test fixture'} (${ingested.metrics.images ?? '?'} images, 28x28x1), build-model 16/32/64 + train-head (${trainSeconds.toFixed(0)} s), backend ${info?.name}; latency: batch 32, median of 21\n`);
    const first = results[0].metrics;
    process.stdout.write(`before: ${first.params_before} params, ${first.bytes_before} bytes, ${first.macs_before} MACs, ${first.latency_ms_before} ms, val acc ${fmt(first.val_acc_before)}\n`);
    process.stdout.write('| prune | sparsity / kept channels | params | weight bytes | MACs (nonzero) | latency ms (before → after) | val acc (before → after) |\n|---|---|---|---|---|---|---|\n');
    for (const { label, metrics: m } of results) {
      const amount = m.method === 'magnitude' ? `sparsity ${fmt(m.sparsity)}` : `kept ${fmt(m.kept_channel_ratio)}`;
      const bytes = `${m.bytes_after} (${pct(m.bytes_after, m.bytes_before)})`;
      const macs = `${m.macs_after} (${m.nonzero_macs_after})`;
      process.stdout.write(`| ${label} | ${amount} | ${m.params_after} | ${bytes} | ${macs} | ${m.latency_ms_before} → ${m.latency_ms_after} | ${fmt(m.val_acc_before)} → ${fmt(m.val_acc_after)} |\n`);
    }
    return results;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

function fmt(value: Json | undefined): string {
  return typeof value === 'number' ? value.toFixed(3) : String(value);
}

function pct(after: Json | undefined, before: Json | undefined): string {
  return typeof after === 'number' && typeof before === 'number' ? `${((100 * after) / before).toFixed(0)}%` : '?';
}

/** Runs one stage on a fresh context with schema defaults applied; returns it as an input. */
async function runBenchStage(root: string, stage: StageDefinition, raw: Record<string, unknown>, inputs: StageInput[]): Promise<StageInput> {
  const params = structuredClone(raw);
  const validate = compileStageValidator(stage);
  if (!validate(params)) throw new Error(`bench params of ${stage.kind} are invalid: ${JSON.stringify(validate.errors)}`);
  const outDir = await mkdtemp(join(root, `${stage.kind}-`));
  const workDir = await mkdtemp(join(root, `${stage.kind}-work-`));
  const ctx: StageContext<any> = {
    id: stage.kind,
    kind: stage.kind,
    params,
    key: `${stage.kind}-${outDir}`,
    downstream: [],
    seed: 42,
    baseDir: ROOT,
    outDir,
    workDir,
    inputs,
    input(type) {
      const found = inputs.find((input) => input.provides.includes(type));
      if (!found) throw new Error(`bench: no input provides ${type}`);
      return found;
    },
    async memo(name: string, parts: Json, compute: (dir: string) => Promise<void>) {
      const dir = join(root, `memo-${createHash('sha256').update(JSON.stringify([stage.kind, name, parts])).digest('hex').slice(0, 16)}`);
      if (!(await stat(dir).catch(() => null))) {
        await mkdir(dir);
        await compute(dir);
      }
      return dir;
    },
    log: pino({ level: 'silent' }),
    progress: () => {},
    track: () => ({ tick() {}, done() {} }),
    signal: new AbortController().signal,
  };
  const result = await stage.run(ctx, params);
  return { id: stage.kind, kind: stage.kind, key: ctx.key, dir: outDir, provides: stage.provides, metrics: result.metrics ?? {} };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchPrune();
