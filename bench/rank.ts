/**
 * Does `rank-bases` predict which base fine-tunes best? On Fashion-MNIST targets, three
 * bases are ranked from frozen features (LogME, 5-fold ridge probe), then each is fine-tuned with
 * one short recipe (head 15 epochs at lr 0.003, then the top block + head 10 epochs at lr/10) at
 * several pipeline seeds and scored by `evaluate`; the LogME order is compared with the order of
 * the mean fine-tuned validation accuracies, pairs of bases within noise counted as ties
 * (bench/rank-stats.ts: a paired test over the validation images and the seeds).
 *
 *   npx tsx bench/rank.ts [--seeds 5] [--markdown FILE] [--save ROWS.json]   (or `npm run bench rank`)
 *   npx tsx bench/rank.ts --load ROWS.json [--markdown FILE]                 (the table again, no run)
 *
 * Each base is ranked by its own rank-bases stage (on 28x28 shards, as one stage ranking all
 * would) and loaded with `load-base from: rank`, so a random candidate is fine-tuned with the
 * weights it was scored with. Seeds are 42, 43, …; a seed changes the head's init, the
 * shuffling, the augmentation and the random base's weights.
 * Bases: the demo's fashion base (models/fashion-base, 28x28x1, pretrained on 8 other
 * Fashion-MNIST classes), the same architecture with seeded random weights (load-base
 * `init: random`), and nsfwjs's Keras MobileNetV2 (decoded at run time, never committed) cut at
 * `out_relu` at a 96x96x3 input (`normalize: unit`, the one its BatchNorm statistics point to).
 * Targets: A = the demo's coat vs dress (data/fashion-target: 30 train, 150 val per class; the
 * fashion base never saw either class); B = dress / coat / pullover / shirt, 50 train and 100
 * val per class from Debian's dataset-fashion-mnist (past the images the base trained on);
 * C = A's classes with 150 train and 150 val per class (past A's images), to tell a
 * small-sample effect from a wrong ranking.
 * Needs /usr/share/datasets/fashion-mnist for B and C (skipped with a note without it). About 1.7 min
 * per seed on two cores (wasm + onnxruntime).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { decodeNsfwjsModel } from '../scripts/decode-nsfwjs.js';
import { DEFAULT_SOURCE, writeFashionMnist } from '../scripts/fashion-mnist.js';
import { configureBackend, describeBackend, useTf } from '../src/ml/backend.js';
import { runPipeline } from '../src/runtime/run.js';
import type { RunSummary } from '../src/runtime/execute.js';
import { stages } from '../src/stages/index.js';
import type { Ranking } from '../src/stages/rank-bases.js';
import { EVALUATION_FILE } from '../src/stages/evaluate.js';
import { formatTunedOrder, mean, summarizeTargets, Z_CRITICAL, type SeedResult } from './rank-stats.js';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const FASHION_BASE = join(ROOT, 'models/fashion-base/model.json');

/** One base: how rank-bases and the fine-tune pipeline load and feed it. */
interface BaseCase {
  name: string;
  candidate: string;
  preprocess: string;
  unfreeze: string;
}

/** One row of the result: one base fine-tuned at one seed on one target. */
export interface RankBenchRow extends SeedResult {
  featureSeconds: number;
  params: number;
  /** Seconds of the fine-tune pipeline's stages (ingest cached). */
  tuneSeconds: number;
  /** Seconds of this base's rank-bases stage (its features, LogME and the probe). */
  rankSeconds: number;
}

