/**
 * Run history: what each stage used last (for `plan`'s reasons) and the run folders.
 *   state/<pipeline>/<id>.json  what the last run of each stage used (key, params, inputs)
 *   state/stat-cache.json       hashes of external inputs by stat
 *   runs/<run-id>/              plan.json (keys it uses, written first), log.jsonl, summary.json
 * Reads never throw for what they find: a malformed record is `undefined` or a reason.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { RunSummary } from './execute.js';
import { writeJsonAtomic } from './fsutil.js';
import { checkRunPlan, checkRunSummary, checkStageRecord, parseJson, type Checked, type RunPlanRecord } from './guards.js';
import type { Json } from './types.js';

/** What a stage used last time, to explain why it re-runs. */
export interface StageRecord {
  key: string;
  kind: string;
  version: number;
  /** The stage's derived seed (pipeline seed + stage id): it drives init, shuffling, splits. */
  seed?: number;
  params: Json;
  upstream: Record<string, string>;
  external: Record<string, string>;
  /** Hints of downstream stages, for stages with `lookahead` (see StageDefinition.hints). */
  downstream?: Json;
}

export class RunHistory {
  readonly root: string;
  constructor(root: string) {
    this.root = path.resolve(root);
  }

  runDir(runId: string): string {
    return path.join(this.root, 'runs', runId);
  }
  statCacheFile(): string {
    return path.join(this.root, 'state', 'stat-cache.json');
  }

  /** What a stage used last time; a missing or malformed record is `undefined` (it only explains). */
  async readRecord(pipeline: string, stageId: string): Promise<StageRecord | undefined> {
    const checked = await readChecked(path.join(this.root, 'state', pipeline, `${stageId}.json`), checkStageRecord);
    return checked.ok ? checked.value : undefined;
  }
  async writeRecord(pipeline: string, stageId: string, record: StageRecord): Promise<void> {
    await writeJsonAtomic(path.join(this.root, 'state', pipeline, `${stageId}.json`), record);
  }

  /** Run ids, newest first. */
  async listRuns(): Promise<string[]> {
    const names = await readdir(path.join(this.root, 'runs')).catch(() => [] as string[]);
    return names.sort().reverse();
  }

  /** A run's summary, shape-checked; a missing or malformed one is a reason. */
  async readSummary(runId: string): Promise<Checked<RunSummary>> {
    return readChecked(path.join(this.runDir(runId), 'summary.json'), checkRunSummary);
  }

  /** What a run was going to use, written before it ran anything. */
  async readRunPlan(runId: string): Promise<Checked<RunPlanRecord>> {
    return readChecked(path.join(this.runDir(runId), 'plan.json'), checkRunPlan);
  }
  async writeRunPlan(record: RunPlanRecord): Promise<void> {
    await writeJsonAtomic(path.join(this.runDir(record.run), 'plan.json'), record);
  }

  /**
   * The keys gc keeps: per pipeline, the newest `keep` runs with a readable summary (its stages'
   * keys and those its plan.json lists), plus every run without a summary (killed, or still
   * running) newer than its pipeline's newest summary.
   * A run with neither a readable summary nor a plan keeps nothing and is reported.
   */
  async keptKeys(keep: number): Promise<{ wanted: Set<string>; skippedRuns: { run: string; reason: string }[] }> {
    const wanted = new Set<string>();
    const skippedRuns: { run: string; reason: string }[] = [];
    const keptPerPipeline = new Map<string, number>();
    const newestSummary = new Map<string, string>();
    const unfinished: RunPlanRecord[] = [];
    for (const run of await this.listRuns()) {
      const summary = await this.readSummary(run);
      if (summary.ok) {
        const name = summary.value.pipeline;
        if (!newestSummary.has(name)) newestSummary.set(name, run);
        const count = keptPerPipeline.get(name) ?? 0;
        if (count >= keep) continue;
        keptPerPipeline.set(name, count + 1);
        // With the rungs a halved sweep's branches used: the next run decides by them.
        for (const stage of summary.value.stages) for (const key of [stage.key, ...(Array.isArray(stage.rungs) ? stage.rungs : [])]) wanted.add(key);
        continue;
      }
      const plan = await this.readRunPlan(run);
      if (plan.ok) unfinished.push(plan.value);
      else skippedRuns.push({ run, reason: `summary.json ${summary.reason}; plan.json ${plan.reason}` });
    }
    for (const plan of unfinished) {
      const newest = newestSummary.get(plan.pipeline);
      if (!newest || plan.run > newest) for (const key of plan.keys) wanted.add(key);
    }
    return { wanted, skippedRuns };
  }
}

async function readChecked<T>(file: string, check: (value: unknown) => Checked<T>): Promise<Checked<T>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    return { ok: false, reason: (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : 'is unreadable' };
  }
  const parsed = parseJson(text);
  return parsed.ok ? check(parsed.value) : parsed;
}
