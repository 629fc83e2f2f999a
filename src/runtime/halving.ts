/**
 * Successive halving of a sweep (Jamieson & Talwalkar 2016; the inner loop of Hyperband): a
 * joining stage whose definition says it halves (`StageDefinition.halving`, e.g. `select` with
 * `halving: true`) does not wait for every branch to train to the end. Each branch in its
 * `needs` (a stage with a `budget` param: epochs) first runs `min` epochs, as a *rung*: the
 * stage stopped there (`ctx.budget`), committed under a key of its own (`rungKey`), with its
 * metrics and what it needs to go on. The best 1/`factor` (at least one) by the join's metric go
 * on to `min·factor` epochs, continuing from their rung (`ctx.resumeFrom`), and so on; the last
 * ones run to the end as the stage itself, under its own key, with the same bytes as a run that
 * never stopped. The others end `pruned`: not a failure, not an input of the join, which is told
 * of them (`ctx.prunedBranches`) and keyed by what it reads of them (`prunedDigest`).
 *
 * Every rung is a cache entry, so a rerun makes the same decisions from the cache without
 * training; a rung key covers the branch's final key and the rung's epochs, so anything that
 * changes a branch changes its rungs. This module decides; the executor computes (`HalvingPort`).
 */
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { ArtifactCache, EntryMeta } from './cache.js';
import { ComputeFailure, type ComputeOptions } from './compute.js';
import { AbortedError, StageError, describeError } from './errors.js';
import type { StageSummary } from './execute.js';
import { canonicalJson, sha256 } from './hash.js';
import { lookUp, type Plan, type PlannedStage } from './plan.js';
import type { ArtifactStore } from './store.js';
import type { HalvingSpec, Json, Metrics } from './types.js';

/** The key of one rung of a branch: its final key and the epochs it stops at. */
export function rungKey(stageKey: string, budget: number): string {
  return sha256(canonicalJson({ rung: budget, of: stageKey }));
}

/** The epochs of the rungs before the end: `min`, `min·factor`, … while under `full`. */
export function rungBudgets(spec: Pick<HalvingSpec, 'factor' | 'min'>, full: number): number[] {
  const out: number[] = [];
  for (let budget = spec.min; budget < full; budget *= spec.factor) out.push(budget);
  return out;
}

/** How many of `n` branches go on from a rung: 1 of every `factor`, at least one. */
export function survivorsOf(n: number, factor: number): number {
  return Math.max(1, Math.floor(n / factor));
}

/**
 * The schedule of `n` branches of `full` epochs, for `plan`: `4 branches train 1 epoch, 1 goes
 * on; 1 trains to 5 (8 of the 20 epochs of the full grid)`.
 */
export function describeHalving(spec: Pick<HalvingSpec, 'factor' | 'min' | 'metric'>, n: number, full: number): string {
  const parts: string[] = [];
  let count = n;
  let epochs = 0;
  let trained = 0;
  for (const budget of rungBudgets(spec, full)) {
    if (count <= 1) break;
    const keep = survivorsOf(count, spec.factor);
    parts.push(`${count} branches train to epoch ${budget}, the best ${keep} by ${spec.metric} go${keep === 1 ? 'es' : ''} on`);
    epochs += count * (budget - trained);
    trained = budget;
    count = keep;
  }
  epochs += count * (full - trained);
  parts.push(`${count === 1 ? '1 trains' : `${count} train`} to epoch ${full} (${epochs} of the ${n * full} epochs of the full grid)`);
  return parts.join('; ');
}

/** A branch as the executor hands it to the group: its final plan and summary fields. */
export interface HalvingMember {
  planned: PlannedStage;
  base: Omit<StageSummary, 'status' | 'seconds' | 'metrics'>;
  /** Its budget param's value: the epochs it runs when it goes to the end. */
  full: number;
}

