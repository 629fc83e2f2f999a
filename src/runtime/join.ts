/**
 * A joining stage (`StageDefinition.join`, e.g. `select`) after some of its branches failed: it
 * runs on the branches that succeeded when at least one did, and is told which failed and why.
 * A need that is not a branch of a sweep must succeed. The join's key covers which branches it
 * read and which failed (`joinUpstream`), so a rerun where a failed branch now succeeds runs it
 * again and a rerun with the same survivors reuses it. Pure functions over summaries.
 */
import type { ResolvedStage } from './load.js';
import type { FailedBranch } from './types.js';

/** What a join needs to know of a finished upstream stage (a `StageSummary`). */
export interface SettledStage {
  id: string;
  status: 'ran' | 'cached' | 'failed' | 'skipped' | 'pruned';
  error?: { code: string; message: string };
}

/** The prefix of a failed branch's entry in a join's `record.upstream` (`failed:<id>:<code>`) in place of its output digest. */
export const FAILED_BRANCH = 'failed:';

const succeeded = (s: SettledStage) => s.status === 'ran' || s.status === 'cached';

/**
 * Whether a join can run with its needs as they ended, and which branches it goes without:
 * `blocked` names the need that skips it (one that is not a branch, or the first branch when
 * none succeeded, or any failure once the run is interrupted), with the message to show.
 */
export function settleJoin(
  stage: ResolvedStage,
  needs: SettledStage[],
  stageOf: (id: string) => ResolvedStage | undefined,
  settledOf: (id: string) => SettledStage | undefined,
  interrupted: boolean,
): { blocked?: { id: string; message: string }; failed: FailedBranch[] } {
  // A branch a halving join stopped early is neither its input nor a failure (see halving.ts).
  const down = needs.filter((need) => !succeeded(need) && need.status !== 'pruned');
  if (!down.length) return { failed: [] };
  const plain = down.find((need) => !stageOf(need.id)?.template);
  if (interrupted || plain) {
    const first = plain ?? down[0];
    return { blocked: { id: first.id, message: `'${first.id}' ${first.status}` }, failed: [] };
  }
  const failed = down.map((need): FailedBranch => {
    const branch = stageOf(need.id)!;
    return { id: need.id, template: branch.template!, coords: branch.coords ?? {}, status: need.status === 'failed' ? 'failed' : 'skipped', error: causeOf(need, branch, settledOf) };
  });
  if (failed.length === needs.filter((need) => need.status !== 'pruned').length) {
    const list = listSome(failed.map((f) => `'${f.id}' ${f.status}`));
    return { blocked: { id: failed[0].id, message: `every branch it joins failed: ${list}` }, failed };
  }
  return { failed };
}

/** The failure that took a branch out: its own, or (skipped) that of the nearest failed stage upstream of it. */
function causeOf(need: SettledStage, branch: ResolvedStage, settledOf: (id: string) => SettledStage | undefined): FailedBranch['error'] {
  const origin = need.status === 'failed' ? need : branch.ancestors.map(settledOf).find((s) => s?.status === 'failed');
  const error = origin?.error ?? need.error;
  return { stage: (origin ?? need).id, code: error?.code ?? 'dependency_failed', message: error?.message ?? `'${need.id}' ${need.status}` };
}

/** The prefix of a pruned branch's entry in a halving join's `record.upstream` (`pruned:<digest>`, `prunedDigest` in halving.ts). */
export const PRUNED_BRANCH = 'pruned:';

/**
 * The join's `record.upstream` (what its key is built from): each branch that succeeded by its
 * output digest, each that failed by `failed:<id>:<code>`, each that a halving join stopped by
 * `pruned:<digest of where it stopped and its metrics there>`.
 */
export function joinUpstream(needs: string[], digestOf: (id: string) => string, failed: FailedBranch[], pruned: ReadonlyMap<string, string> = new Map()): Record<string, string> {
  const failedById = new Map(failed.map((f) => [f.id, f]));
  return Object.fromEntries(
    needs.map((id) => {
      const branch = failedById.get(id);
      const rung = pruned.get(id);
      return [id, branch ? `${FAILED_BRANCH}${id}:${branch.error.code}` : rung ? `${PRUNED_BRANCH}${rung}` : digestOf(id)];
    }),
  );
}

/** The reason a plan line and a stage line give for a join without some branches. */
export function describeFailedBranches(failed: FailedBranch[], total: number): string {
  const list = listSome(failed.map((f) => (f.status === 'failed' ? `'${f.id}' failed` : `'${f.id}' skipped ('${f.error.stage}' failed)`)));
  return `chooses among the ${total - failed.length} of ${total} branches that succeeded (${list})`;
}

/** The first `max` items joined by commas, then how many more (a sweep may have 256 branches). */
export function listSome(items: string[], max = 6): string {
  return items.length > max ? `${items.slice(0, max).join(', ')} and ${items.length - max} more` : items.join(', ');
}
