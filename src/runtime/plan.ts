/**
 * `ResolvedPipeline` -> `Plan`: each stage's cache key, whether it runs or comes from the
 * cache, and why. Reads the store (entries, records, the stat cache) but writes nothing.
 */
import path from 'node:path';
import { ValidationError, type ValidationIssue } from './errors.js';
import { descendants, selectStages, type Selection } from './graph.js';
import { canonicalJson, hashPath, sha256, StatCache } from './hash.js';
import type { ResolvedPipeline, ResolvedStage } from './load.js';
import { entryDigest, type ArtifactStore, type EntryMeta, type StageRecord } from './store.js';
import type { DownstreamHint, Json } from './types.js';
import { seedFor } from './seed.js';
import { didYouMean } from './suggest.js';

export interface PlannedStage {
  stage: ResolvedStage;
  key: string;
  action: 'run' | 'cached';
  /** Human reasons: "param epochs changed (5 -> 10)", "cached", "forced". */
  reasons: string[];
  /** The record that will be stored after a successful run. */
  record: StageRecord;
  /** The cached entry, when `action` is `cached` (and, when forced, the one it replaces). */
  entry?: EntryMeta;
  /** Hints of the stages downstream of this one (`StageContext.downstream`). */
  downstream: DownstreamHint[];
  /** `--force`/`--from` chose it: it runs even when its entry is present. */
  forced?: boolean;
}

/** What an upstream that has not run yet contributes to a key until its output is known. */
const PENDING = 'pending:';

/**
 * A stage's key: its kind, implementation version, seed, params, the *output digests* of its
 * upstream stages (so a re-run upstream whose bytes changed re-keys its dependents, and one
 * whose bytes did not keeps them cached) and the content of its external inputs.
 */
export function stageKey(record: Omit<StageRecord, 'key'>): string {
  return sha256(
    canonicalJson({
      kind: record.kind,
      version: record.version,
      seed: record.seed,
      params: record.params,
      upstream: Object.values(record.upstream).sort(),
      external: Object.values(record.external).sort(),
      ...(record.downstream !== undefined ? { downstream: record.downstream } : {}),
    }),
  );
}

/**
 * Re-keys a planned stage once its upstream outputs are known (`upstream`: id -> output digest):
 * the executor calls it before running the stage. A stage that is not forced is cached when the
 * entry of its final key is present and sound.
 */
export async function rekeyStage(planned: PlannedStage, upstream: Record<string, string>, store: ArtifactStore): Promise<PlannedStage> {
  if (canonicalJson(upstream) === canonicalJson(planned.record.upstream)) return planned;
  const { key: _old, ...rest } = planned.record;
  const record: StageRecord = { ...rest, upstream, key: stageKey({ ...rest, upstream }) };
  const check = await store.checkEntry(record.key);
  const entry = check.state === 'ok' ? check.meta : undefined;
  if (planned.forced) return { ...planned, key: record.key, record, entry };
  if (entry) return { ...planned, key: record.key, record, entry, action: 'cached', reasons: ['upstream outputs are the same bytes as before: cached'] };
  const reasons = check.state === 'corrupt' ? [`cache entry is corrupt (${check.reason}); recomputing`] : planned.reasons;
  return { ...planned, key: record.key, record, entry: undefined, action: 'run', reasons };
}

export interface Plan {
  pipeline: ResolvedPipeline;
  /** Stages taking part, in topological order. */
  stages: PlannedStage[];
}

/**
 * Computes keys and decisions. `--only` needs every ancestor cached; anything else is a
 * `ValidationError` (exit 2) that names the stage to run first.
 */
