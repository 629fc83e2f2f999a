/**
 * Sweeps: a stage's `matrix:` (param -> list of values) expands it into one *branch* per
 * combination, and every stage downstream of a branch is expanded with it (a branch's
 * fine-tune, its prune, its evaluate) until a stage that *joins* branches (`join: true` on its
 * definition, e.g. `select`) reads them all. Stages upstream of the first swept stage are not
 * expanded, so they run once for every branch.
 *
 * A matrix names params of its own stage only. A 2-D sweep over two stages (unfreeze depth x
 * fine-tune lr) puts one matrix on each: the branches of the second stage are the product of
 * its own values and its upstream's branches. Branch ids are the template's id followed by
 * each coordinate, `<label>-<value>`, in pipeline order (`fine-tune-blocks-2-lr-1e-4`), so an
 * id depends only on the values it stands for: adding or changing one value leaves the other
 * branches' ids (and their cache keys) as they were. Pure functions over plain data.
 */
import type { ValidationIssue } from './errors.js';
import { canonicalJson } from './hash.js';
import type { StageDefinition } from './types.js';
import type { Json } from './types.js';

/** Branches one stage's matrix may make (the product of its lists' lengths). */
export const MAX_STAGE_BRANCHES = 256;
/** Stages the whole expanded pipeline may hold. */
export const MAX_EXPANDED_STAGES = 2048;

/** One swept param. */
export interface MatrixAxis {
  /** The stage (its id in the file) whose `matrix:` sweeps it. */
  stage: string;
  /** The param of that stage's `with:`. */
  param: string;
  /** How branch ids and coordinates name it: `param`, or `<stage>-<param>` when two stages sweep params of one name. */
  label: string;
  /** The values, in the file's order. */
  values: Json[];
  /** The id fragment of each value (`1e-4`, `0p5`, `true`, `sgd`; the index when values cannot be named apart). */
  slugs: string[];
}

/** The sweeps of a pipeline: its axes, and the branches each stage of the file became. */
export interface MatrixInfo {
  axes: MatrixAxis[];
  /** Stage id in the file -> the ids of its branches, for every stage that was expanded. */
  branches: Record<string, string[]>;
}

/** The matrix as summaries and `plan --json` show it: the axes without their id fragments, and the branches. */
export function describeMatrix(matrix: MatrixInfo): { axes: Omit<MatrixAxis, 'slugs'>[]; branches: Record<string, string[]> } {
  return { axes: matrix.axes.map(({ slugs: _slugs, ...axis }) => axis), branches: matrix.branches };
}

/** A stage as written (params validated per combination), before expansion. */
export interface TemplateStage {
  id: string;
  kind: string;
  definition: StageDefinition;
  needs: string[];
  line?: number;
  /** Its own matrix: the swept params in file order and their values. Absent: no matrix. */
  sweep?: { params: string[]; values: Json[][] };
  /** Resolved params per combination of `sweep` (row-major, first param slowest); one entry without a sweep. */
  variants: Record<string, unknown>[];
}

/** A stage of the expanded graph. */
export interface ExpandedStage {
  id: string;
  kind: string;
  definition: StageDefinition;
  params: Record<string, unknown>;
  needs: string[];
  line?: number;
  /** The stage id in the file it was expanded from; absent when it is not a branch. */
  template?: string;
  /** Its matrix coordinates (axis label -> value), upstream sweeps first; absent when it is not a branch. */
  coords?: Record<string, Json>;
}

/** A problem found in a `matrix:`; `segments` locate it under `stages.<id>`. */
export type MatrixProblem = Pick<ValidationIssue, 'code' | 'message'> & { segments: string[] };

/**
 * Problems of one stage's `matrix:` that the schema does not catch: a param the kind does not
 * have, an empty list, a param also set in `with:`, a value given twice.
 */
export function checkStageMatrix(id: string, matrix: Record<string, unknown[]>, withParams: Record<string, unknown>, definition: StageDefinition): MatrixProblem[] {
  const problems: MatrixProblem[] = [];
  const known = Object.keys((definition.paramsSchema.properties as Record<string, unknown> | undefined) ?? {});
  const params = Object.keys(matrix);
  if (!params.length) problems.push({ code: 'matrix_empty', segments: ['matrix'], message: `stage '${id}' has an empty matrix; list at least one param with its values, e.g. matrix: { ${known[0] ?? 'param'}: [a, b] }, or remove matrix` });
  for (const param of params) {
    const values = matrix[param];
    if (!known.includes(param)) {
      problems.push({ code: 'matrix_unknown_param', segments: ['matrix', param], message: `stage '${id}' (${definition.kind}) has no param '${param}' to sweep; a matrix names params of its own stage (${known.join(', ')}); to sweep another stage's param, put a matrix on that stage` });
      continue;
    }
    if (!values.length) problems.push({ code: 'matrix_empty', segments: ['matrix', param], message: `matrix.${param} of stage '${id}' is an empty list; give at least one value (two or more to compare)` });
    if (Object.prototype.hasOwnProperty.call(withParams, param))
      problems.push({ code: 'matrix_collision', segments: ['with', param], message: `'${param}' of stage '${id}' is set both in with: and in matrix:; remove it from with: (each branch gets its value from the matrix)` });
    if (values.length > MAX_STAGE_BRANCHES) continue; // reported below, without listing every duplicate
    const seen = new Map<string, number>();
    values.forEach((value, index) => {
      const key = canonicalJson(value as Json);
      if (seen.has(key)) problems.push({ code: 'matrix_collision', segments: ['matrix', param, String(index)], message: `matrix.${param} of stage '${id}' lists ${formatValue(value as Json)} twice (items ${seen.get(key)} and ${index}); two branches would be the same, remove one` });
      else seen.set(key, index);
    });
  }
  const product = params.reduce((n, param) => n * Math.max(1, matrix[param].length), 1);
  if (product > MAX_STAGE_BRANCHES)
    problems.push({ code: 'matrix_too_large', segments: ['matrix'], message: `the matrix of stage '${id}' makes ${product} combinations; a stage may sweep at most ${MAX_STAGE_BRANCHES}: list fewer values` });
  return problems;
}