/** What the group asks of the executor. */
export interface HalvingPort {
  /** The rung's entry from the cache, or computed (`budget` epochs, going on from `resumeFrom`); throws as a stage does. */
  rung(member: HalvingMember, key: string, budget: number, resumeFrom: string | undefined): Promise<{ entry: EntryMeta; dir: string; seconds: number }>;
  /** The member run to the end (or reused), going on from `resumeFrom`: its summary, as any stage's. */
  finish(member: HalvingMember, resumeFrom: string | undefined): Promise<StageSummary>;
  /** Logs a decision. */
  decided(info: Record<string, unknown>, message: string): void;
  /** A warning for the run's summary. */
  warn(stage: string, message: string): void;
}

/** The epochs a member runs to the end: the value of its stage's budget param. */
export function budgetOf(planned: PlannedStage): number {
  const param = planned.stage.definition.budget;
  const value = param ? (planned.stage.params as Record<string, unknown>)[param] : undefined;
  if (typeof value !== 'number') throw new StageError('internal', `stage '${planned.stage.id}' has no number '${param}' to halve by`);
  return value;
}

/**
 * One group per halving join of the plan, by member id. With a dispatcher (BullMQ workers),
 * which compute a stage's final key only, there are none: every branch trains to the end, and
 * the run's summary says so.
 */
export function halvingGroups(plan: Plan, dispatched: boolean, port: HalvingPort): Map<string, HalvingGroup> {
  const groups = new Map<string, HalvingGroup>();
  const planned = new Map(plan.stages.map((p) => [p.stage.id, p]));
  for (const { stage } of plan.stages) {
    const spec = stage.definition.join ? stage.definition.halving?.(stage.params) : undefined;
    if (!spec) continue;
    const members = stage.needs.filter((id) => planned.get(id)?.stage.definition.budget);
    if (members.length < 2) continue;
    if (dispatched) {
      port.warn(stage.id, `'${stage.id}' halving is not done with --executor bullmq: every branch trains all its epochs`);
      continue;
    }
    const group = new HalvingGroup(stage.id, spec, members, port);
    for (const id of members) groups.set(id, group);
  }
  return groups;
}

/** A member that was stopped: the join's input in place of its output. */
export interface PrunedInfo {
  budget: number;
  of: number;
  /** The digest of what the join is given of it (`prunedDigest`); the join is keyed by it. */
  digest: string;
  metrics: Metrics;
}

/**
 * What a join is keyed by for a branch it stopped: what it reads of it (epochs, of how many,
 * metrics), not its rung entry's bytes, which hold a checkpoint (epoch seconds, TF.js weight
 * names numbered per process) that differs from one computation to the next.
 */
export function prunedDigest(info: Omit<PrunedInfo, 'digest'>): string {
  return sha256(canonicalJson({ budget: info.budget, of: info.of, metrics: info.metrics }));
}

/** Where a member ended: its summary, and for a pruned one what the join reads of it. */
export interface HalvingOutcome {
  summary: StageSummary;
  pruned?: PrunedInfo;
}

/**
 * The branches of one halving join. Each member's `run` (or `leave`, for one that is skipped
 * before it starts) is called once; the rungs start when all have come, and each `run`
 * resolves when its member is decided.
 */
export class HalvingGroup {
  private readonly waiting = new Map<string, { member: HalvingMember; resolve: (outcome: HalvingOutcome) => void }>();
  private readonly left = new Set<string>();
  private started = false;

  constructor(
    readonly join: string,
    private readonly spec: HalvingSpec,
    private readonly members: readonly string[],
    private readonly port: HalvingPort,
  ) {}

  run(member: HalvingMember): Promise<HalvingOutcome> {
    return new Promise((resolve) => {
      this.waiting.set(member.base.id, { member, resolve });
      this.maybeStart();
    });
  }

  leave(id: string): void {
    this.left.add(id);
    this.maybeStart();
  }

  private maybeStart(): void {
    if (this.started || this.waiting.size + this.left.size < this.members.length) return;
    this.started = true;
    const order = this.members.filter((id) => this.waiting.has(id)).map((id) => this.waiting.get(id)!);
    void this.halve(order.map((w) => w.member)).then(
      (outcomes) => order.forEach((w) => w.resolve(outcomes.get(w.member.base.id)!)),
      (error) => order.forEach((w) => w.resolve({ summary: failedSummary(w.member, describeError(error), 0) })),
    );
  }