export async function planRun(pipeline: ResolvedPipeline, store: ArtifactStore, selection: Selection, statCache: StatCache): Promise<Plan> {
  const issues = checkSelection(pipeline, selection);
  if (issues.length) throw new ValidationError(issues);
  const aliases = branchAliases(pipeline);
  const { included, forced } = selectStages(pipeline.needs, selection, aliases);
  const only = new Set(selection.only ? (aliases.get(selection.only) ?? [selection.only]) : []);
  const forcedByFlag = new Set((selection.force ?? []).flatMap((id) => aliases.get(id) ?? [id]));
  const keys = new Map<string, string>();
  const planned: PlannedStage[] = [];
  const willRun = new Set<string>();

  // Output digests of stages whose entry will be used as is; a stage that runs is `pending`.
  const digests = new Map<string, string>();
  for (const stage of pipeline.stages) {
    const upstream: Record<string, string> = {};
    for (const dep of stage.needs) upstream[dep] = digests.get(dep) ?? `${PENDING}${keys.get(dep)}`;
    const external: Record<string, string> = {};
    for (const input of stage.definition.externalInputs?.(stage.params as never, pipeline.baseDir) ?? []) {
      external[input] = await hashExternal(input, pipeline.baseDir, statCache);
    }
    // The key covers content, not names: the upstream digests (sorted) rather than the ids.
    // The seed is derived from the pipeline seed and the stage id: it drives initialization,
    // shuffling, augmentation and splits, so a new seed must not reuse results. The branches of
    // a sweep share their stage's seed (its id in the file): they differ only in the swept values.
    const seed = seedFor(pipeline.seed, stage.template ?? stage.id);
    const downstream = downstreamHints(pipeline, stage.id);
    // Only a stage that plans with its descendants' hints is keyed by them.
    const lookahead = stage.definition.lookahead && downstream.length ? { downstream: downstream as unknown as Json } : {};
    const key = stageKey({ kind: stage.kind, version: stage.definition.version, seed, params: stage.params as Json, upstream, external, ...lookahead });
    keys.set(stage.id, key);
    if (!included.has(stage.id)) continue;
    const record: StageRecord = { key, kind: stage.kind, version: stage.definition.version, seed, params: stage.params as Json, upstream, external, ...lookahead };
    const check = await store.checkEntry(key);
    const reasons: string[] = [];
    let action: 'run' | 'cached' = 'cached';
    if (forced.has(stage.id)) {
      action = 'run';
      reasons.push(selection.from && !forcedByFlag.has(stage.id) ? `forced (--from ${selection.from})` : 'forced (--force)');
    } else if (check.state !== 'ok') {
      action = 'run';
      if (check.state === 'corrupt') reasons.push(`cache entry is corrupt (${check.reason}); recomputing`);
      else reasons.push(...explainChange(await store.readRecord(pipeline.name, stage.id), record));
    } else {
      reasons.push('inputs unchanged');
    }
    if (action === 'run' && selection.only && !only.has(stage.id)) {
      issues.push({ code: 'upstream_not_cached', path: `stages.${stage.id}`, file: pipeline.file, line: stage.line, message: `--only ${selection.only}: upstream stage '${stage.id}' is not cached (${reasons.join('; ')}); run the pipeline without --only first` });
    }
    if (action === 'run') willRun.add(stage.id);
    else if (check.state === 'ok') digests.set(stage.id, entryDigest(check.meta));
    planned.push({ stage, key, action, reasons, record, entry: check.state === 'ok' ? check.meta : undefined, downstream, ...(forced.has(stage.id) ? { forced: true } : {}) });
  }
  if (issues.length) throw new ValidationError(issues);
  return { pipeline, stages: planned };
}

/** The hints of every stage that depends on `id`, in pipeline order. */
function downstreamHints(pipeline: ResolvedPipeline, id: string): DownstreamHint[] {
  const below = descendants(pipeline.needs, id);
  const out: DownstreamHint[] = [];
  for (const stage of pipeline.stages) {
    if (stage.id === id || !below.has(stage.id)) continue;
    const hints = stage.definition.hints?.(stage.params as never);
    if (hints !== undefined) out.push({ id: stage.id, kind: stage.kind, hints });
  }
  return out;
}

