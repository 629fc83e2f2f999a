/**
 * Does `rank-bases` predict which base fine-tunes best? On Fashion-MNIST targets, three
 * bases are ranked from frozen features (LogME, 5-fold ridge probe), then each is fine-tuned with
 * one short recipe (head 15 epochs at lr 0.003, then the top block + head 10 epochs at lr/10),
 * and the LogME order is compared with the order of the fine-tuned validation accuracies.
 *
 *   npx tsx bench/rank.ts [--markdown FILE]        (or `npm run bench rank`)
 *
 * Bases: the demo's fashion base (models/fashion-base, 28x28x1, pretrained on 8 other
 * Fashion-MNIST classes), the same architecture with seeded random weights (load-base
 * `init: random`), and nsfwjs's Keras MobileNetV2 (decoded at run time, never committed) cut at
 * `out_relu` at a 96x96x3 input (`normalize: unit`, the one its BatchNorm statistics point to).
 * Targets: A = the demo's coat vs dress (data/fashion-target: 30 train, 150 val per class; the
 * fashion base never saw either class); B = dress / coat / pullover / shirt, 50 train and 100
 * val per class from Debian's dataset-fashion-mnist (past the images the base trained on);
 * C = A's classes with 150 train and 150 val per class (past A's images), to tell a
 * small-sample effect from a wrong ranking.
 * Needs /usr/share/datasets/fashion-mnist for B and C (skipped with a note without it). A few minutes
 * on two cores (wasm + onnxruntime).
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

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const FASHION_BASE = join(ROOT, 'models/fashion-base/model.json');

/** One base: how rank-bases and the fine-tune pipeline load and feed it. */
interface BaseCase {
  name: string;
  load: string;
  candidate: string;
  preprocess: string;
  unfreeze: string;
}

/** One row of the result. */
export interface RankBenchRow {
  target: string;
  base: string;
  logme: number;
  probe: number;
  probeStd: number;
  featureSeconds: number;
  params: number;
  headAcc: number;
  tunedAcc: number;
  /** Seconds of the fine-tune pipeline's stages (ingest cached). */
  tuneSeconds: number;
  /** Seconds of the rank-bases stage for the whole target (all bases). */
  rankSeconds: number;
}

