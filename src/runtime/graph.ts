/**
 * The stage graph: `needs` edges, topological order, cycles, ancestors and the stage selection
 * of `--from`, `--only` and `--force`. Pure functions over plain maps.
 */

/** stage id -> the ids it needs. */
export type NeedsMap = ReadonlyMap<string, readonly string[]>;

/** A cycle as a list of ids whose last element needs the first, or undefined. */
export function findCycle(needs: NeedsMap): string[] | undefined {
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (id: string): string[] | undefined => {
    if (state.get(id) === 'done') return undefined;
    if (state.get(id) === 'visiting') return stack.slice(stack.indexOf(id));
    state.set(id, 'visiting');
    stack.push(id);
    for (const dep of needs.get(id) ?? []) {
      if (!needs.has(dep)) continue;
      const cycle = visit(dep);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(id, 'done');
    return undefined;
  };
  for (const id of needs.keys()) {
    const cycle = visit(id);
    if (cycle) return cycle;
  }
  return undefined;
}

/** Ids in an order where every stage comes after what it needs; ties keep file order. */
export function topologicalOrder(needs: NeedsMap): string[] {
  const order: string[] = [];
  const placed = new Set<string>();
  const place = (id: string) => {
    if (placed.has(id)) return;
    placed.add(id);
    for (const dep of needs.get(id) ?? []) place(dep);
    order.push(id);
  };
  for (const id of needs.keys()) place(id);
  return order;
}

/** Ancestors of `id`, nearest first (breadth-first over `needs`), without `id` itself. */
export function ancestors(needs: NeedsMap, id: string): string[] {
  const seen = new Set<string>([id]);
  const out: string[] = [];
  let frontier = [...(needs.get(id) ?? [])];
  while (frontier.length) {
    const next: string[] = [];
    for (const dep of frontier) {
      if (seen.has(dep)) continue;
      seen.add(dep);
      out.push(dep);
      next.push(...(needs.get(dep) ?? []));
    }
    frontier = next;
  }
  return out;
}

/** `id` and every stage that depends on it, directly or not. */
export function descendants(needs: NeedsMap, id: string): Set<string> {
  const out = new Set<string>([id]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [stage, deps] of needs) {
      if (!out.has(stage) && deps.some((d) => out.has(d))) {
        out.add(stage);
        grew = true;
      }
    }
  }
  return out;
}

/** What the command line asked for. */
export interface Selection {
  /** Run from this stage on: it and its descendants re-run even when cached. */
  from?: string;
  /** Run just this stage (its upstream must already be cached). */
  only?: string;
  /** These stages re-run even when cached. */
  force?: readonly string[];
}

/**
 * Which stages take part in the run (`included`) and which must re-run regardless of the
 * cache (`forced`). `aliases` maps a stage id of the file that a sweep expanded to its
 * branches: naming it selects every branch.
 */
export function selectStages(needs: NeedsMap, selection: Selection, aliases: ReadonlyMap<string, readonly string[]> = new Map()): { included: Set<string>; forced: Set<string> } {
  const all = [...needs.keys()];
  const idsOf = (id: string) => aliases.get(id) ?? [id];
  const forced = new Set<string>((selection.force ?? []).flatMap(idsOf));
  let included = new Set(all);
  if (selection.only) included = new Set(idsOf(selection.only).flatMap((only) => [only, ...ancestors(needs, only)]));
  if (selection.from) for (const from of idsOf(selection.from)) for (const id of descendants(needs, from)) forced.add(id);
  return { included, forced };
}
