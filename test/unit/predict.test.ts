import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tensor } from '@tensorflow/tfjs-core';
import { main } from '../../src/cli.js';
import { readDatasetEntries, readDatasetHeader } from '../../src/data/dataset.js';
import { openDataset } from '../../src/data/shards.js';
import { readModelArtifact } from '../../src/ml/artifact.js';
import { configureBackend, describeBackend, type Tf } from '../../src/ml/backend.js';
import { predictImages } from '../../src/predict.js';
import { StageError } from '../../src/runtime/errors.js';
import { exportStage } from '../../src/stages/export.js';
import { stages } from '../../src/stages/index.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { buildTinyShards, makeTinyModelArtifact, runStage, useTestBackend, type TinyShards } from './stages/helpers.js';

let tf: Tf;
let dir: TestDir;
let data: TinyShards;
let exported: string;
let modelDir: string;
/** Absolute paths of the val images, in record order. */
let valImages: string[];

async function failure(promise: Promise<unknown>): Promise<StageError> {
  const error = await promise.then(() => null, (e: unknown) => e);
  expect(error).toBeInstanceOf(StageError);
  return error as StageError;
}

beforeAll(async () => {
  ({ tf } = await useTestBackend());
  dir = testdir();
  // Non-default decoding and normalization, and augmentation on: predict must apply exactly the
  // training spec (a non-square size letterboxed by `contain`, tf normalization) and must not augment.
  data = await buildTinyShards(dir.root, { size: [8, 6], fit: 'contain', normalize: 'tf', augment: { flip: true, brightness: 0.5 } });
  const model = await makeTinyModelArtifact(dir.root, { classes: data.classes, preprocess: data.spec, inputShape: [8, 6, 3], seed: 11, train: { shards: data.shards, epochs: 5 } });
  modelDir = model.dir;
  const { ctx } = await runStage(exportStage, { root: dir.root, params: {}, inputs: [model] });
  exported = ctx.outDir;
  const header = await readDatasetHeader(data.dataset.dir);
  valImages = [];
  for await (const entry of readDatasetEntries(data.dataset.dir, header)) if (entry.split === 'val') valImages.push(join(header.root, entry.path));
});
afterAll(() => dir.cleanup());

