/**
 * The preprocessing check of train-head. A base this toolkit exported records its preprocessing:
 * another size, channel count or normalization fails the stage (`preprocess_mismatch`, naming
 * both and the fix) unless load-base says `allow_preprocess_mismatch: true`, which turns it into
 * a warning in the summary. A foreign base's first BatchNormalization is compared with the
 * target's statistics under each normalization (the real MobileNetV2 case is in
 * test/e2e/preprocess-check.test.ts).
 */
import path from 'node:path';
import type { SymbolicTensor } from '@tensorflow/tfjs-layers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDataset } from '../../../src/data/shards.js';
import { disposeModels } from '../../../src/ml/artifact.js';
import { loadBaseModel } from '../../../src/ml/base-model.js';
import { checkPreprocessing, batchNormDiscrepancy } from '../../../src/ml/preprocess-check.js';
import { renderSummary } from '../../../src/render.js';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { buildTinyShards, FASHION, useTestBackend } from './helpers.js';
import type { Tf, TfLayersApi } from '../../../src/ml/backend.js';

const BASE = path.resolve(import.meta.dirname, '../../../models/fashion-base/model.json');
let dir: TestDir;
let tf: Tf;
let tfl: TfLayersApi;
beforeAll(async () => {
  dir = testdir({});
  ({ tf, tfl } = await useTestBackend());
});
afterAll(() => dir.cleanup());

const pipeline = (preprocess: string, loadBase: string) => `name: check
stages:
  data: { uses: ingest, with: { path: ${JSON.stringify(FASHION)}, split: { val: 0.25 } } }
  shards: { uses: preprocess, needs: [data], with: { ${preprocess} } }
  base: { uses: load-base, with: { model: ${JSON.stringify(BASE)}, cut: block_3_relu2${loadBase} } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 1, batch: 8 } }
`;

async function run(name: string, text: string) {
  const summary = await runPipeline({ file: dir.write(`${name}.yaml`, text), registry: stages, artifacts: dir.path(`artifacts-${name}`) });
  return { summary, head: summary.stages.find((s) => s.id === 'head')! };
}

describe('a base that records its preprocessing (the fashion base: 28x28, 1 channel, imagenet)', () => {
  it('trains when the preprocessing matches', { timeout: 60_000 }, async () => {
    const { summary, head } = await run('match', pipeline('size: [28, 28], channels: 1, normalize: imagenet', ''));
    expect(summary.status).toBe('succeeded');
    expect(head.metrics.preprocess_check).toBe('recorded');
    expect(summary.warnings).toBeUndefined();
  });

  it('refuses another normalization, naming both and the fix', { timeout: 60_000 }, async () => {
    const { summary, head } = await run('normalize', pipeline('size: [28, 28], channels: 1, normalize: unit', ''));
    expect(summary.status).toBe('failed');
    expect(head.error?.code).toBe('preprocess_mismatch');
    expect(head.error?.message).toContain('was trained with normalize imagenet, and the shards of \'shards\' have normalize unit');
    expect(head.error?.message).toContain("set normalize: imagenet on 'shards' (preprocess), or allow_preprocess_mismatch: true on 'base' (load-base)");
  });

  it('refuses another size and channel count before the shape error', { timeout: 60_000 }, async () => {
    const { head } = await run('size', pipeline('size: [16, 16], channels: 3, normalize: imagenet', ''));
    expect(head.error?.code).toBe('preprocess_mismatch');
    expect(head.error?.message).toContain('trained with size [28, 28], channels 1');
    expect(head.error?.message).toContain('set size: [28, 28], channels: 1 on');
  });

  it('trains anyway with allow_preprocess_mismatch, and the summary warns', { timeout: 60_000 }, async () => {
    const { summary, head } = await run('allowed', pipeline('size: [28, 28], channels: 1, normalize: tf', ', allow_preprocess_mismatch: true'));
    expect(summary.status).toBe('succeeded');
    expect(head.metrics.preprocess_mismatch).toBe('normalize');
    expect(summary.warnings).toEqual([{ stage: 'head', message: expect.stringMatching(/trained with normalize imagenet.*have normalize tf \(allowed by allow_preprocess_mismatch\)/) }]);
    expect(renderSummary(summary)).toMatch(/^⚠ head: the base .* \(allowed by allow_preprocess_mismatch\)\n/);
  });

  it('does not check a re-initialized base (init: random has no source statistics)', { timeout: 60_000 }, async () => {
    const { summary, head } = await run('random', pipeline('size: [28, 28], channels: 1, normalize: unit', ', init: random'));
    expect(summary.status).toBe('succeeded');
    expect(head.metrics.preprocess_check).toBeUndefined();
  });
});

