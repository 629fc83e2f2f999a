/**
 * `rank-bases` through the real runtime on the Fashion-MNIST fixture (3 classes, 18 train
 * images at 28x28x1): the pretrained fashion base against the same architecture with random
 * weights, the table, `load-base from: rank` loading the winner, and the bad inputs
 * validation refuses (exit 2 issues at file:line).
 */
import { copyFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeModels, readModelArtifact } from '../../../src/ml/artifact.js';
import { loadBaseModel } from '../../../src/ml/base-model.js';
import { loadPipeline } from '../../../src/runtime/load.js';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
import { RANKING_FILE, stratifiedSample, type Ranking } from '../../../src/stages/rank-bases.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { FASHION, useTestBackend } from './helpers.js';

const BASE = path.resolve(import.meta.dirname, '../../../models/fashion-base/model.json');
let dir: TestDir;
beforeAll(async () => {
  dir = testdir({});
  await useTestBackend();
});
afterAll(() => dir.cleanup());

const head = (rest: string) => `name: rank
seed: 3
stages:
  data: { uses: ingest, with: { path: ${JSON.stringify(FASHION)}, split: { val: 0.25 } } }
  shards: { uses: preprocess, needs: [data], with: { size: [28, 28], channels: 1, normalize: imagenet } }
${rest}`;

const rank = `  rank:
    uses: rank-bases
    needs: [shards]
    with:
      folds: 3
      models:
        - { name: fashion, model: ${JSON.stringify(BASE)}, cut: block_3_relu2 }
        - { name: random, model: ${JSON.stringify(BASE)}, cut: block_3_relu2, init: random }
`;

describe('rank-bases', () => {
  it('ranks the pretrained base above its random twin, writes the table, and load-base from: rank loads it', { timeout: 120_000 }, async () => {
    const file = dir.write('p.yaml', head(rank + `  base: { uses: load-base, needs: [rank], with: { from: rank } }
  freeze: { uses: freeze, needs: [base] }
  train: { uses: train-head, needs: [shards, freeze], with: { epochs: 2, batch: 8 } }
`));
    const summary = await runPipeline({ file, registry: stages, artifacts: dir.path('artifacts') });
    const byId = Object.fromEntries(summary.stages.map((s) => [s.id, s]));
    expect(summary.status, JSON.stringify(summary.stages.map((s) => s.error).filter(Boolean))).toBe('succeeded');
    const metrics = byId.rank.metrics;
    expect(metrics.best).toBe('fashion');
    expect(metrics.images).toBe(18);
    const ranking = JSON.parse(readFileSync(path.join(dir.path('artifacts'), 'cache', byId.rank.key, RANKING_FILE), 'utf8')) as Ranking;
    const [first, second] = ranking.candidates;
    expect([first.name, second.name]).toEqual(['fashion', 'random']);
    expect(first.logme).toBeGreaterThan(second.logme);
    expect(first.probe.accuracy).toBeGreaterThanOrEqual(second.probe.accuracy);
    expect(first.probe.folds).toHaveLength(3);
    expect(first.features).toBe(64);
    expect(first.normalize).toBe('imagenet'); // recorded by the exported base
    expect(first.params).toBeGreaterThan(0);
    const table = readFileSync(path.join(dir.path('artifacts'), 'cache', byId.rank.key, 'ranking.md'), 'utf8');
    expect(table).toMatch(/\| 1 \| fashion \| -?\d+\.\d{4} \| \d\.\d{3} ± \d\.\d{3} \|/);
    // from: rank: the winner, with its cut, and where it came from.
    expect(byId.base.metrics.ranked_by).toBe('rank');
    expect(byId.base.metrics.output_shape).toEqual([null, 7, 7, 64]);
    expect(byId.train.status).toBe('ran');

    // Same seed, same numbers: a run on a fresh store computes the identical ranking.
    const again = await runPipeline({ file, registry: stages, artifacts: dir.path('artifacts2') });
    const rerun = again.stages.find((s) => s.id === 'rank')!;
    expect(rerun.metrics.ranking).toEqual(metrics.ranking);
  });

  it('uses the probe to select when asked, and normalizes each candidate its own way', { timeout: 120_000 }, async () => {
    const file = dir.write('q.yaml', head(rank.replace('folds: 3', 'folds: 3\n      select: probe').replace('init: random }', 'init: random, normalize: unit }')));
    const summary = await runPipeline({ file, registry: stages, artifacts: dir.path('artifacts3') });
    const byId = Object.fromEntries(summary.stages.map((s) => [s.id, s]));
    expect(summary.status).toBe('succeeded');
    const ranking = JSON.parse(readFileSync(path.join(dir.path('artifacts3'), 'cache', byId.rank.key, RANKING_FILE), 'utf8')) as Ranking;
    expect(ranking.select).toBe('probe');
    expect(ranking.candidates.find((c) => c.name === 'random')!.normalize).toBe('unit');
    const probes = ranking.candidates.map((c) => c.probe.accuracy);
    expect(probes[0]).toBeGreaterThanOrEqual(probes[1]);
  });

  it('from: rank builds a random winner with the very weights that were scored', { timeout: 120_000 }, async () => {
    const only = `  rank:\n    uses: rank-bases\n    needs: [shards]\n    with:\n      folds: 3\n      models:\n        - { name: random, model: ${JSON.stringify(BASE)}, cut: block_3_relu2, init: random }\n`;
    const file = dir.write('r.yaml', head(only + '  base: { uses: load-base, needs: [rank], with: { from: rank } }\n'));
    const summary = await runPipeline({ file, registry: stages, artifacts: dir.path('artifacts4') });
    expect(summary.status).toBe('succeeded');
    const key = (id: string) => summary.stages.find((s) => s.id === id)!.key;
    const ranking = JSON.parse(readFileSync(path.join(dir.path('artifacts4'), 'cache', key('rank'), RANKING_FILE), 'utf8')) as Ranking;
    const scored = await loadBaseModel(ranking.candidates[0].spec, { baseDir: dir.root, seed: ranking.candidates[0].init_seed });
    const { model } = await readModelArtifact(path.join(dir.path('artifacts4'), 'cache', key('base')));
    const [a, b] = [scored.model.getWeights(), model.getWeights()];
    expect(b.length).toBe(a.length);
    a.forEach((w, i) => expect(Array.from(b[i].dataSync())).toEqual(Array.from(w.dataSync())));
    disposeModels(model, ...scored.made);
  });

  it('warns when a foreign candidate gets a normalization its first BatchNorm disagrees with', { timeout: 120_000 }, async () => {
    // The fashion base without its recorded preprocessing: a "foreign" model trained on imagenet normalization.
    const json = JSON.parse(readFileSync(BASE, 'utf8'));
    delete json.userDefinedMetadata;
    dir.write('foreign/model.json', JSON.stringify(json));
    copyFileSync(path.join(path.dirname(BASE), 'weights.bin'), dir.path('foreign/weights.bin'));
    const models = `  rank:\n    uses: rank-bases\n    needs: [shards]\n    with:\n      folds: 3\n      models:\n        - { name: as-is, model: foreign/model.json, cut: block_3_relu2 }\n        - { name: wrong, model: foreign/model.json, cut: block_3_relu2, normalize: unit }\n`;
    const summary = await runPipeline({ file: dir.write('f.yaml', head(models)), registry: stages, artifacts: dir.path('artifacts5') });
    expect(summary.status).toBe('succeeded');
    const rank = summary.stages.find((s) => s.id === 'rank')!;
    expect(summary.warnings).toEqual([{ stage: 'rank', message: expect.stringMatching(/^candidate 'wrong': normalize: unit does not match .*\(block_1_bn1\).*likely trained with normalize: imagenet; its scores are for normalize: unit: set normalize: imagenet on it$/) }]);
    const ranking = JSON.parse(readFileSync(path.join(dir.path('artifacts5'), 'cache', rank.key, RANKING_FILE), 'utf8')) as Ranking;
    const asIs = ranking.candidates.find((c) => c.name === 'as-is')!;
    expect(asIs.bn).toMatchObject({ layer: 'block_1_bn1', best: 'imagenet' });
    expect(asIs.bn!.warning).toBeUndefined();
    expect(readFileSync(path.join(dir.path('artifacts5'), 'cache', rank.key, 'ranking.md'), 'utf8')).toContain('| unit (BatchNorm statistics suggest imagenet) |');
  });

  it('samples at most max_images, stratified and seeded', () => {
    const labels = Int32Array.from({ length: 100 }, (_, i) => (i < 80 ? 0 : 1));
    const sample = stratifiedSample(labels, 50, 1);
    expect(sample.length).toBe(50);
    expect(Array.from(sample).filter((i) => labels[i] === 1).length).toBe(10);
    expect(Array.from(stratifiedSample(labels, 50, 1))).toEqual(Array.from(sample));
    expect(Array.from(stratifiedSample(labels, 50, 2))).not.toEqual(Array.from(sample));
  });
});