  /** The rungs, in order; every member ends with an outcome. */
  private async halve(members: HalvingMember[]): Promise<Map<string, HalvingOutcome>> {
    const { spec, port } = this;
    const outcomes = new Map<string, HalvingOutcome>();
    // The rung entries each member used: its summary lists them, so gc keeps them with the run.
    const rungs = new Map<string, string[]>(members.map((m) => [m.base.id, []]));
    // A member is settled as soon as it is decided (its `✂` line then, not after the survivors trained).
    const decide = (id: string, decided: HalvingOutcome) => {
      const outcome = rungs.get(id)!.length ? { ...decided, summary: { ...decided.summary, rungs: rungs.get(id)! } } : decided;
      outcomes.set(id, outcome);
      this.waiting.get(id)?.resolve(outcome);
    };
    const seconds = new Map<string, number>(members.map((m) => [m.base.id, 0]));
    const last = new Map<string, { dir: string; entry: EntryMeta; budget: number }>();
    /** The member run to its end (going on from `from`), ranked by its final metrics when it succeeded. */
    const finishAt = async (member: HalvingMember, from: string | undefined): Promise<{ member: HalvingMember; metrics?: Metrics; done: StageSummary }> => {
      const done = await port.finish(member, from);
      seconds.set(member.base.id, seconds.get(member.base.id)! + done.seconds);
      return { member, done, ...(done.status === 'ran' || done.status === 'cached' ? { metrics: done.metrics } : {}) };
    };
    let active = members;
    const longest = Math.max(...members.map((m) => m.full));
    for (const budget of rungBudgets(spec, longest)) {
      if (active.length <= 1) break;
      // A member whose end is this rung or before it runs to the end, and is ranked by that.
      const ran = await Promise.all(
        active.map(async (member): Promise<{ member: HalvingMember; metrics?: Metrics; done?: StageSummary }> => {
          const id = member.base.id;
          if (member.full <= budget) return finishAt(member, last.get(id)?.dir);
          let rung;
          try {
            const key = rungKey(member.planned.key, budget);
            rung = await port.rung(member, key, budget, last.get(id)?.dir);
            rungs.get(id)!.push(key);
          } catch (error) {
            return { member, done: failedSummary(member, describeError(error), seconds.get(id)!) };
          }
          seconds.set(id, seconds.get(id)! + rung.seconds);
          last.set(id, { dir: rung.dir, entry: rung.entry, budget });
          if (rung.entry.metrics.stopped !== true) return { member, metrics: rung.entry.metrics };
          // It stopped by itself in this rung (early stopping): it is done, its end trains no more; ranked by that.
          return finishAt(member, rung.dir);
        }),
      );
      // Interrupted (Ctrl-C) during the rung: the rungs that finished decide nothing, every branch stops here.
      if (ran.some((r) => r.done?.error?.code === 'aborted')) {
        for (const { member, metrics, done } of ran) {
          const id = member.base.id;
          decide(id, { summary: done ? { ...done, seconds: seconds.get(id)! } : { ...member.base, status: 'skipped', seconds: seconds.get(id)!, metrics: metrics ?? {}, error: { code: 'aborted', message: `interrupted before '${this.join}' ranked its rung (epoch ${budget})` } } });
        }
        return outcomes;
      }
      const ranked: { member: HalvingMember; value: number; done?: StageSummary }[] = [];
      for (const { member, metrics, done } of ran) {
        if (!metrics) {
          decide(member.base.id, { summary: { ...done!, seconds: seconds.get(member.base.id)! } });
          continue;
        }
        const value = metrics[spec.metric];
        if (typeof value !== 'number' || !Number.isFinite(value)) {
          const numeric = Object.entries(metrics).filter(([, v]) => typeof v === 'number').map(([k]) => k);
          throw new StageError('halving_metric_missing', `'${this.join}' halves its sweep by '${spec.metric}', which '${member.base.id}' (${member.base.uses}) does not report after ${budget} epoch(s)${value === undefined ? '' : ` (it is ${JSON.stringify(value)})`}; it reports: ${numeric.join(', ') || 'nothing'}. Rank by one of those, or set halving: false`, { branch: member.base.id, metric: spec.metric });
        }
        ranked.push({ member, value, done });
      }
      const { order, keep } = rankRung(ranked, spec);
      port.decided({ join: this.join, budget, ranked: order.map((r) => ({ id: r.member.base.id, [spec.metric]: r.value })), kept: order.slice(0, keep).map((r) => r.member.base.id) }, 'halving rung ranked');
      for (const [rank, { member, done }] of order.entries()) {
        const id = member.base.id;
        if (rank < keep && !done) continue;
        if (done) {
          decide(id, { summary: { ...done, seconds: seconds.get(id)! } });
          continue;
        }
        const rung = last.get(id)!;
        decide(id, {
          // A branch `plan` found pruned (`PlannedStage.pruned`) has that reason only: not twice.
          summary: { ...member.base, status: 'pruned', seconds: seconds.get(id)!, metrics: rung.entry.metrics, reasons: [...(member.planned.pruned ? [] : (member.base.reasons ?? [])), prunedReason(this.join, spec, budget, member.full, order[rank].value, rank, order.length, keep)] },
          pruned: { budget, of: member.full, digest: prunedDigest({ budget, of: member.full, metrics: rung.entry.metrics }), metrics: rung.entry.metrics },
        });
      }
      active = order.slice(0, keep).filter((r) => !r.done).map((r) => r.member);
    }
    await Promise.all(
      active.map(async (member) => {
        const id = member.base.id;
        const done = await port.finish(member, last.get(id)?.dir);
        decide(id, { summary: { ...done, seconds: Math.round((seconds.get(id)! + done.seconds) * 1000) / 1000 } });
      }),
    );
    return outcomes;
  }
}

