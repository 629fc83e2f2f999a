/**
 * The statistics of bench/rank.ts: per target, the bases' fine-tuned accuracy over seeds, which
 * pairs of bases are statistically tied, and whether a score (LogME, the probe) orders the bases
 * as fine-tuning does — strictly, and up to those ties (Kendall's τ-b with tied pairs as ties).
 *
 * A pair (a, b) is compared on the same validation images and the same seeds. With D(i, s) the
 * difference of their correctness (0/1) on image i at seed s, the mean difference Δ has the
 * standard error
 *
 *   SE² = var_i(d_i) / N + var_s(Δ_s) / k,   d_i = mean over seeds of D(i, s), Δ_s = mean over images,
 *
 * the paired spread over the N images (a different validation sample) plus the spread over the k
 * seeds (another init and shuffle); it slightly overcounts their interaction, so it errs towards
 * "tied". The pair is tied when |Δ| < 1.96 SE (a two-sided 95 % normal test). With one seed only
 * the image term is left.
 */

/** One fine-tune of one base at one seed, as the bench measured it. */
export interface SeedResult {
  target: string;
  base: string;
  seed: number;
  logme: number;
  probe: number;
  probeStd: number;
  headAcc: number;
  tunedAcc: number;
  /** Validation records in the split. */
  valCount: number;
  /** Indices of the validation records the fine-tuned model got wrong. */
  wrong: number[];
}

/** One base of one target, over its seeds. */
export interface BaseSummary {
  base: string;
  seeds: number;
  logme: number;
  logmeStd: number;
  probe: number;
  headAcc: number;
  tunedAcc: number;
  /** Sample standard deviation over the seeds (0 with one seed). */
  tunedStd: number;
  tunedBySeed: number[];
}

/** Two bases compared on the same images and seeds (`a` has the higher mean). */
export interface PairTest {
  a: string;
  b: string;
  diff: number;
  se: number;
  z: number;
  tied: boolean;
}

/** How one score orders the bases against fine-tuning. */
export interface OrderAgreement {
  order: string[];
  /** Same order as the fine-tuned means. */
  strict: boolean;
  /** Every pair that is not tied is ordered as fine-tuning orders it (vacuous when all are tied). */
  upToTies: boolean;
  /** Pairs the fine-tunes separate, and how many of them the score orders the same way. */
  separated: number;
  agreeing: number;
  /** Kendall's τ-b against the fine-tuned means. */
  tau: number;
  /** τ-b with the statistically tied pairs counted as ties of the fine-tuned side. */
  tauTies: number;
}

/** One target's summary. */
export interface TargetSummary {
  target: string;
  bases: BaseSummary[];
  pairs: PairTest[];
  /** Best first, by mean fine-tuned accuracy. */
  tunedOrder: string[];
  logme: OrderAgreement;
  probe: OrderAgreement;
  /** The same, with each seed's own scores (a random base's weights differ per seed) against the mean fine-tuned order. */
  logmeBySeed: OrderAgreement[];
  probeBySeed: OrderAgreement[];
}

/** z beyond which two bases differ (two-sided 95 %). */
export const Z_CRITICAL = 1.96;

export function mean(values: readonly number[]): number {
  return values.reduce((s, v) => s + v, 0) / values.length;
}

/** Sample variance (n − 1); 0 for fewer than two values. */
export function variance(values: readonly number[]): number {
  if (values.length < 2) return 0;
  const m = mean(values);
  return values.reduce((s, v) => s + (v - m) ** 2, 0) / (values.length - 1);
}

/** The paired test of two bases' seed results (matched by seed). */
export function pairTest(a: readonly SeedResult[], b: readonly SeedResult[]): { diff: number; se: number; z: number; tied: boolean } {
  const seeds = a.map((r) => r.seed).filter((s) => b.some((r) => r.seed === s));
  if (!seeds.length) throw new Error(`no common seed between ${a[0]?.base} and ${b[0]?.base}`);
  const n = a[0].valCount;
  if (b.some((r) => r.valCount !== n) || a.some((r) => r.valCount !== n)) throw new Error(`the bases were scored on different validation splits (${a[0].base}, ${b[0].base})`);
  const d = new Float64Array(n);
  const bySeed: number[] = [];
  for (const seed of seeds) {
    const ra = a.find((r) => r.seed === seed)!;
    const rb = b.find((r) => r.seed === seed)!;
    const wrongA = new Set(ra.wrong);
    const wrongB = new Set(rb.wrong);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const di = (wrongA.has(i) ? 0 : 1) - (wrongB.has(i) ? 0 : 1);
      d[i] += di / seeds.length;
      sum += di;
    }
    bySeed.push(sum / n);
  }
  const diff = mean(bySeed);
  const se = Math.sqrt(variance(Array.from(d)) / n + variance(bySeed) / seeds.length);
  const z = se > 0 ? diff / se : diff === 0 ? 0 : Infinity * Math.sign(diff);
  return { diff, se, z, tied: Math.abs(z) < Z_CRITICAL };
}