describe('a foreign base: the first BatchNormalization against the target statistics', () => {
  it('names imagenet for the fashion base when it is taken as foreign (it was trained with imagenet)', { timeout: 60_000 }, async () => {
    const info = { base: { source: BASE, init: 'pretrained' as const }, lineage: ['load-base'] };
    const base = await loadBaseModel({ model: BASE, cut: 'block_3_relu2' }, { baseDir: dir.root, seed: 1 });
    const results: Record<string, Awaited<ReturnType<typeof checkPreprocessing>>> = {};
    for (const normalize of ['imagenet', 'tf', 'unit']) {
      const text = `name: bn-${normalize}\nstages:\n  data: { uses: ingest, with: { path: ${JSON.stringify(FASHION)}, split: { val: 0.25 } } }\n  shards: { uses: preprocess, needs: [data], with: { size: [28, 28], channels: 1, normalize: ${normalize} } }\n`;
      const summary = await runPipeline({ file: dir.write(`bn-${normalize}.yaml`, text), registry: stages, artifacts: dir.path('artifacts-bn') });
      const dataset = await openDataset(path.join(dir.path('artifacts-bn'), 'cache', summary.stages.find((s) => s.id === 'shards')!.key));
      results[normalize] = await checkPreprocessing(tf, base.model, info, dataset, { modelStage: 'base', shardsStage: 'shards' });
      await dataset.close();
    }
    disposeModels(...base.made);
    expect(results.imagenet).toMatchObject({ method: 'bn_stats', warnings: [], metrics: { bn_layer: 'block_1_bn1', bn_best_normalize: 'imagenet' } });
    const metrics = results.imagenet.metrics as Record<string, number>;
    expect(metrics.bn_discrepancy_imagenet).toBeLessThan(0.2);
    expect(metrics.bn_discrepancy_tf).toBeGreaterThan(0.5);
    for (const wrong of ['tf', 'unit']) expect(results[wrong].warnings[0]).toMatch(new RegExp(`^normalize: ${wrong} does not match .*\\(block_1_bn1\\).*likely trained with normalize: imagenet`));
  });

  it('finds the normalization whose statistics the BN holds, and warns for the others', { timeout: 60_000 }, async () => {
    // conv -> BN whose moving statistics are the conv outputs' on these very images under `tf`.
    const tfShards = await buildTinyShards(dir.root, { normalize: 'tf' });
    const input = tfl.input({ shape: [8, 8, 3] });
    const conv = tfl.layers.conv2d({ filters: 4, kernelSize: 3, useBias: false, kernelInitializer: tfl.initializers.glorotUniform({ seed: 4 }), name: 'conv' });
    const bn = tfl.layers.batchNormalization({ name: 'bn' });
    const model = tfl.model({ inputs: input, outputs: tfl.layers.reLU().apply(bn.apply(conv.apply(input))) as SymbolicTensor });
    const dataset = await openDataset(tfShards.shards.dir);
    let batch;
    for await (const b of dataset.batches('train', { batchSize: 1000 })) batch = b;
    const moments = tf.tidy(() => tf.moments(conv.apply(tf.tensor4d(batch!.x, batch!.shape)) as never, [0, 1, 2]));
    const [gamma, beta] = bn.getWeights();
    bn.setWeights([gamma, beta, moments.mean, moments.variance]);
    const stats = (await batchNormDiscrepancy(tf, model, dataset))!;
    expect(stats.layer).toBe('bn');
    expect(stats.discrepancy.tf).toBeLessThan(1e-3);
    expect(stats.discrepancy.unit).toBeGreaterThan(1);
    expect(stats.discrepancy.imagenet).toBeGreaterThan(1);

    const info = { base: { source: 'foreign/model.json', init: 'pretrained' as const }, lineage: ['load-base'] };
    const where = { modelStage: 'base', shardsStage: 'shards' };
    const fine = await checkPreprocessing(tf, model, info, dataset, where);
    expect(fine).toMatchObject({ method: 'bn_stats', warnings: [], metrics: { bn_best_normalize: 'tf' } });
    await dataset.close();
    for (const normalize of ['unit', 'imagenet'] as const) {
      const other = await openDataset((await buildTinyShards(dir.root, { normalize })).shards.dir);
      const result = await checkPreprocessing(tf, model, info, other, where);
      expect(result.warnings).toHaveLength(1);
      expect(result.warnings[0]).toMatch(new RegExp(`^normalize: ${normalize} does not match .*BatchNormalization \\(bn\\).*likely trained with normalize: tf: set it on 'shards'`));
      await other.close();
    }
  });
});