/** A rung's members best first by the metric, and how many go on. Stable: the first of equals (pipeline order) stays ahead, as select chooses. */
function rankRung<T extends { value: number }>(ranked: T[], spec: HalvingSpec): { order: T[]; keep: number } {
  const order = ranked.map((r, i) => ({ r, i })).sort((a, b) => (spec.mode === 'max' ? b.r.value - a.r.value : a.r.value - b.r.value) || a.i - b.i).map(({ r }) => r);
  return { order, keep: survivorsOf(order.length, spec.factor) };
}

function prunedReason(join: string, spec: HalvingSpec, budget: number, full: number, value: number, rank: number, of: number, keep: number): string {
  return `pruned by '${join}' after ${budget} of ${full} epochs (${spec.metric} ${formatValue(value)}, rank ${rank + 1} of ${of}; ${keep} went on)`;
}

/**
 * For `plan`: the branches of a halving join (`members`, planned) that a run would stop, decided
 * as the run does from their cached rungs, with each one's reason; undefined when the cache does
 * not decide it (a rung not cached, a branch forced or re-keyed by an upstream that runs first, a
 * metric missing): then the run decides, and the plan shows the branches as running.
 */
export async function replayHalving(join: string, spec: HalvingSpec, members: PlannedStage[], cache: ArtifactCache): Promise<Map<string, PrunedInfo & { reason: string }> | undefined> {
  if (members.length < 2 || members.some((m) => m.forced)) return undefined;
  const pruned = new Map<string, PrunedInfo & { reason: string }>();
  let active = members.map((planned) => ({ planned, full: budgetOf(planned) }));
  for (const budget of rungBudgets(spec, Math.max(...active.map((m) => m.full)))) {
    if (active.length <= 1) break;
    const ranked: { member: (typeof active)[number]; value: number; metrics: Metrics; done: boolean }[] = [];
    for (const member of active) {
      const found = member.full <= budget ? undefined : await lookUp(cache, rungKey(member.planned.key, budget));
      const rung = found?.check.state === 'ok' ? found.check.meta : undefined;
      // At its end, or stopped by itself in this rung: ranked by its own entry.
      const done = member.full <= budget || rung?.metrics.stopped === true;
      const entry = done ? (member.planned.action === 'cached' ? member.planned.entry : undefined) : rung;
      const value = entry?.metrics[spec.metric];
      if (!entry || typeof value !== 'number' || !Number.isFinite(value)) return undefined;
      ranked.push({ member, value, metrics: entry.metrics, done });
    }
    const { order, keep } = rankRung(ranked, spec);
    for (const [rank, { member, value, metrics, done }] of order.entries()) {
      if (rank < keep || done) continue;
      const info = { budget, of: member.full, metrics };
      pruned.set(member.planned.stage.id, { ...info, digest: prunedDigest(info), reason: prunedReason(join, spec, budget, member.full, value, rank, order.length, keep) });
    }
    active = order.slice(0, keep).filter((r) => !r.done).map((r) => r.member);
  }
  return pruned;
}

