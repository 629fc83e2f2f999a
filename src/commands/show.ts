/**
 * `pipeline show STAGE [FILE] [--artifacts DIR] [--json]`: one stage as the store knows it — its
 * latest metrics, the same metrics across runs, the files of its artifact and the entry
 * directory that holds them — so no one has to open `artifacts/cache/<sha256>/` by hand.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../runtime/errors.js';
import type { RunSummary, StageSummary } from '../runtime/execute.js';
import { rungKey } from '../runtime/halving.js';
import { resolvePipeline } from '../runtime/run.js';
import { ArtifactStore } from '../runtime/store.js';
import { didYouMean } from '../runtime/suggest.js';
import type { Json, StageRegistry } from '../runtime/types.js';
import { readStageArtifact } from '../report/collect.js';

/** How many runs the history goes back. */
export const SHOW_HISTORY_RUNS = 20;

/** What `show` prints (`--json` prints exactly this). */
export interface StageView {
  stage: string;
  uses: string;
  pipeline: string;
  /** The newest run with this stage. */
  run: string;
  status: StageSummary['status'];
  key: string;
  seconds: number;
  metrics: Record<string, Json>;
  /** The artifact's entry directory, and whether it is still in the store. */
  artifact: { dir: string; present: boolean; files: { name: string; bytes: number; path: string }[] };
  /** Newest first: this stage in each run of the pipeline (at most `SHOW_HISTORY_RUNS`). */
  history: { run: string; started: string; status: StageSummary['status']; key: string; seconds: number; metrics: Record<string, number> }[];
  /** Pipelines other than `pipeline` that also have a stage of this id (pass FILE to pick one). */
  otherPipelines: string[];
}

/** Reads the view of `stageId` from the store; FILE (a pipeline file) picks its pipeline. */
export async function readStageView(artifacts: string, stageId: string, file: string | undefined, registry: StageRegistry): Promise<StageView> {
  const store = new ArtifactStore(artifacts);
  const pipelineName = file ? resolvePipeline({ file, registry }).name : undefined;
  const summaries: RunSummary[] = [];
  for (const id of await store.listRuns()) {
    const summary = await store.readSummary(id);
    if (summary.ok) summaries.push(summary.value);
  }
  if (!summaries.length) throw new UsageError(`no runs in the artifact store ${store.root}; run a pipeline first, or pass --artifacts DIR`, 'no_runs');
  const withStage = summaries.filter((s) => s.stages.some((t) => t.id === stageId));
  const chosen = pipelineName ?? withStage[0]?.pipeline;
  const runs = withStage.filter((s) => s.pipeline === chosen);
  if (!runs.length) {
    const ids = new Set(summaries.filter((s) => !pipelineName || s.pipeline === pipelineName).flatMap((s) => s.stages.map((t) => t.id)));
    const scope = pipelineName ? `pipeline '${pipelineName}'` : 'any pipeline';
    throw new UsageError(`no run of ${scope} in ${store.root} has a stage '${stageId}'${didYouMean(stageId, ids)}; stages seen: ${[...ids].sort().join(', ') || 'none'}`, 'stage_not_found');
  }
  const latest = runs[0].stages.find((t) => t.id === stageId)!;
  // A branch a halving join stopped has no entry of its own: its rung (where it stopped) has the files.
  const rung = latest.status === 'pruned' && typeof latest.metrics.budget === 'number' ? rungKey(latest.key, latest.metrics.budget) : undefined;
  const artifact = await readStageArtifact(store, rung ? { ...latest, key: rung } : latest);
  const files = await Promise.all(
    artifact.files.map(async (name) => ({ name, path: path.join(artifact.dir, name), bytes: (await stat(path.join(artifact.dir, name)).catch(() => ({ size: 0 }))).size })),
  );
  return {
    stage: stageId,
    uses: latest.uses,
    pipeline: chosen!,
    run: runs[0].run,
    status: latest.status,
    key: latest.key,
    seconds: latest.seconds,
    metrics: latest.metrics,
    artifact: { dir: artifact.dir, present: artifact.present, files },
    history: runs.slice(0, SHOW_HISTORY_RUNS).map((run) => {
      const stage = run.stages.find((t) => t.id === stageId)!;
      return { run: run.run, started: run.started, status: stage.status, key: stage.key, seconds: stage.seconds, metrics: numericMetrics(stage.metrics) };
    }),
    otherPipelines: [...new Set(withStage.map((s) => s.pipeline))].filter((p) => p !== chosen),
  };
}