/**
 * Kendall's τ-b of `x` against `y` (same length); `tiedY(i, j)` marks pairs to count as ties of
 * `y` whatever their values. 0 when either side is all ties.
 */
export function kendallTauB(x: readonly number[], y: readonly number[], tiedY: (i: number, j: number) => boolean = () => false): number {
  let concordant = 0;
  let discordant = 0;
  let tiesX = 0;
  let tiesY = 0;
  let pairs = 0;
  for (let i = 0; i < x.length; i++) {
    for (let j = i + 1; j < x.length; j++) {
      pairs++;
      const sx = Math.sign(x[i] - x[j]);
      const sy = tiedY(i, j) ? 0 : Math.sign(y[i] - y[j]);
      if (sx === 0) tiesX++;
      if (sy === 0) tiesY++;
      if (sx * sy > 0) concordant++;
      else if (sx * sy < 0) discordant++;
    }
  }
  const denominator = Math.sqrt((pairs - tiesX) * (pairs - tiesY));
  return denominator > 0 ? (concordant - discordant) / denominator : 0;
}

/** Per target (in first-seen order), the bases over their seeds, the pair tests and the agreements. */
export function summarizeTargets(results: readonly SeedResult[]): TargetSummary[] {
  return [...new Set(results.map((r) => r.target))].map((target) => {
    const rows = results.filter((r) => r.target === target);
    const names = [...new Set(rows.map((r) => r.base))];
    const runs = new Map(names.map((name) => [name, rows.filter((r) => r.base === name)]));
    const bases: BaseSummary[] = names.map((base) => {
      const own = runs.get(base)!;
      const tuned = own.map((r) => r.tunedAcc);
      const logmes = own.map((r) => r.logme);
      return { base, seeds: own.length, logme: mean(logmes), logmeStd: Math.sqrt(variance(logmes)), probe: mean(own.map((r) => r.probe)), headAcc: mean(own.map((r) => r.headAcc)), tunedAcc: mean(tuned), tunedStd: Math.sqrt(variance(tuned)), tunedBySeed: tuned };
    });
    const pairs: PairTest[] = [];
    const tied = new Set<string>();
    for (let i = 0; i < names.length; i++) {
      for (let j = i + 1; j < names.length; j++) {
        const [hi, lo] = bases[i].tunedAcc >= bases[j].tunedAcc ? [names[i], names[j]] : [names[j], names[i]];
        const test = pairTest(runs.get(hi)!, runs.get(lo)!);
        pairs.push({ a: hi, b: lo, ...test });
        if (test.tied) tied.add(`${i},${j}`);
      }
    }
    const tuned = bases.map((b) => b.tunedAcc);
    const isTied = (i: number, j: number) => tied.has(`${Math.min(i, j)},${Math.max(i, j)}`);
    const agreement = (scores: number[]): OrderAgreement => {
      let separated = 0;
      let agreeing = 0;
      for (let i = 0; i < names.length; i++) {
        for (let j = i + 1; j < names.length; j++) {
          if (isTied(i, j)) continue;
          separated++;
          if (Math.sign(scores[i] - scores[j]) === Math.sign(tuned[i] - tuned[j])) agreeing++;
        }
      }
      const order = orderBy(names, scores);
      return { order, strict: order.join() === orderBy(names, tuned).join(), upToTies: agreeing === separated, separated, agreeing, tau: kendallTauB(scores, tuned), tauTies: kendallTauB(scores, tuned, isTied) };
    };
    const seeds = [...new Set(rows.map((r) => r.seed))];
    const bySeed = (key: 'logme' | 'probe') => seeds.map((seed) => agreement(names.map((name) => runs.get(name)!.find((r) => r.seed === seed)?.[key] ?? NaN)));
    return { target, bases, pairs, tunedOrder: orderBy(names, tuned), logme: agreement(bases.map((b) => b.logme)), probe: agreement(bases.map((b) => b.probe)), logmeBySeed: bySeed('logme'), probeBySeed: bySeed('probe') };
  });
}

/** `names` sorted by `values`, highest first. */
function orderBy(names: readonly string[], values: readonly number[]): string[] {
  return names.map((name, i) => ({ name, value: values[i] })).sort((a, b) => b.value - a.value).map((e) => e.name);
}

/** The fine-tuned order with tied neighbours joined by ≈ (a > b when the pair test separates them). */
export function formatTunedOrder(summary: TargetSummary): string {
  const order = summary.tunedOrder;
  const pair = (x: string, y: string) => summary.pairs.find((p) => (p.a === x && p.b === y) || (p.a === y && p.b === x))!;
  return order.map((name, i) => (i === 0 ? name : `${pair(order[i - 1], name).tied ? '≈' : '>'} ${name}`)).join(' ');
}