/** A swept stage's id in the file -> its branches' ids (`--force tune` forces every branch). */
export function branchAliases(pipeline: ResolvedPipeline): Map<string, string[]> {
  return new Map(Object.entries(pipeline.matrix?.branches ?? {}));
}

/** `--from`, `--only` and `--force` must name stages of the file (or branches of a sweep). */
export function checkSelection(pipeline: ResolvedPipeline, selection: Selection): ValidationIssue[] {
  const aliases = branchAliases(pipeline);
  const ids = [...new Set([...aliases.keys(), ...pipeline.needs.keys()])];
  const flags: [string, string | undefined][] = [['--from', selection.from], ['--only', selection.only], ...(selection.force ?? []).map((id): [string, string] => ['--force', id])];
  return flags
    .filter(([, id]) => id !== undefined && !pipeline.needs.has(id) && !aliases.has(id))
    .map(([flag, id]) => ({ code: 'unknown_stage', path: '', file: flag, message: `${flag} ${id}: no stage '${id}' in ${pipeline.file}${didYouMean(id!, ids)}; stages: ${ids.join(', ')}` }));
}

/** Hash of an external input: a local file/folder's content, or a URL's text. */
async function hashExternal(input: string, baseDir: string, statCache: StatCache): Promise<string> {
  if (/^https?:\/\//i.test(input)) return sha256(`url:${input}`);
  const full = path.resolve(baseDir, input);
  try {
    return await hashPath(full, statCache);
  } catch (error) {
    // A missing input is the stage's to report (with its own error code); key it as missing.
    return sha256(`missing:${full}:${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** Why a stage's key differs from the one it had last time. */
export function explainChange(previous: StageRecord | undefined, next: StageRecord): string[] {
  if (!previous) return ['no cached result (first run of this stage)'];
  if (previous.key === next.key) return ['cache entry missing (removed by gc or by hand)'];
  const reasons: string[] = [];
  if (previous.kind !== next.kind) reasons.push(`kind changed (${previous.kind} -> ${next.kind})`);
  if (previous.version !== next.version) reasons.push(`implementation version changed (${previous.version} -> ${next.version})`);
  if (previous.seed !== undefined && previous.seed !== next.seed) reasons.push('seed changed (pipeline seed or stage id)');
  for (const change of diffJson(previous.params, next.params, '')) reasons.push(`param ${change}`);
  for (const [id, key] of Object.entries(next.upstream)) {
    if (key.startsWith(PENDING)) reasons.push(`upstream '${id}' runs first (its output decides)`);
    else if (previous.upstream[id] !== key) reasons.push(previous.upstream[id] ? `upstream '${id}' changed` : `new upstream '${id}'`);
  }
  for (const id of Object.keys(previous.upstream)) if (!(id in next.upstream)) reasons.push(`no longer needs '${id}'`);
  for (const [input, hash] of Object.entries(next.external)) {
    if (previous.external[input] !== hash) reasons.push(previous.external[input] ? `input ${input} changed` : `new input ${input}`);
  }
  if (canonicalJson(previous.downstream ?? null) !== canonicalJson(next.downstream ?? null)) reasons.push('downstream stages changed what they need from this one');
  return reasons.length ? reasons : ['cache key changed (a new version of the toolkit keys it differently)'];
}

function diffJson(a: Json | undefined, b: Json | undefined, at: string): string[] {
  if (canonicalJson(a) === canonicalJson(b)) return [];
  const isMap = (v: unknown): v is Record<string, Json> => !!v && typeof v === 'object' && !Array.isArray(v);
  if (isMap(a) && isMap(b)) {
    const out: string[] = [];
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) out.push(...diffJson(a[key], b[key], at ? `${at}.${key}` : key));
    return out;
  }
  const show = (v: Json | undefined) => (v === undefined ? 'unset' : JSON.stringify(v));
  return [`${at || '(params)'} changed (${show(a)} -> ${show(b)})`];
}
