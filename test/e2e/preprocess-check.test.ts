/**
 * The foreign-base preprocessing check on a real pretrained model: nsfwjs's Keras MobileNetV2
 * (decoded at test time, never committed) at 96x96 on the Fashion-MNIST fixture. Its first
 * BatchNormalization (bn_Conv1) holds the statistics of [0, 1] inputs — nsfwjs feeds pixels / 255,
 * unlike stock Keras MobileNetV2 ([-1, 1], `tf`) — so `unit` has the smallest discrepancy and
 * `tf` and `imagenet` warn, naming `unit`. Through the runtime, the warning reaches the summary.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { decodeNsfwjsModel } from '../../scripts/decode-nsfwjs.js';
import { openDataset } from '../../src/data/shards.js';
import { loadBaseModel } from '../../src/ml/base-model.js';
import { disposeModels } from '../../src/ml/artifact.js';
import { checkPreprocessing } from '../../src/ml/preprocess-check.js';
import { runPipeline } from '../../src/runtime/run.js';
import { stages } from '../../src/stages/index.js';
import { buildTinyShards, FASHION, useTestBackend } from '../unit/stages/helpers.js';
import type { Tf } from '../../src/ml/backend.js';

let dir: string;
let tf: Tf;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'preprocess-check-'));
  decodeNsfwjsModel({ outDir: path.join(dir, 'mobilenet_v2') });
  ({ tf } = await useTestBackend());
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('names unit for nsfwjs MobileNetV2 and warns under tf and imagenet', { timeout: 300_000 }, async () => {
  const base = await loadBaseModel({ model: 'mobilenet_v2/model.json', cut: 'out_relu', input_shape: [96, 96, 3] }, { baseDir: dir, seed: 1 });
  const info = { base: { source: 'mobilenet_v2/model.json', init: 'pretrained' as const, inputShape: [96, 96, 3] }, lineage: ['load-base'] };
  const found: Record<string, { warnings: string[]; metrics: Record<string, unknown> }> = {};
  try {
    for (const normalize of ['unit', 'tf', 'imagenet'] as const) {
      const shards = await buildTinyShards(dir, { size: [96, 96], normalize, fit: 'fill' });
      const dataset = await openDataset(shards.shards.dir);
      found[normalize] = await checkPreprocessing(tf, base.model, info, dataset, { modelStage: 'base', shardsStage: 'shards' });
      await dataset.close();
    }
  } finally {
    disposeModels(...base.made);
  }
  console.log(JSON.stringify(Object.fromEntries(Object.entries(found).map(([k, v]) => [k, v.metrics]))));
  const discrepancy = found.unit.metrics as Record<string, number>;
  expect(found.unit.metrics.bn_layer).toBe('bn_Conv1');
  expect(found.unit.metrics.bn_best_normalize).toBe('unit');
  expect(discrepancy.bn_discrepancy_unit).toBeLessThan(discrepancy.bn_discrepancy_tf);
  expect(discrepancy.bn_discrepancy_unit).toBeLessThan(discrepancy.bn_discrepancy_imagenet);
  expect(found.unit.warnings).toEqual([]);
  for (const wrong of ['tf', 'imagenet']) {
    expect(found[wrong].warnings).toHaveLength(1);
    expect(found[wrong].warnings[0]).toMatch(new RegExp(`^normalize: ${wrong} does not match what the base's first BatchNormalization \\(bn_Conv1\\).*likely trained with normalize: unit`));
  }

  // Through the runtime: train-head's warning is in the summary.
  writeFileSync(
    path.join(dir, 'p.yaml'),
    `name: check-mobilenet
stages:
  data: { uses: ingest, with: { path: ${JSON.stringify(FASHION)}, split: { val: 0.25 } } }
  shards: { uses: preprocess, needs: [data], with: { size: [96, 96], fit: fill, normalize: tf } }
  base: { uses: load-base, with: { model: mobilenet_v2/model.json, cut: out_relu, input_shape: [96, 96, 3] } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 1, batch: 18 } }
`,
  );
  const summary = await runPipeline({ file: path.join(dir, 'p.yaml'), registry: stages, artifacts: path.join(dir, 'artifacts') });
  expect(summary.status).toBe('succeeded');
  expect(summary.warnings).toEqual([{ stage: 'head', message: expect.stringMatching(/^normalize: tf does not match .*normalize: unit: set it on 'shards'/) }]);
});
