/**
 * A real pretrained model: the Keras MobileNetV2 that the npm package nsfwjs ships as JS
 * modules, decoded to model.json + weights at test time (never committed), adapted by the
 * two-phase recipe to real Fashion-MNIST images. Reports head-only vs two-phase accuracy.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { decodeNsfwjsModel } from '../../scripts/decode-nsfwjs.js';
import { configureBackend, useTf } from '../../src/ml/backend.js';
import { runPipeline } from '../../src/runtime/run.js';
import { stages } from '../../src/stages/index.js';

const root = path.resolve(import.meta.dirname, '../..');
let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'mobilenet-'));
  decodeNsfwjsModel({ outDir: path.join(dir, 'mobilenet_v2') });
  configureBackend('wasm');
  await useTf();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('fine-tunes the top block of a real MobileNetV2 on real images', { timeout: 600_000 }, async () => {
  writeFileSync(
    path.join(dir, 'p.yaml'),
    `name: mobilenet-fashion
stages:
  data: { uses: ingest, with: { path: ${JSON.stringify(path.join(root, 'data/fashion-mnist'))} } }
  shards: { uses: preprocess, needs: [data], with: { size: [224, 224], fit: fill, normalize: unit } }
  base: { uses: load-base, with: { model: mobilenet_v2/model.json, cut: out_relu } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [shards, freeze], with: { epochs: 6, batch: 32, lr: 0.001, early_stopping: false } }
  unfreeze: { uses: unfreeze, needs: [head], with: { from: block_16_expand } }
  tune: { uses: fine-tune, needs: [shards, unfreeze], with: { epochs: 4, batch: 32, early_stopping: false } }
`,
  );
  const summary = await runPipeline({ file: path.join(dir, 'p.yaml'), registry: stages, artifacts: path.join(dir, 'artifacts') });
  const byId = Object.fromEntries(summary.stages.map((s) => [s.id, s]));
  expect(summary.status, JSON.stringify(summary.stages.map((s) => s.error).filter(Boolean))).toBe('succeeded');
  const head = byId.head.metrics;
  const tune = byId.tune.metrics;
  console.log(JSON.stringify({ base: byId.base.metrics, head: { val_acc: head.val_acc, val_loss: head.val_loss, seconds: byId.head.seconds, frozen_engine: head.frozen_engine, frozen_forwards: head.frozen_forwards, frozen_img_s: head.frozen_img_s, frontier: head.frontier }, tune: { val_acc: tune.val_acc, val_loss: tune.val_loss, seconds: byId.tune.seconds, seconds_per_epoch: tune.seconds_per_epoch, features: tune.features, trainable_params: tune.trainable_params } }));
  expect(byId.base.metrics.output_shape).toEqual([null, 7, 7, 1280]);
  expect(head.val_acc as number).toBeGreaterThan(0.7);
  // The fine-tuned model must not be worse than the head alone on the same validation split.
  expect(tune.val_acc as number).toBeGreaterThanOrEqual(head.val_acc as number);
  expect(tune.val_loss as number).toBeLessThanOrEqual((head.val_loss as number) + 1e-6);
});
