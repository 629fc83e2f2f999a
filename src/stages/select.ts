/**
 * `select`: joins the branches of a sweep. It reads the metric of every branch in its `needs`
 * that succeeded (`ctx.branches`, one per branch of a swept stage), keeps those that pass the
 * gate, picks the best, and passes that branch's model on, so the stages after it (export) run
 * once. The branches that failed (`ctx.failedBranches`) are listed, not chosen from. The table
 * of the branches, the failed ones and the choice are its metrics and `selection.json`.
 */
import { cp, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import paramsSchema from '../../schemas/stages/select.schema.json' with { type: 'json' };
import { GateError, InternalError, StageError } from '../runtime/errors.js';
import { ENTRY_FILE } from '../runtime/store.js';
import type { BranchInput, Json, StageDefinition, StageInput } from '../runtime/types.js';

/** `with:` of a `select` stage (see schemas/stages/select.schema.json). */
export interface SelectParams {
  /** Metric that ranks the branches. Default `val_acc`. */
  metric: string;
  /** `max` or `min`; default `min` for a metric ending in `loss`, else `max`. */
  mode?: 'max' | 'min';
  /** Minimum per metric a branch must reach to be a candidate. Default `{}`. */
  gate: Record<string, number>;
  /** Successive halving of the branches (`true`: factor 3 from 1 epoch), or `false`. Default `false`. */
  halving: boolean | { factor?: number; min?: number };
}

/** A branch the sweep stopped early (successive halving), listed beside the table. */
export interface PrunedRow {
  id: string;
  coords: Record<string, Json>;
  /** Its value of the ranking metric where it stopped (null when it reports none). */
  value: number | null;
  /** Epochs it ran, of how many. */
  budget: number;
  of: number;
}

/** One row of the selection table. */
export interface SelectionRow {
  /** The branch stage's id. */
  id: string;
  /** Its matrix coordinates. */
  coords: Record<string, Json>;
  /** Its value of the ranking metric. */
  value: number;
  /** Whether it reached every gate minimum. */
  passed: boolean;
  /** The stage whose model it stands for. */
  model: string;
}

/** A branch select did not choose from because it failed (or a stage upstream of it in the branch did). */
export interface FailedRow {
  /** The branch stage's id. */
  id: string;
  /** Its matrix coordinates. */
  coords: Record<string, Json>;
  /** `failed`, or `skipped` when a stage upstream of it in the branch failed. */
  status: 'failed' | 'skipped';
  /** The stage that failed: the branch itself, or the one upstream of it. */
  stage: string;
  /** That stage's error code and message. */
  code: string;
  message: string;
}

/** The file in the artifact that holds the table and the choice. */
export const SELECTION_FILE = 'selection.json';

export const select: StageDefinition<SelectParams> = {
  kind: 'select',
  version: 1,
  join: true,
  description: 'Pick the best branch of a sweep by a metric (with an optional gate, optionally halving the sweep) and pass its model on',
  halving(params) {
    if (!params.halving) return undefined;
    const options = params.halving === true ? {} : params.halving;
    return { metric: params.metric, mode: modeOf(params), factor: options.factor ?? 3, min: options.min ?? 1 };
  },
  paramsSchema,
  consumes: ['model'],
  provides: ['model'],
  async run(ctx, params) {
    const branches = ctx.branches;
    if (!branches?.length) throw new InternalError(`select stage '${ctx.id}' was given no branches`);
    const mode = modeOf(params);
    const rows = branches.map((branch) => rowOf(branch, params));
    const passed = rows.filter((row) => row.passed);
    const table = rows.map((row) => ({ ...row }) as unknown as Json);
    const failed: FailedRow[] = (ctx.failedBranches ?? []).map((f) => ({ id: f.id, coords: f.coords, status: f.status, stage: f.error.stage, code: f.error.code, message: f.error.message }));
    // Only when some failed, so a sweep whose branches all succeed keeps its outputs (and the keys after it).
    const pruned: PrunedRow[] = (ctx.prunedBranches ?? []).map((p) => ({ id: p.id, coords: p.coords, value: typeof p.metrics[params.metric] === 'number' ? (p.metrics[params.metric] as number) : null, budget: p.budget, of: p.of }));
    const failures: Record<string, Json> = {
      ...(failed.length ? { failed: failed.map((row) => ({ ...row }) as unknown as Json) } : {}),
      ...(pruned.length ? { pruned: pruned.map((row) => ({ ...row }) as unknown as Json) } : {}),
    };
    const total = rows.length + failed.length + pruned.length;
    if (!passed.length) {
      const gate = Object.entries(params.gate).map(([name, min]) => `${name} >= ${min}`).join(', ');
      const more = [...(failed.length ? [`${failed.length} more failed`] : []), ...(pruned.length ? [`${pruned.length} more pruned by halving`] : [])];
      const others = more.length ? ` (${more.join(', ')})` : '';
      throw new GateError('select_none_passed', `no branch of ${rows.length}${others} reached the gate (${gate}); best ${params.metric}: ${best(rows, mode).id} ${best(rows, mode).value}`, {
        metrics: { branches: total, passed: 0, metric: params.metric, table, ...failures },
      });
    }
    const chosen = best(passed, mode);
    const branch = branches[rows.indexOf(chosen)];
    const model = modelOf(branch)!;
    // The chosen model's files, as they are: its ModelInfo (classes, preprocessing, the frozen
    // pass it shares) travels with it.
    for (const name of await readdir(model.dir)) if (name !== ENTRY_FILE) await cp(path.join(model.dir, name), path.join(ctx.outDir, name), { recursive: true });
    const choice = { chosen: chosen.id, model: model.id, coords: chosen.coords, metric: params.metric, mode, value: chosen.value };
    await writeFile(path.join(ctx.outDir, SELECTION_FILE), JSON.stringify({ ...choice, gate: params.gate, table: rows, ...(failed.length ? { failed } : {}), ...(pruned.length ? { pruned } : {}) }, null, 1) + '\n');
    ctx.log.info({ ...choice, branches: total, passed: passed.length, failed: failed.map((row) => row.id), pruned: pruned.map((row) => row.id) }, 'branch selected');
    return {
      metrics: { chosen: chosen.id, [params.metric]: chosen.value, branches: total, passed: passed.length, model: model.id, choice: chosen.coords, metric: params.metric, mode, table, ...failures, report: SELECTION_FILE },
    };
  },
};

/** A branch's value and gate verdict; a missing metric or model is the user's to fix. */
function rowOf(branch: BranchInput, params: SelectParams): SelectionRow {
  const { input } = branch;
  const numberOf = (name: string): number => {
    const value = input.metrics[name];
    if (typeof value === 'number' && Number.isFinite(value)) return value;
    const numeric = Object.entries(input.metrics).filter(([, v]) => typeof v === 'number').map(([k]) => k);
    throw new StageError('select_metric_missing', `branch '${input.id}' (${input.kind}) reports no number '${name}'${value === undefined ? '' : ` (it is ${JSON.stringify(value)})`}; its metrics: ${numeric.join(', ') || 'none'}`, { branch: input.id, metric: name });
  };
  const model = modelOf(branch);
  if (!model) throw new StageError('select_no_model', `branch '${input.id}' (${input.kind}) has no model in it or upstream of it; select needs stages that train or score a model`, { branch: input.id });
  const passed = Object.entries(params.gate).every(([name, minimum]) => numberOf(name) >= minimum);
  return { id: input.id, coords: branch.coords, value: numberOf(params.metric), passed, model: model.id };
}

/** The branch's own model, or the nearest one upstream of it (an evaluate's). */
function modelOf(branch: BranchInput): StageInput | undefined {
  return [branch.input, ...branch.upstream].find((input) => input.provides.includes('model'));
}

function modeOf(params: SelectParams): 'max' | 'min' {
  return params.mode ?? (/loss$/i.test(params.metric) ? 'min' : 'max');
}

/** The best row; the first of equals (pipeline order), so the choice is stable. */
function best(rows: SelectionRow[], mode: 'max' | 'min'): SelectionRow {
  return rows.reduce((a, b) => ((mode === 'max' ? b.value > a.value : b.value < a.value) ? b : a));
}
