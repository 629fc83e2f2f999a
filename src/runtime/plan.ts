/**
 * `ResolvedPipeline` -> `Plan`: each stage's cache key, whether it runs or comes from the
 * cache, and why. Two steps: keys are a pure function of the pipeline and digests
 * (`stageRecordOf`: the stage's kind, version, seed, params, its upstream *output* digests and
 * its external inputs' digests); deciding run/cached (`planRun`, `rekeyStage`) reads the cache
 * through the `ArtifactCache` interface, which may pull from a remote on a miss. Reads the store
 * (entries, records, the stat cache) but writes nothing to it except what a pull brings.
 */
import path from 'node:path';
import { describeError, ValidationError, type ValidationIssue } from './errors.js';
import { descendants, selectStages, type Selection } from './graph.js';
import { canonicalJson, hashPath, sha256, StatCache } from './hash.js';
import type { ResolvedPipeline, ResolvedStage } from './load.js';
import { entryDigest, type ArtifactCache, type EntryCheck, type EntryMeta } from './cache.js';
import type { RunHistory, StageRecord } from './history.js';
import { FAILED_BRANCH, PRUNED_BRANCH } from './join.js';
import { budgetOf, replayHalving, rungKey } from './halving.js';
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
  /**
   * A branch its halving join stops early, as its cached rungs decide (`replayHalving`): it has
   * no entry of its own and trains nothing (`action` is `cached`; `reasons` say where it stops).
   */
  pruned?: boolean;
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
export async function rekeyStage(planned: PlannedStage, upstream: Record<string, string>, cache: ArtifactCache): Promise<PlannedStage> {
  if (canonicalJson(upstream) === canonicalJson(planned.record.upstream)) return planned;
  const { key: _old, ...rest } = planned.record;
  const record: StageRecord = { ...rest, upstream, key: stageKey({ ...rest, upstream }) };
  if (planned.forced) {
    const check = await cache.check(record.key);
    return { ...planned, key: record.key, record, entry: check.state === 'ok' ? check.meta : undefined };
  }
  const found = await lookUp(cache, record.key);
  if (found.check.state === 'ok') {
    const reasons = found.pulled ? [found.pulled] : ['upstream outputs are the same bytes as before: cached'];
    return { ...planned, key: record.key, record, entry: found.check.meta, action: 'cached', reasons };
  }
  const reasons = [...new Set([...(found.check.state === 'corrupt' ? [`cache entry is corrupt (${found.check.reason}); recomputing`] : planned.reasons), ...found.notes])];
  return { ...planned, key: record.key, record, entry: undefined, action: 'run', reasons };
}

/**
 * Looks a key up: the cache's own check, then, on a miss, its remote (`pull`). A failed pull
 * (unreachable, a corrupt blob) is a note and a miss: the stage runs, nothing bad is used.
 */
export async function lookUp(cache: ArtifactCache, key: string): Promise<{ check: EntryCheck; pulled?: string; notes: string[] }> {
  const check = await cache.check(key);
  if (check.state !== 'missing' || !cache.pull) return { check, notes: [] };
  try {
    const pulled = await cache.pull(key);
    if (!pulled) return { check, notes: [] };
    return { check: { state: 'ok', meta: pulled.meta }, pulled: `pulled from ${pulled.from} (${pulled.downloaded} blobs downloaded)`, notes: [] };
  } catch (error) {
    const described = describeError(error);
    return { check, notes: [`remote ${cache.remote} could not serve it (${described.code}: ${described.message}); computing it here`] };
  }
}

/**
 * The record (and key) of one stage: a pure function of the pipeline, the stage, its upstream
 * stages' output digests (`pending:<key>` for one that has not run yet) and its external
 * inputs' digests. A worker recomputes it to check that it runs the same stage as the planner.
 */
export function stageRecordOf(pipeline: ResolvedPipeline, stage: ResolvedStage, upstream: Record<string, string>, external: Record<string, string>): StageRecord {
  // The key covers content, not names: the upstream digests (sorted) rather than the ids.
  // The seed is derived from the pipeline seed and the stage id: it drives initialization,
  // shuffling, augmentation and splits, so a new seed must not reuse results.
  // The branches of a sweep share their stage's seed (its id in the file): they differ only in the swept values.
  const seed = seedFor(pipeline.seed, stage.template ?? stage.id);
  const downstream = downstreamHints(pipeline, stage.id);
  // Only a stage that plans with its descendants' hints is keyed by them.
  const lookahead = stage.definition.lookahead && downstream.length ? { downstream: downstream as unknown as Json } : {};
  const base = { kind: stage.kind, version: stage.definition.version, seed, params: stage.params as Json, upstream, external, ...lookahead };
  return { key: stageKey(base), ...base };
}

/** The digest of every external input of every stage (`stage id -> input -> digest`); the only I/O keys need. */
export async function hashExternalInputs(pipeline: ResolvedPipeline, statCache: StatCache): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>();
  for (const stage of pipeline.stages) out.set(stage.id, await hashStageExternals(pipeline, stage, statCache));
  return out;
}