function numericMetrics(metrics: Record<string, Json>): Record<string, number> {
  return Object.fromEntries(Object.entries(metrics).filter((e): e is [string, number] => typeof e[1] === 'number'));
}

function formatValue(value: Json): string {
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === 'string') return value;
  const text = JSON.stringify(value);
  return text.length > 100 ? `${text.slice(0, 97)}...` : text;
}

/** The human text of a view. */
export function renderStageView(view: StageView): string {
  const lines: string[] = [];
  lines.push(`stage ${view.stage} (${view.uses}) of pipeline ${view.pipeline}: ${view.status} in run ${view.run} (${view.seconds.toFixed(2)}s)`);
  const rung = view.status === 'pruned' && view.artifact.present ? `  (its halving rung: where it stopped, after ${view.metrics.budget} epoch${view.metrics.budget === 1 ? '' : 's'})` : '';
  lines.push(`artifact: ${view.artifact.dir}${view.artifact.present ? rung : '  (no longer in the store: removed by gc?)'}`);
  lines.push(`key:      ${view.key}`);
  if (view.artifact.files.length) {
    lines.push('files:');
    const width = Math.max(...view.artifact.files.map((f) => f.name.length));
    for (const f of view.artifact.files) lines.push(`  ${f.name.padEnd(width)}  ${f.bytes.toLocaleString('en-US').padStart(12)} B`);
  }
  const entries = Object.entries(view.metrics);
  if (entries.length) {
    lines.push('metrics:');
    const width = Math.max(...entries.map(([k]) => k.length));
    for (const [k, v] of entries) lines.push(`  ${k.padEnd(width)}  ${formatValue(v)}`);
  }
  // The history's columns: at most 6 of the latest run's numeric metrics, those that differ between runs first.
  const names = Object.keys(numericMetrics(view.metrics));
  const varies = (name: string) => new Set(view.history.map((h) => h.metrics[name])).size > 1;
  const columns = [...names.filter(varies), ...names.filter((n) => !varies(n))].slice(0, 6);
  lines.push(`history (${view.history.length} run${view.history.length === 1 ? '' : 's'}, newest first):`);
  const head = ['run', 'status', 'key', 'seconds', ...columns];
  const rows = view.history.map((h) => [h.run, h.status, h.key.slice(0, 12), h.seconds.toFixed(2), ...columns.map((c) => (h.metrics[c] === undefined ? '-' : formatValue(h.metrics[c])))]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const row of [head, ...rows]) lines.push(`  ${row.map((cell, i) => cell.padEnd(widths[i])).join('  ')}`.trimEnd());
  if (view.otherPipelines.length) lines.push(`note: pipelines ${view.otherPipelines.join(', ')} also have a stage '${view.stage}'; pass their pipeline file to see theirs`);
  return lines.join('\n') + '\n';
}

/** The command: returns the exit code (errors are thrown for the CLI to map). */
export async function commandShow(rest: string[], values: { json?: boolean }, artifacts: string, io: { registry: StageRegistry; stdout(text: string): void }): Promise<number> {
  const [stageId, file, ...extra] = rest;
  if (!stageId) throw new UsageError('show takes a stage id (e.g. `pipeline show fine-tune`), and optionally the pipeline file');
  if (extra.length) throw new UsageError(`show takes a stage id and at most one pipeline file, got ${rest.length} arguments`);
  const view = await readStageView(artifacts, stageId, file, io.registry);
  io.stdout(values.json ? JSON.stringify(view) + '\n' : renderStageView(view));
  return 0;
}