/** The combinations of a sweep, row-major (the first param varies slowest). */
export function combinations(sweep: { params: string[]; values: Json[][] }): Record<string, Json>[] {
  let out: Record<string, Json>[] = [{}];
  sweep.params.forEach((param, i) => {
    out = out.flatMap((partial) => sweep.values[i].map((value) => ({ ...partial, [param]: value })));
  });
  return out;
}

/** Index of each param's value in a combination (for locating problems and naming branches). */
export function combinationIndices(sweep: { params: string[]; values: Json[][] }, index: number): number[] {
  const out: number[] = [];
  for (let i = sweep.params.length - 1; i >= 0; i--) {
    const n = sweep.values[i].length;
    out[i] = index % n;
    index = Math.floor(index / n);
  }
  return out;
}

/** A value as the plan and status show it: numbers in their shortest form (`1e-4`, `0.5`), anything else as JSON. */
export function formatValue(value: Json): string {
  if (typeof value === 'number') return shortNumber(value);
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function shortNumber(n: number): string {
  const plain = String(n);
  const exp = n.toExponential().replace('e+', 'e');
  return plain.includes('e') || exp.length <= plain.length ? exp : plain;
}

/** An id fragment for a value, or undefined when it has none (objects, lists, null, nothing left after slugging). */
function slugOf(value: Json): string | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? shortNumber(value).replace(/^-/, 'm').replace(/\./g, 'p') : undefined;
  if (typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return value.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '') || undefined;
  return undefined;
}

/** Slugs of an axis's values; numbered from 0 when a value has no slug or two share one. */
function slugsOf(values: Json[]): string[] {
  const slugs = values.map(slugOf);
  const distinct = new Set(slugs);
  return slugs.every((s) => s !== undefined) && distinct.size === slugs.length ? (slugs as string[]) : values.map((_, i) => String(i));
}

/**
 * A halving join (`StageDefinition.halving`) runs its needs in rungs of their `budget` param and
 * stops some early: each need must be a stage with a budget (train-head, fine-tune), and no
 * other stage may need it (after a stopped branch it would have nothing to read; another join
 * would read what this one stops).
 */
function halvingProblems(t: TemplateStage, templates: TemplateStage[]): (MatrixProblem & { stage: string })[] {
  const spec = t.definition.halving?.(t.variants[0] as never);
  if (!spec) return [];
  const byId = new Map(templates.map((s) => [s.id, s]));
  return t.needs.flatMap((dep): (MatrixProblem & { stage: string })[] => {
    const need = byId.get(dep);
    if (!need) return [];
    if (!need.definition.budget) {
      const budgeted = templates.filter((s) => s.definition.budget).map((s) => `'${s.id}'`);
      return [{ stage: t.id, code: 'halving_needs_budget', segments: ['with', 'halving'], message: `stage '${t.id}' halves its sweep, which trains its needs in rungs of epochs, but '${dep}' (${need.kind}) has no epochs to stop and go on; make select need the training stage itself${budgeted.length ? ` (${budgeted.join(', ')})` : ''}, or set halving: false` }];
    }
    const reported = need.definition.budgetMetrics;
    if (reported && !reported.includes(spec.metric)) return [{ stage: t.id, code: 'halving_metric_unknown', segments: ['with', 'metric'], message: `stage '${t.id}' halves its sweep by '${spec.metric}', which '${dep}' (${need.kind}) does not report after a rung; it reports ${reported.join(', ')}: rank by one of those, or set halving: false` }];
    // A second join would read branches this one stops (or halve them its own way).
    const others = templates.filter((s) => s !== t && s.needs.includes(dep)).map((s) => `'${s.id}'`);
    if (others.length) return [{ stage: t.id, code: 'halving_needs_budget', segments: ['with', 'halving'], message: `stage '${t.id}' halves its sweep, so it stops some branches of '${dep}' early, but ${others.join(', ')} also need${others.length === 1 ? 's' : ''} '${dep}' and would have nothing to read; make them need '${t.id}' instead, or set halving: false` }];
    return [];
  });
}