/** The digest of each external input of one stage (a worker hashes only its job's stage). */
export async function hashStageExternals(pipeline: ResolvedPipeline, stage: ResolvedStage, statCache: StatCache): Promise<Record<string, string>> {
  const external: Record<string, string> = {};
  for (const input of stage.definition.externalInputs?.(stage.params as never, pipeline.baseDir) ?? []) external[input] = await hashExternal(input, pipeline.baseDir, statCache);
  return external;
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
export async function planRun(pipeline: ResolvedPipeline, cache: ArtifactCache, history: Pick<RunHistory, 'readRecord'>, selection: Selection, statCache: StatCache): Promise<Plan> {
  const issues = checkSelection(pipeline, selection);
  if (issues.length) throw new ValidationError(issues);
  const aliases = branchAliases(pipeline);
  const { included, forced } = selectStages(pipeline.needs, selection, aliases);
  const only = new Set(selection.only ? (aliases.get(selection.only) ?? [selection.only]) : []);
  const forcedByFlag = new Set((selection.force ?? []).flatMap((id) => aliases.get(id) ?? [id]));
  const externals = await hashExternalInputs(pipeline, statCache);
  const keys = new Map<string, string>();
  const planned: PlannedStage[] = [];

  // Output digests of stages whose entry will be used as is; a stage that runs is `pending`.
  const digests = new Map<string, string>();
  for (const stage of pipeline.stages) {
    // A halving join's branches that its cached rungs stop: no run, and the join is keyed by where they stopped.
    const spec = stage.definition.join && included.has(stage.id) ? stage.definition.halving?.(stage.params as never) : undefined;
    const members = spec ? planned.filter((p) => stage.needs.includes(p.stage.id) && p.stage.definition.budget) : [];
    const replayed = spec && (await replayHalving(stage.id, spec, members, cache));
    for (const [id, info] of replayed || []) {
      const at = planned.findIndex((p) => p.stage.id === id);
      planned[at] = { ...planned[at], action: 'cached', reasons: [info.reason], pruned: true };
      digests.set(id, `${PRUNED_BRANCH}${info.digest}`);
    }
    // Cached to the end (a full sweep ran) but not ranked yet: its first rung trains.
    for (const member of spec && !replayed ? members.filter((m) => m.action === 'cached' && !m.forced && budgetOf(m) > spec!.min) : []) {
      if ((await cache.check(rungKey(member.key, spec!.min))).state !== 'ok') member.reasons.push(`its halving rung (epoch ${spec!.min}) is not cached: '${stage.id}' trains it to rank this branch, then reuses this entry if it goes on`);
    }
    // To run, but it ran before: its first rung is cached, and the halving decides how far it goes.
    for (const member of spec && !replayed ? members.filter((m) => m.action === 'run' && !m.forced) : []) {
      if ((await cache.check(rungKey(member.key, spec!.min))).state === 'ok') member.reasons.splice(0, member.reasons.length, `its rung at epoch ${spec!.min} is cached; '${stage.id}' decides whether it trains on`);
    }
    const upstream: Record<string, string> = {};
    for (const dep of stage.needs) upstream[dep] = digests.get(dep) ?? `${PENDING}${keys.get(dep)}`;
    const record = stageRecordOf(pipeline, stage, upstream, externals.get(stage.id) ?? {});
    const { key } = record;
    keys.set(stage.id, key);
    if (!included.has(stage.id)) continue;
    const downstream = downstreamHints(pipeline, stage.id);
    const reasons: string[] = [];
    let action: 'run' | 'cached' = 'cached';
    let check: EntryCheck;
    if (forced.has(stage.id)) {
      check = await cache.check(key);
      action = 'run';
      reasons.push(selection.from && !forcedByFlag.has(stage.id) ? `forced (--from ${selection.from})` : 'forced (--force)');
    } else {
      const found = await lookUp(cache, key);
      check = found.check;
      if (check.state === 'ok') reasons.push(found.pulled ?? 'inputs unchanged');
      else {
        action = 'run';
        if (check.state === 'corrupt') reasons.push(`cache entry is corrupt (${check.reason}); recomputing`);
        else reasons.push(...explainChange(await history.readRecord(pipeline.name, stage.id), record));
        reasons.push(...found.notes);
      }
    }
    if (action === 'cached' && check.state === 'ok') digests.set(stage.id, entryDigest(check.meta));
    planned.push({ stage, key, action, reasons, record, entry: check.state === 'ok' ? check.meta : undefined, downstream, ...(forced.has(stage.id) ? { forced: true } : {}) });
  }
  // After the loop: a branch that a halving join stops is known once the loop reaches the join.
  for (const { stage, action, reasons } of planned) {
    if (action === 'run' && selection.only && !only.has(stage.id)) {
      issues.push({ code: 'upstream_not_cached', path: `stages.${stage.id}`, file: pipeline.file, line: stage.line, message: `--only ${selection.only}: upstream stage '${stage.id}' is not cached (${reasons.join('; ')}); run the pipeline without --only first` });
    }
  }
  if (issues.length) throw new ValidationError(issues);
  return { pipeline, stages: planned };
}

/** The hints of every stage that depends on `id`, in pipeline order. */
export function downstreamHints(pipeline: ResolvedPipeline, id: string): DownstreamHint[] {
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
    const before = previous.upstream[id];
    if (before?.startsWith(FAILED_BRANCH)) reasons.push(`branch '${id}' failed last time${key.startsWith(PENDING) ? ' and runs first (its output decides)' : ''}`);
    else if (key.startsWith(PENDING)) reasons.push(`upstream '${id}' runs first (its output decides)`);
    else if (before !== key) reasons.push(before ? `upstream '${id}' changed` : `new upstream '${id}'`);
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