export async function benchRank(argv: string[] = []): Promise<RankBenchRow[]> {
  const { values } = parseArgs({ args: argv, options: { markdown: { type: 'string' } } });
  const work = mkdtempSync(join(tmpdir(), 'bench-rank-'));
  try {
    configureBackend('wasm');
    await useTf();
    decodeNsfwjsModel({ outDir: join(work, 'mobilenet_v2') });
    const mobilenet = join(work, 'mobilenet_v2/model.json');
    const bases: BaseCase[] = [
      { name: 'fashion', load: `{ model: ${FASHION_BASE}, cut: block_3_relu2 }`, candidate: `{ name: fashion, model: ${FASHION_BASE}, cut: block_3_relu2 }`, preprocess: 'size: [28, 28], channels: 1, normalize: imagenet', unfreeze: 'blocks: 1' },
      { name: 'random', load: `{ model: ${FASHION_BASE}, cut: block_3_relu2, init: random }`, candidate: `{ name: random, model: ${FASHION_BASE}, cut: block_3_relu2, init: random }`, preprocess: 'size: [28, 28], channels: 1, normalize: imagenet', unfreeze: 'blocks: 1' },
      { name: 'mobilenet-v2-96', load: `{ model: ${mobilenet}, cut: out_relu, input_shape: [96, 96, 3] }`, candidate: `{ name: mobilenet-v2-96, model: ${mobilenet}, cut: out_relu, input_shape: [96, 96, 3], normalize: unit }`, preprocess: 'size: [96, 96], channels: 3, fit: fill, normalize: unit', unfreeze: 'from: block_16_expand' },
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
      const rankFile = join(work, `rank-${t}.yaml`);
      writeFileSync(rankFile, `name: rank-${t}
seed: 42
stages:
  data: { uses: ingest, with: { path: ${target.path} } }
  shards: { uses: preprocess, needs: [data], with: { size: [28, 28], channels: 1, normalize: imagenet } }
  rank:
    uses: rank-bases
    needs: [shards]
    with:
      models:
${bases.map((b) => `        - ${b.candidate}`).join('\n')}
`);
      const ranked = await run(rankFile, artifacts);
      const rankStage = ranked.stages.find((s) => s.id === 'rank')!;
      const ranking = JSON.parse(readFileSync(join(artifacts, 'cache', rankStage.key, 'ranking.json'), 'utf8')) as Ranking;
      process.stderr.write(`${target.name}: ranked in ${rankStage.seconds.toFixed(1)} s\n${readFileSync(join(artifacts, 'cache', rankStage.key, 'ranking.md'), 'utf8')}\n`);
      for (const base of bases) {
        const file = join(work, `tune-${t}-${base.name}.yaml`);
        writeFileSync(file, `name: tune-${t}-${base.name}
seed: 42
stages:
  data: { uses: ingest, with: { path: ${target.path} } }
  shards: { uses: preprocess, needs: [data], with: { ${base.preprocess} } }
  base: { uses: load-base, with: ${base.load} }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 15, lr: 0.003, batch: 16, early_stopping: false } }
  unfreeze: { uses: unfreeze, needs: [head], with: { ${base.unfreeze} } }
  tune: { uses: fine-tune, needs: [shards, unfreeze], with: { epochs: 10, lr_divisor: 10, batch: 16, early_stopping: false } }
`);
        const summary = await run(file, artifacts);
        const stage = (id: string) => summary.stages.find((s) => s.id === id)!;
        const score = ranking.candidates.find((c) => c.name === base.name)!;
        rows.push({
          target: target.name,
          base: base.name,
          logme: score.logme,
          probe: score.probe.accuracy,
          probeStd: score.probe.std,
          featureSeconds: score.feature_seconds,
          params: score.params,
          headAcc: stage('head').metrics.val_acc as number,
          tunedAcc: stage('tune').metrics.val_acc as number,
          tuneSeconds: summary.stages.reduce((s, x) => s + x.seconds, 0),
          rankSeconds: rankStage.seconds,
        });
        process.stderr.write(`  ${base.name}: head ${fmt(rows.at(-1)!.headAcc)} fine-tuned ${fmt(rows.at(-1)!.tunedAcc)} (${rows.at(-1)!.tuneSeconds.toFixed(1)} s)${summary.warnings ? ` warnings: ${summary.warnings.map((w) => w.message).join('; ')}` : ''}\n`);
      }
    }
    const table = formatTable(rows, describeBackend()?.name ?? 'unknown');
    process.stdout.write(table);
    process.stdout.write(JSON.stringify({ bench: 'rank', rows }) + '\n');
    if (values.markdown) writeFileSync(values.markdown, table);
    return rows;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function run(file: string, artifacts: string): Promise<RunSummary> {
  const summary = await runPipeline({ file, registry: stages, artifacts });
  if (summary.status !== 'succeeded') throw new Error(`${file} ${summary.status}: ${JSON.stringify(summary.stages.map((s) => s.error).filter(Boolean))}`);
  return summary;
}

/** The rows as Markdown, with per target whether the LogME order is the fine-tuned order. */
export function formatTable(rows: RankBenchRow[], backend: string): string {
  const lines = ['| target | base | LogME | probe acc ± std | features (s) | params | head val acc | fine-tuned val acc | fine-tune (s) | LogME rank | fine-tune rank |', '|---|---|---|---|---|---|---|---|---|---|---|'];
  const verdicts: string[] = [];
  for (const target of [...new Set(rows.map((r) => r.target))]) {
    const group = rows.filter((r) => r.target === target);
    const byLogme = [...group].sort((a, b) => b.logme - a.logme).map((r) => r.base);
    const byTuned = [...group].sort((a, b) => b.tunedAcc - a.tunedAcc).map((r) => r.base);
    for (const r of group) {
      lines.push(`| ${r.target} | ${r.base} | ${r.logme.toFixed(3)} | ${r.probe.toFixed(3)} ± ${r.probeStd.toFixed(3)} | ${r.featureSeconds.toFixed(2)} | ${r.params.toLocaleString('en-US')} | ${fmt(r.headAcc)} | **${fmt(r.tunedAcc)}** | ${r.tuneSeconds.toFixed(1)} | ${byLogme.indexOf(r.base) + 1} | ${byTuned.indexOf(r.base) + 1} |`);
    }
    const tuning = group.reduce((s, r) => s + r.tuneSeconds, 0);
    verdicts.push(`${target}: LogME order ${byLogme.join(' > ')}; fine-tuned order ${byTuned.join(' > ')} — ${byLogme.join() === byTuned.join() ? 'match' : byLogme[0] === byTuned[0] ? 'same best, rest differ' : 'differ'} (ranking ${group[0].rankSeconds.toFixed(1)} s, the fine-tunes ${tuning.toFixed(1)} s)`);
  }
  return `${lines.join('\n')}\n\n${verdicts.map((v) => `- ${v}`).join('\n')}\n\n(backend ${backend})\n`;
}

function fmt(value: number): string {
  return value.toFixed(3);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchRank(process.argv.slice(2));
