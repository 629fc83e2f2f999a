/**
 * Shape checks for every JSON document the store reads back: metadata is data, never trusted.
 * Each guard returns the value typed, or a reason it is not one; callers treat a bad document
 * as a cache miss (recompute) or skip it with a note, never as a crash. Hand guards rather than
 * schemas: they are few, small, hot (every cache check) and must never throw.
 */
import type { RunSummary, StageSummary } from './execute.js';
import type { EntryMeta } from './cache.js';
import type { StageRecord } from './history.js';

export type Checked<T> = { ok: true; value: T } | { ok: false; reason: string };

const isObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');
const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isStringMap = (v: unknown): v is Record<string, string> => isObject(v) && Object.values(v).every((x) => typeof x === 'string');
const SHA256 = /^[0-9a-f]{64}$/;
const bad = <T>(reason: string): Checked<T> => ({ ok: false, reason });

/** Parses JSON text; a syntax error is a reason, not an exception. */
export function parseJson(text: string): Checked<unknown> {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (error) {
    return bad(`not JSON (${(error as Error).message})`);
  }
}

/** A cache entry's `_entry.json`, which must describe `key`. */
export function checkEntryMeta(value: unknown, key: string): Checked<EntryMeta> {
  if (!isObject(value)) return bad(`is ${value === null ? 'null' : typeof value}, not an object`);
  if (value.key !== key) return bad('does not describe this key');
  if (typeof value.kind !== 'string' || typeof value.stage !== 'string') return bad('has no kind or stage');
  if (!isStringArray(value.provides)) return bad('has no provides list');
  if (!isObject(value.metrics)) return bad('has no metrics object');
  if (value.memo !== undefined && !(isStringArray(value.memo) && value.memo.every((m) => SHA256.test(m)))) return bad('has a bad memo list');
  if (!isObject(value.files)) return bad('has no files map');
  for (const [rel, file] of Object.entries(value.files)) {
    if (!isObject(file)) return bad(`lists ${rel} as ${file === null ? 'null' : typeof file}`);
    if (!isFiniteNumber(file.size) || file.size < 0 || typeof file.sha256 !== 'string' || !SHA256.test(file.sha256) || !isFiniteNumber(file.mtimeMs))
      return bad(`has a bad record for ${rel}`);
    if ((file.ctimeMs !== undefined && !isFiniteNumber(file.ctimeMs)) || (file.ino !== undefined && !isFiniteNumber(file.ino))) return bad(`has a bad record for ${rel}`);
    // A listed path must stay inside the entry.
    if (rel.startsWith('/') || rel.split('/').some((part) => part === '..' || part === '')) return bad(`lists a path outside the entry (${rel})`);
  }
  return { ok: true, value: value as unknown as EntryMeta };
}

/** `state/<pipeline>/<stage>.json`: what a stage used last time (only used to explain). */
export function checkStageRecord(value: unknown): Checked<StageRecord> {
  if (!isObject(value)) return bad('is not an object');
  if (typeof value.key !== 'string' || typeof value.kind !== 'string' || !isFiniteNumber(value.version)) return bad('has no key, kind or version');
  if (value.seed !== undefined && !isFiniteNumber(value.seed)) return bad('has a bad seed');
  if (!isStringMap(value.upstream) || !isStringMap(value.external)) return bad('has bad upstream or external maps');
  if (!('params' in value)) return bad('has no params');
  return { ok: true, value: value as unknown as StageRecord };
}

/** A stage line of a run summary. */
function checkStageSummary(value: unknown): value is StageSummary {
  return (
    isObject(value) &&
    typeof value.id === 'string' &&
    typeof value.uses === 'string' &&
    typeof value.status === 'string' &&
    ['ran', 'cached', 'failed', 'skipped', 'pruned'].includes(value.status) &&
    typeof value.key === 'string' &&
    isFiniteNumber(value.seconds) &&
    isObject(value.metrics)
  );
}

/** `runs/<id>/summary.json`. */
export function checkRunSummary(value: unknown): Checked<RunSummary> {
  if (!isObject(value)) return bad('is not an object');
  if (typeof value.pipeline !== 'string' || typeof value.run !== 'string') return bad('has no pipeline or run id');
  if (!['succeeded', 'failed', 'interrupted'].includes(value.status as string)) return bad('has no valid status');
  if (typeof value.backend !== 'string' || !isFiniteNumber(value.seconds)) return bad('has no backend or seconds');
  if (!Array.isArray(value.stages)) return bad('has no stages list');
  const broken = value.stages.findIndex((s) => !checkStageSummary(s));
  if (broken >= 0) return bad(`has a malformed stage (#${broken + 1})`);
  return { ok: true, value: value as unknown as RunSummary };
}

/** `runs/<id>/plan.json`: written when a run starts, so gc knows what a killed run needs. */
export interface RunPlanRecord {
  pipeline: string;
  run: string;
  /** Keys of every stage of the run (cached or to run) and memo keys it had. */
  keys: string[];
}

export function checkRunPlan(value: unknown): Checked<RunPlanRecord> {
  if (!isObject(value)) return bad('is not an object');
  if (typeof value.pipeline !== 'string' || typeof value.run !== 'string' || !isStringArray(value.keys)) return bad('has no pipeline, run or keys');
  return { ok: true, value: value as unknown as RunPlanRecord };
}

/** One stat-cache record: a file's hash by size, mtime, ctime and inode. */
export interface StatRecord {
  size: number;
  mtimeMs: number;
  ctimeMs?: number;
  ino: number;
  sha256: string;
}

/** The stat cache file; bad records are dropped one by one (it is only a cache). */
export function checkStatCache(value: unknown): Map<string, StatRecord> {
  const out = new Map<string, StatRecord>();
  if (!isObject(value)) return out;
  for (const [file, r] of Object.entries(value)) {
    if (isObject(r) && isFiniteNumber(r.size) && isFiniteNumber(r.mtimeMs) && isFiniteNumber(r.ino) && typeof r.sha256 === 'string' && SHA256.test(r.sha256) && (r.ctimeMs === undefined || isFiniteNumber(r.ctimeMs)))
      out.set(file, r as unknown as StatRecord);
  }
  return out;
}