export async function benchRank(argv: string[] = []): Promise<RankBenchRow[]> {
  const { values } = parseArgs({ args: argv, options: { markdown: { type: 'string' }, seeds: { type: 'string', default: '5' }, save: { type: 'string' }, load: { type: 'string' } } });
  if (values.load) {
    // Only the table, from the rows a --save run wrote.
    const saved = JSON.parse(readFileSync(values.load, 'utf8')) as { rows: RankBenchRow[] };
    return report(saved.rows, values.markdown, 'saved rows');
  }
  const seedCount = Number(values.seeds);
  if (!(Number.isInteger(seedCount) && seedCount >= 1)) throw new Error(`bench rank: --seeds takes a whole number >= 1, got '${values.seeds}'`);
  const seeds = Array.from({ length: seedCount }, (_, i) => 42 + i);
  const work = mkdtempSync(join(tmpdir(), 'bench-rank-'));
  try {
    configureBackend('wasm');
    await useTf();
    decodeNsfwjsModel({ outDir: join(work, 'mobilenet_v2') });
    const mobilenet = join(work, 'mobilenet_v2/model.json');
    const bases: BaseCase[] = [
      { name: 'fashion', candidate: `{ name: fashion, model: ${FASHION_BASE}, cut: block_3_relu2 }`, preprocess: 'size: [28, 28], channels: 1, normalize: imagenet', unfreeze: 'blocks: 1' },
      { name: 'random', candidate: `{ name: random, model: ${FASHION_BASE}, cut: block_3_relu2, init: random }`, preprocess: 'size: [28, 28], channels: 1, normalize: imagenet', unfreeze: 'blocks: 1' },
      { name: 'mobilenet-v2-96', candidate: `{ name: mobilenet-v2-96, model: ${mobilenet}, cut: out_relu, input_shape: [96, 96, 3], normalize: unit }`, preprocess: 'size: [96, 96], channels: 3, fit: fill, normalize: unit', unfreeze: 'from: block_16_expand' },
    ];
    const targets: { name: string; path: string }[] = [{ name: 'A: coat vs dress (30/class)', path: join(ROOT, 'data/fashion-target') }];
    if (existsSync(join(DEFAULT_SOURCE, 'train-images-idx3-ubyte.gz'))) {
      const b = join(work, 'target-b');
      // dress, coat, pullover, shirt; past the base's source images (train: first 1500, test: first 250 per class).
      await writeFashionMnist({ out: join(b, 'train'), classes: [3, 4, 2, 6], perClass: 50, split: 'train', offset: 1500 });
      await writeFashionMnist({ out: join(b, 'val'), classes: [3, 4, 2, 6], perClass: 100, split: 'test', offset: 250 });
      targets.push({ name: 'B: dress/coat/pullover/shirt (50/class)', path: b });
      // A with five times the labels: is A's order a small-sample effect? (Past A's own images.)
      const c = join(work, 'target-c');
      await writeFashionMnist({ out: join(c, 'train'), classes: [4, 3], perClass: 150, split: 'train', offset: 30 });
      await writeFashionMnist({ out: join(c, 'val'), classes: [4, 3], perClass: 150, split: 'test', offset: 150 });
      targets.push({ name: 'C: coat vs dress (150/class)', path: c });
    } else {
      process.stderr.write(`bench rank: ${DEFAULT_SOURCE} not found (apt-get install dataset-fashion-mnist); targets B and C skipped\n`);
    }
    const rows: RankBenchRow[] = [];
    for (const [t, target] of targets.entries()) {
      const artifacts = join(work, `artifacts-${t}`);
      for (const seed of seeds) {
        for (const base of bases) {
          // The base is ranked alone on the 28x28 shards (as one rank-bases stage would rank it among
          // others: the scores do not depend on the other candidates), and load-base from: rank
          // fine-tunes the very network scored (a random candidate's weights included).
          const file = join(work, `tune-${t}-${base.name}-${seed}.yaml`);
          writeFileSync(file, `name: tune-${t}-${base.name}
seed: ${seed}
stages:
  data: { uses: ingest, with: { path: ${target.path} } }
  rank-shards: { uses: preprocess, needs: [data], with: { size: [28, 28], channels: 1, normalize: imagenet } }
  rank: { uses: rank-bases, needs: [rank-shards], with: { models: [${base.candidate}] } }
  shards: { uses: preprocess, needs: [data], with: { ${base.preprocess} } }
  base: { uses: load-base, needs: [rank], with: { from: rank } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 15, lr: 0.003, batch: 16, early_stopping: false } }
  unfreeze: { uses: unfreeze, needs: [head], with: { ${base.unfreeze} } }
  tune: { uses: fine-tune, needs: [shards, unfreeze], with: { epochs: 10, lr_divisor: 10, batch: 16, early_stopping: false } }
  eval: { uses: evaluate, needs: [shards, tune] }
`);
          const summary = await run(file, artifacts);
          const stage = (id: string) => summary.stages.find((s) => s.id === id)!;
          const ranking = JSON.parse(readFileSync(join(artifacts, 'cache', stage('rank').key, 'ranking.json'), 'utf8')) as Ranking;
          const evaluation = JSON.parse(readFileSync(join(artifacts, 'cache', stage('eval').key, EVALUATION_FILE), 'utf8')) as { records: number; accuracy: number; misclassified: { total: number; records: { index: number }[] } };
          if (evaluation.misclassified.records.length !== evaluation.misclassified.total) throw new Error(`${file}: evaluate listed ${evaluation.misclassified.records.length} of ${evaluation.misclassified.total} misclassified records`);
          const score = ranking.candidates[0];
          const row: RankBenchRow = {
            target: target.name,
            base: base.name,
            seed,
            logme: score.logme,
            probe: score.probe.accuracy,
            probeStd: score.probe.std,
            featureSeconds: score.feature_seconds,
            params: score.params,
            headAcc: stage('head').metrics.val_acc as number,
            tunedAcc: evaluation.accuracy,
            valCount: evaluation.records,
            wrong: evaluation.misclassified.records.map((r) => r.index).sort((x, y) => x - y),
            tuneSeconds: summary.stages.filter((s) => s.id !== 'rank' && s.id !== 'rank-shards').reduce((s, x) => s + x.seconds, 0),
            rankSeconds: stage('rank').seconds,
          };
          rows.push(row);
          if (values.save) writeFileSync(values.save, JSON.stringify({ bench: 'rank', rows }) + '\n');
          process.stderr.write(`${target.name} seed ${seed} ${base.name}: LogME ${row.logme.toFixed(3)} probe ${fmt(row.probe)} head ${fmt(row.headAcc)} fine-tuned ${fmt(row.tunedAcc)} (fine-tune stage ${fmt(stage('tune').metrics.val_acc as number)}; ${row.tuneSeconds.toFixed(1)} s)${summary.warnings ? ` warnings: ${summary.warnings.map((w) => w.message).join('; ')}` : ''}\n`);
        }
      }
    }
    return report(rows, values.markdown, describeBackend()?.name ?? 'unknown');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Prints the table and the JSON line (rows and per-target summary); writes the table to `markdown`. */
function report(rows: RankBenchRow[], markdown: string | undefined, backend: string): RankBenchRow[] {
  const table = formatTable(rows, backend);
  process.stdout.write(table);
  process.stdout.write(JSON.stringify({ bench: 'rank', seeds: [...new Set(rows.map((r) => r.seed))], rows, summary: summarizeTargets(rows) }) + '\n');
  if (markdown) writeFileSync(markdown, table);
  return rows;
}

async function run(file: string, artifacts: string): Promise<RunSummary> {
  const summary = await runPipeline({ file, registry: stages, artifacts });
  if (summary.status !== 'succeeded') throw new Error(`${file} ${summary.status}: ${JSON.stringify(summary.stages.map((s) => s.error).filter(Boolean))}`);
  return summary;
}

/**
 * The rows as Markdown: per target and base the means over the seeds (± the standard deviation
 * of the fine-tuned accuracy), the ranks, then per target the pair tests and the verdicts.
 */
export function formatTable(rows: RankBenchRow[], backend: string): string {
  const lines = ['| target | base | LogME | probe acc | params | head val acc | fine-tuned val acc (mean ± std) | per seed | LogME rank | probe rank | fine-tune rank |', '|---|---|---|---|---|---|---|---|---|---|---|'];
  const notes: string[] = [];
  const seeds = [...new Set(rows.map((r) => r.seed))];
  for (const summary of summarizeTargets(rows)) {
    const group = rows.filter((r) => r.target === summary.target);
    for (const [i, b] of summary.bases.entries()) {
      const params = group.find((r) => r.base === b.base)!.params;
      const logme = b.logmeStd > 0.0005 ? `${b.logme.toFixed(3)} ± ${b.logmeStd.toFixed(3)}` : b.logme.toFixed(3);
      lines.push(`| ${i === 0 ? summary.target : ''} | ${b.base} | ${logme} | ${fmt(b.probe)} | ${params.toLocaleString('en-US')} | ${fmt(b.headAcc)} | **${fmt(b.tunedAcc)}** ± ${fmt(b.tunedStd)} | ${b.tunedBySeed.map(fmt).join(' / ')} | ${summary.logme.order.indexOf(b.base) + 1} | ${summary.probe.order.indexOf(b.base) + 1} | ${summary.tunedOrder.indexOf(b.base) + 1} |`);
    }
    const pairs = summary.pairs.map((p) => `${p.a} − ${p.b} ${p.diff >= 0 ? '+' : ''}${fmt(p.diff)} ± ${fmt(p.se)} (z ${p.z.toFixed(1)}, ${p.tied ? 'tied' : 'differ'})`);
    const verdict = (label: string, a: typeof summary.logme) => {
      const match = !a.separated ? `${a.strict ? 'matches the means' : 'differs from the means'}, but every pair is tied: nothing to predict` : a.strict ? 'matches' : a.upToTies ? 'matches up to ties' : 'does not match';
      const perSeed = label === 'LogME' ? summary.logmeBySeed : summary.probeBySeed;
      const seedsText = a.separated ? `; with one seed's scores: up to ties in ${perSeed.filter((x) => x.upToTies).length} of ${perSeed.length} seeds` : '';
      const pairsText = a.separated ? `orders ${a.agreeing} of the ${a.separated} separated pairs right; ` : '';
      return `${label} ${a.order.join(' > ')}: ${match} (${pairsText}τ-b ${a.tau.toFixed(2)}, ${a.tauTies.toFixed(2)} with ties${seedsText})`;
    };
    const rankSeconds = mean(seeds.map((seed) => group.filter((r) => r.seed === seed).reduce((s, r) => s + r.rankSeconds, 0)));
    const tuneSeconds = mean(seeds.map((seed) => group.filter((r) => r.seed === seed).reduce((s, r) => s + r.tuneSeconds, 0)));
    notes.push(`${summary.target}: fine-tuned ${formatTunedOrder(summary)}; ${verdict('LogME', summary.logme)}; ${verdict('probe', summary.probe)}. Pairs: ${pairs.join('; ')}. Ranking ${rankSeconds.toFixed(1)} s, the fine-tunes ${tuneSeconds.toFixed(1)} s per seed`);
  }
  const summaries = summarizeTargets(rows);
  const strict = (key: 'logme' | 'probe') => summaries.filter((s) => s[key].strict && s[key].separated > 0).length;
  const ties = (key: 'logme' | 'probe') => summaries.filter((s) => s[key].upToTies && s[key].separated > 0).length;
  const vacuous = summaries.filter((s) => s.logme.separated === 0).length;
  return `${lines.join('\n')}\n\n${notes.map((v) => `- ${v}`).join('\n')}\n\nLogME matches the fine-tuned order on ${strict('logme')} of ${summaries.length} targets strictly, ${ties('logme')} up to ties${vacuous ? ` (not counting ${vacuous} target(s) where every pair is tied)` : ''}; the probe on ${strict('probe')} and ${ties('probe')}. Seeds ${seeds.join(', ')}; a pair is tied when |Δ| < ${Z_CRITICAL} SE (images and seeds, bench/rank-stats.ts). (backend ${backend})\n`;
}

function fmt(value: number): string {
  return value.toFixed(3);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchRank(process.argv.slice(2));