function failedSummary(member: HalvingMember, error: { code: string; message: string }, seconds: number): StageSummary {
  return { ...member.base, status: 'failed', seconds, metrics: {}, error };
}

function formatValue(value: Json): string {
  return typeof value === 'number' ? String(Math.round(value * 10000) / 10000) : JSON.stringify(value);
}

/** What computing a rung needs of the executor. */
export interface RungDeps {
  store: ArtifactStore;
  log: Logger;
  signal: AbortSignal;
  runId: string;
  onKey?(key: string): Promise<void>;
  /** The queue of `tf` stages: a rung takes a place in it as a stage does. */
  queue: PQueue;
  /** The stage's first rung started (the CLI's `▶` line). */
  started(planned: PlannedStage): void;
  /** Computes the stage's entry, here or in another process, with these extra compute options. */
  compute(planned: PlannedStage, log: Logger, extra: Pick<ComputeOptions, 'entryKey' | 'budget' | 'resumeFrom'>): Promise<EntryMeta>;
}

/**
 * One rung of a branch: its entry under `key` from the cache (not when the branch is forced), or
 * computed holding that key's lock, stopped at `budget` epochs. Throws the stage's error.
 */
export async function computeRung(deps: RungDeps, member: HalvingMember, key: string, budget: number, resumeFrom: string | undefined): Promise<{ entry: EntryMeta; dir: string; seconds: number }> {
  const { store, signal } = deps;
  const cache = store.cache;
  const { planned } = member;
  const log = deps.log.child({ stage: planned.stage.id, kind: planned.stage.kind, rung: budget });
  const cached = async (): Promise<EntryMeta | undefined> => {
    const found = await lookUp(cache, key);
    return found.check.state === 'ok' ? found.check.meta : undefined;
  };
  await deps.onKey?.(key);
  const hit = await cached();
  // A forced branch (--force, --from) computes its rungs again too, as a forced stage its entry.
  if (hit && !planned.forced) {
    log.info({ key, budget }, 'rung cached');
    return { entry: hit, dir: await cache.materialize(key), seconds: 0 };
  }
  if (signal.aborted) throw new AbortedError();
  return (await deps.queue.add(async () => {
    const claim = await store.claimKey(key, { signal, purpose: `run ${deps.runId} stage ${planned.stage.id} rung ${budget}` });
    try {
      const now = await cached();
      // Committed since we looked (by a run we waited for): reuse it, even when forced.
      if (now && (!planned.forced || now.created !== hit?.created)) return { entry: now, dir: await cache.materialize(key), seconds: 0 };
      const t0 = performance.now();
      deps.started(planned);
      log.info({ key, budget, of: member.full, resumeFrom }, 'rung start');
      const entry = await deps.compute(planned, log, { entryKey: key, budget, ...(resumeFrom ? { resumeFrom } : {}) });
      const seconds = Math.round(performance.now() - t0) / 1000;
      log.info({ key, seconds, metrics: entry.metrics }, 'rung done');
      return { entry, dir: await cache.materialize(key), seconds };
    } catch (failure) {
      throw failure instanceof ComputeFailure ? failure.error : failure;
    } finally {
      await claim.release();
    }
  }))!;
}
