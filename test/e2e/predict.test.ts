/**
 * `pipeline predict` as a user runs it: the built CLI (dist/, from `npx tsc -p .`) as a child
 * process, on an export folder made in-process by the real export stage.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readDatasetEntries, readDatasetHeader } from '../../src/data/dataset.js';
import { predictImages } from '../../src/predict.js';
import { exportStage } from '../../src/stages/export.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { buildTinyShards, makeTinyModelArtifact, runStage, useTestBackend } from '../unit/stages/helpers.js';

const bin = path.resolve(import.meta.dirname, '../../bin/pipeline.js');
const built = path.resolve(import.meta.dirname, '../../dist/src/predict.js');
let dir: TestDir;
let exported: string;
let images: string[];

function cli(args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { cwd: dir.root, encoding: 'utf8', env: { ...process.env, CI: 'true' } });
}

beforeAll(async () => {
  if (!existsSync(built)) throw new Error('dist/ has no predict.js: run `npx tsc -p .` before the e2e tests');
  await useTestBackend();
  dir = testdir();
  const data = await buildTinyShards(dir.root);
  const model = await makeTinyModelArtifact(dir.root, { classes: data.classes, preprocess: data.spec, seed: 5 });
  await runStage(exportStage, { root: dir.root, params: { dir: 'classifier' }, inputs: [model] });
  exported = dir.path('classifier');
  const header = await readDatasetHeader(data.dataset.dir);
  images = [];
  for await (const entry of readDatasetEntries(data.dataset.dir, header)) if (entry.split === 'val') images.push(path.join(header.root, entry.path));
});
afterAll(() => dir?.cleanup());

describe('pipeline predict', () => {
  it('--json prints one object with the backend and the same predictions as predictImages', async () => {
    const result = cli(['predict', 'classifier', images[0], images[3], '--json', '--top', '2']);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const output = JSON.parse(result.stdout);
    expect(['node-gpu', 'node', 'wasm', 'cpu']).toContain(output.backend);
    expect(output.predictions.map((p: { image: string }) => p.image)).toEqual([images[0], images[3]]);
    const expected = await predictImages(exported, [images[0], images[3]], { top: 2 });
    output.predictions.forEach((prediction: (typeof expected)[number], i: number) => {
      expect(prediction.top.map((t) => t.label)).toEqual(expected[i].top.map((t) => t.label));
      prediction.top.forEach((t, k) => expect(t.probability).toBeCloseTo(expected[i].top[k].probability, 4));
    });
  });

  it('prints image<TAB>label probability for humans', () => {
    const result = cli(['predict', exported, images[1]]);
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/^\S+\.png\t(sneaker|t-shirt|trouser) (0|1)\.\d{4}\n$/);
  });

  it('a bad image does not stop the batch: the good ones are predicted, each bad one reported, exit 1', () => {
    dir.write('broken.png', 'not an image either');
    const result = cli(['predict', exported, images[0], 'broken.png', 'missing.png', images[1]]);
    expect(result.status).toBe(1);
    const lines = result.stdout.trim().split('\n');
    expect(lines.map((line) => line.split('\t')[0])).toEqual([images[0], images[1]]);
    expect(result.stderr).toMatch(/cannot read image broken\.png: .*\[image_unreadable\]/);
    expect(result.stderr).toMatch(/cannot read image missing\.png: no such file \[image_unreadable\]/);
    expect(result.stderr).toContain('2 of 4 images could not be predicted');
    const json = cli(['predict', exported, images[0], 'broken.png', '--json']);
    expect(json.status).toBe(1);
    const output = JSON.parse(json.stdout);
    expect(output.predictions.map((p: { image: string }) => p.image)).toEqual([images[0]]);
    expect(output.failures).toEqual([{ image: 'broken.png', code: 'image_unreadable', message: expect.stringContaining('cannot read image broken.png') }]);
  });

  it('takes a folder of images and the export given as its model.json', () => {
    const folder = path.dirname(images[0]);
    const result = cli(['predict', path.join(exported, 'model.json'), folder, '--json']);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const predicted = JSON.parse(result.stdout).predictions.map((p: { image: string }) => p.image);
    expect(predicted.length).toBeGreaterThan(0);
    expect(predicted.every((image: string) => image.startsWith(folder + path.sep) && image.endsWith('.png'))).toBe(true);
    expect(predicted).toContain(images[0]);
    expect([...predicted].sort()).toEqual(predicted);
    const empty = dir.path('empty-folder');
    dir.write('empty-folder/notes.txt', 'no images here');
    const none = cli(['predict', exported, empty]);
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(/no image files .*\[no_images\]/);
  });

  it('exits 1 with the file named for a non-image, 2 for bad usage', () => {
    dir.write('readme.png', 'not an image');
    const bad = cli(['predict', exported, 'readme.png']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/cannot read image readme\.png: .*\[image_unreadable\]/);
    expect(bad.stderr).not.toMatch(/\n\s+at /);
    const usage = cli(['predict', exported]);
    expect(usage.status).toBe(2);
    expect(usage.stderr).toMatch(/predict takes an export folder and at least one image/);
  });
});