/**
 * Expands templates (in topological order) into branches. Returns the expanded stages (in
 * the same order, branches of one template together), their needs, the matrix description
 * (undefined when nothing is swept) and problems: a joining stage with fewer than two
 * branches to read, an id that two stages would share.
 */
export function expandMatrix(templates: TemplateStage[]): { stages: ExpandedStage[]; needs: Map<string, string[]>; matrix?: MatrixInfo; problems: (MatrixProblem & { stage: string })[] } {
  const problems: (MatrixProblem & { stage: string })[] = [];
  const axes: MatrixAxis[] = [];
  const axisOf = new Map<string, number[]>();
  for (const t of templates) {
    if (!t.sweep) continue;
    axisOf.set(
      t.id,
      t.sweep.params.map((param, i) => axes.push({ stage: t.id, param, label: param, values: t.sweep!.values[i], slugs: slugsOf(t.sweep!.values[i]) }) - 1),
    );
  }
  for (const axis of axes) if (axes.some((other) => other !== axis && other.param === axis.param)) axis.label = `${axis.stage}-${axis.param}`;
  /** An assignment: axis index -> value index. */
  type Assign = Map<number, number>;
  const variants = new Map<string, { id: string; assign: Assign }[]>();
  const stages: ExpandedStage[] = [];
  const branches: Record<string, string[]> = {};
  const consistent = (a: Assign, b: Assign) => [...b].every(([axis, value]) => !a.has(axis) || a.get(axis) === value);
  for (const t of templates) {
    // Combine the needs' branches that agree on every axis they share.
    let merged: { assign: Assign; needs: string[] }[] = [{ assign: new Map(), needs: [] }];
    if (t.definition.join) {
      merged = [{ assign: new Map(), needs: t.needs.flatMap((dep) => (variants.get(dep) ?? []).map((v) => v.id)) }];
      if (merged[0].needs.length < 2)
        problems.push({
          stage: t.id,
          code: 'join_without_branches',
          segments: [t.needs.length ? 'needs' : 'uses'],
          message: `stage '${t.id}' (${t.kind}) picks among branches, but its needs give ${merged[0].needs.length ? `only '${merged[0].needs[0]}'` : 'none'}; need a stage with a matrix: (or one downstream of it), or list two or more stages`,
        });
      problems.push(...halvingProblems(t, templates));
    } else {
      for (const dep of t.needs) {
        merged = merged.flatMap((m) =>
          (variants.get(dep) ?? []).filter((v) => consistent(m.assign, v.assign)).map((v) => ({ assign: new Map([...m.assign, ...v.assign]), needs: [...m.needs, v.id] })),
        );
      }
    }
    if (stages.length + merged.length * t.variants.length > MAX_EXPANDED_STAGES) {
      problems.push({ stage: t.id, code: 'matrix_too_large', segments: ['uses'], message: `the sweeps would expand the pipeline to more than ${MAX_EXPANDED_STAGES} stages at '${t.id}' (${merged.length * t.variants.length} branches of it); sweep fewer values, or join branches with a select sooner` });
      return { stages, needs: new Map(), problems };
    }
    const own = axisOf.get(t.id) ?? [];
    const out: { id: string; assign: Assign }[] = [];
    for (const m of merged) {
      t.variants.forEach((params, index) => {
        const assign: Assign = new Map(m.assign);
        if (t.sweep) combinationIndices(t.sweep, index).forEach((value, i) => assign.set(own[i], value));
        const order = [...assign.keys()].sort((a, b) => a - b);
        const id = order.length ? [t.id, ...order.map((axis) => `${axes[axis].label}-${axes[axis].slugs[assign.get(axis)!]}`)].join('-') : t.id;
        const coords = Object.fromEntries(order.map((axis) => [axes[axis].label, axes[axis].values[assign.get(axis)!]]));
        out.push({ id, assign });
        stages.push({ id, kind: t.kind, definition: t.definition, params, needs: m.needs, line: t.line, ...(order.length ? { template: t.id, coords } : {}) });
      });
    }
    variants.set(t.id, out);
    if (out.length > 1 || out[0]?.id !== t.id) branches[t.id] = out.map((v) => v.id);
  }
  // A generated id must not be another stage's: `tune` with lr 1e-4 and a stage written `tune-lr-1e-4`.
  const owner = new Map<string, string>();
  for (const stage of stages) {
    const from = stage.template ?? stage.id;
    const other = owner.get(stage.id);
    if (other !== undefined && other !== from)
      problems.push({ stage: from, code: 'matrix_collision', segments: [stage.template ? 'matrix' : 'uses'], message: `two stages would have the id '${stage.id}' (from '${other}' and from '${from}'); rename one of them` });
    owner.set(stage.id, from);
  }
  const needs = new Map(stages.map((s) => [s.id, s.needs]));
  return { stages, needs, ...(axes.length ? { matrix: { axes, branches } } : {}), problems };
}