describe('predictImages', () => {
  it('gives the probabilities model.predict gives on the training shards for the same images', async () => {
    const dataset = await openDataset(data.shards.dir);
    const { model } = await readModelArtifact(modelDir);
    const expected: number[][] = [];
    for await (const batch of dataset.batches('val', { batchSize: 64 })) {
      const p = tf.tidy(() => (model.predict(tf.tensor4d(batch.x, batch.shape)) as Tensor).dataSync());
      for (let i = 0; i < batch.count; i++) expected.push(Array.from(p.subarray(i * 3, i * 3 + 3)));
    }
    model.dispose();
    await dataset.close();
    expect(expected).toHaveLength(6);

    const predictions = await predictImages(exported, valImages, { top: 3, batch: 4 });
    expect(predictions.map((p) => p.image)).toEqual(valImages);
    predictions.forEach((prediction, i) => {
      const byLabel = Object.fromEntries(prediction.top.map((t) => [t.label, t.probability]));
      data.classes.forEach((label, c) => expect(Math.abs(byLabel[label] - expected[i][c])).toBeLessThan(1e-4));
    });
    // The check has teeth: the trained model's outputs differ between images.
    expect(new Set(expected.map((row) => row[0].toFixed(4))).size).toBeGreaterThan(1);
  });

  it('returns the top classes sorted, capped at the class count', async () => {
    const [one] = await predictImages(exported, [valImages[0]], { top: 1 });
    expect(one.top).toHaveLength(1);
    const [all] = await predictImages(exported, [valImages[0]], { top: 10 });
    expect(all.top).toHaveLength(3);
    expect(all.top[0]).toEqual(one.top[0]);
    expect(all.top.map((t) => t.probability)).toEqual([...all.top.map((t) => t.probability)].sort((a, b) => b - a));
    expect(all.top.reduce((sum, t) => sum + t.probability, 0)).toBeCloseTo(1, 5);
  });

  it('names the file that is not an image, or missing', async () => {
    const text = dir.write('notes.png', 'this is not a PNG');
    const error = await failure(predictImages(exported, [valImages[0], text], { top: 1 }));
    expect(error.code).toBe('image_unreadable');
    expect(error.details.file).toBe(text);
    expect(error.message).toContain(`cannot read image ${text}`);
    const missing = await failure(predictImages(exported, [join(dir.root, 'nope.png')], { top: 1 }));
    expect(missing.message).toMatch(/nope\.png: no such file/);
  });

  it('refuses a missing or incomplete export folder', async () => {
    const none = await failure(predictImages(join(dir.root, 'no-such-export'), valImages, { top: 1 }));
    expect(none.code).toBe('export_invalid');
    expect(none.message).toMatch(/it does not exist/);
    // A model artifact is not an export: it has no labels.json.
    const artifact = await failure(predictImages(modelDir, valImages, { top: 1 }));
    expect(artifact.code).toBe('export_invalid');
    expect(artifact.message).toMatch(/it has no labels\.json/);
    dir.write('bad-export/labels.json', '["a","b","c"]');
    dir.write('bad-export/preprocess.json', '{"size":[8,8]}');
    expect((await failure(predictImages(dir.path('bad-export'), valImages, { top: 1 }))).message).toMatch(/preprocess\.json is not a complete preprocessing spec/);
    await expect(predictImages(exported, valImages, { top: 0 })).rejects.toThrow(/top must be a positive integer/);
  });
});

describe('pipeline predict (in process)', () => {
  function cli(args: string[]) {
    const out: string[] = [];
    const err: string[] = [];
    const io = {
      registry: stages,
      stdout: (t: string) => void out.push(t),
      stderr: (t: string) => void err.push(t),
      env: {},
      isTTY: false,
      backend: { configure: (name: string) => configureBackend(name as 'wasm'), describe: () => describeBackend()?.name ?? 'none' },
    };
    return main(args, io).then((code) => ({ code, stdout: out.join(''), stderr: err.join('') }));
  }

  it('prints image<TAB>label probability, and JSON with the backend', async () => {
    const human = await cli(['predict', exported, valImages[0], valImages[1], '--top', '2', '--backend', 'wasm']);
    expect(human.code).toBe(0);
    const lines = human.stdout.trim().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(new RegExp(`^${valImages[0].replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\t(sneaker|t-shirt|trouser) [01]\\.\\d{4}$`));
    const asJson = await cli(['predict', exported, valImages[0], '--json', '--backend', 'wasm']);
    expect(asJson.code).toBe(0);
    const parsed = JSON.parse(asJson.stdout);
    expect(parsed.backend).toBe('wasm');
    expect(parsed.predictions).toEqual(await predictImages(exported, [valImages[0]], { top: 1 }));
  });

  it('exits 2 on bad usage and 1 on a bad image, without a stack', async () => {
    expect((await cli(['predict', exported])).code).toBe(2);
    expect((await cli(['predict', exported, valImages[0], '--top', 'x'])).code).toBe(2);
    const bad = await cli(['predict', exported, dir.write('bad.jpg', 'nope'), '--backend', 'wasm', '--json']);
    expect(bad.code).toBe(1);
    // One bad image is a failure of that image, not of the command: the JSON still lists the predictions.
    expect(JSON.parse(bad.stdout)).toMatchObject({ predictions: [], failures: [{ code: 'image_unreadable' }] });
    expect(bad.stderr).toMatch(/cannot read image .*bad\.jpg.*\[image_unreadable\]/);
    expect(bad.stderr).not.toMatch(/\n\s+at /);
    await rm(join(dir.root, 'bad.jpg'));
  });
});