describe('rank-bases: bad input is refused at validation (exit 2), at its file:line', () => {
  const issuesOf = (text: string) => {
    const file = dir.write('bad.yaml', text);
    const result = loadPipeline(file, stages);
    expect(result.ok).toBe(false);
    return result.ok ? [] : result.issues;
  };

  it('an empty models list', () => {
    const issues = issuesOf(head(`  rank: { uses: rank-bases, needs: [shards], with: { models: [] } }\n`));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ path: 'stages.rank.with.models', line: 6 });
    expect(issues[0].message).toMatch(/at least 1/);
  });

  it('a candidate whose model does not exist', () => {
    const issues = issuesOf(head(rank.replace(`{ name: random, model: ${JSON.stringify(BASE)}`, '{ name: random, model: models/none/model.json')));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ code: 'input_not_found', path: 'stages.rank.with.models.1.model', line: 13 });
    expect(issues[0].message).toMatch(/models\/none\/model\.json does not exist/);
  });

  it('two candidates with one name', () => {
    const issues = issuesOf(head(rank.replace('name: random', 'name: fashion')));
    expect(issues[0]).toMatchObject({ code: 'invalid_param', path: 'stages.rank.with.models.1.name', line: 13 });
  });

  it('load-base from: rank without a rank-bases stage in its needs, or with a model too', () => {
    const missing = issuesOf(head(`  base: { uses: load-base, with: { from: rank } }\n`));
    expect(missing[0]).toMatchObject({ code: 'missing_input', path: 'stages.base.needs' });
    expect(missing[0].message).toMatch(/reads a 'ranking'.*'rank-bases'/);
    const both = issuesOf(head(rank + `  base: { uses: load-base, needs: [rank], with: { from: rank, model: ${JSON.stringify(BASE)} } }\n`));
    expect(both[0]).toMatchObject({ code: 'invalid_param', path: 'stages.base.with.model' });
    expect(both[0].message).toMatch(/from: rank takes model from the ranking/);
    const neither = issuesOf(head(`  base: { uses: load-base, with: { cut: x } }\n`));
    expect(neither[0]).toMatchObject({ code: 'invalid_param', path: 'stages.base.with.model' });
  });
});
