import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NO_AUGMENT } from '../../../src/data/spec.js';
import { loadModel } from '../../../src/ml/io.js';
import { StageError } from '../../../src/runtime/errors.js';
import { compileStageValidator } from '../../../src/runtime/schema.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { exportStage, type ExportManifest } from '../../../src/stages/export.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { buildTinyShards, makeTinyModelArtifact, runStage, useTestBackend, type TinyShards } from './helpers.js';

let dir: TestDir;
let data: TinyShards;
let model: StageInput;

async function failure(promise: Promise<unknown>): Promise<StageError> {
  const error = await promise.then(() => null, (e: unknown) => e);
  expect(error).toBeInstanceOf(StageError);
  return error as StageError;
}

const json = async (file: string) => JSON.parse(await readFile(file, 'utf8'));

beforeAll(async () => {
  await useTestBackend();
  dir = testdir();
  data = await buildTinyShards(dir.root, { normalize: 'tf', augment: { flip: true, brightness: 0.2 } });
  model = await makeTinyModelArtifact(dir.root, { classes: data.classes, preprocess: data.spec, seed: 3 });
});
afterAll(() => dir.cleanup());

describe('export', () => {
  it('writes model.json, weights, labels, the preprocessing without augmentation, and export.json', async () => {
    const { result, ctx } = await runStage(exportStage, { root: dir.root, params: {}, inputs: [model] });
    expect((await readdir(ctx.outDir)).sort()).toEqual(['export.json', 'labels.json', 'model.json', 'preprocess.json', 'summary.json', 'weights.bin']);
    expect(await json(join(ctx.outDir, 'labels.json'))).toEqual(['sneaker', 't-shirt', 'trouser']);
    const spec = await json(join(ctx.outDir, 'preprocess.json'));
    expect(data.spec.augment.flip).toBe(true);
    expect(spec).toEqual({ ...data.spec, augment: NO_AUGMENT });
    expect(spec.normalize).toEqual({ name: 'tf', mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] });
    const manifest = (await json(join(ctx.outDir, 'export.json'))) as ExportManifest;
    expect(manifest).toMatchObject({
      format: 'finetune-export',
      version: 1,
      classes: data.classes,
      inputShape: [8, 8, 3],
      source: { stage: 'head', kind: 'train-head', key: 'head-key' },
      lineage: ['load-base', 'train-head', 'export'],
    });
    expect(Date.parse(manifest.created)).not.toBeNaN();
    expect(manifest.files.sort()).toEqual((await readdir(ctx.outDir)).sort());
    // 3x3x3x4 + 4 (conv) + 4x3 + 3 (dense)
    expect(result.metrics).toEqual({ classes: 3, params: 127, weightBytes: 127 * 4 });
    // Plain tfjs can load the folder; its weights are the model's.
    const loaded = await loadModel(join(ctx.outDir, 'model.json'));
    const original = await loadModel(join(model.dir, 'model.json'));
    expect(loaded.getWeights().map((w) => Array.from(w.dataSync()))).toEqual(original.getWeights().map((w) => Array.from(w.dataSync())));
    loaded.dispose();
    original.dispose();
  });

  it('copies into dir, and replaces a previous export there with nothing left over', async () => {
    const first = await runStage(exportStage, { root: dir.root, params: { dir: 'deploy/classifier' }, inputs: [model] });
    expect(first.result.metrics?.dir).toBe(join(dir.root, 'deploy/classifier'));
    const target = join(dir.root, 'deploy/classifier');
    expect((await readdir(target)).sort()).toEqual((await readdir(first.ctx.outDir)).sort());
    expect(await readFile(join(target, 'weights.bin'))).toEqual(await readFile(join(first.ctx.outDir, 'weights.bin')));
    await writeFile(join(target, 'stale.txt'), 'from an older export');
    const second = await runStage(exportStage, { root: dir.root, params: { dir: 'deploy/classifier' }, inputs: [model] });
    expect((await readdir(target)).sort()).toEqual((await readdir(second.ctx.outDir)).sort());
    expect(await readdir(join(dir.root, 'deploy'))).toEqual(['classifier']);
  });

  it('a cached export is checked out again to dir when the copy there is gone or different', async () => {
    const run = await runStage(exportStage, { root: dir.root, params: { dir: 'deploy/checkout' }, inputs: [model] });
    const target = join(dir.root, 'deploy/checkout');
    await writeFile(join(run.ctx.outDir, '_entry.json'), '{}'); // as the store seals an entry
    const { rm } = await import('node:fs/promises');
    await rm(target, { recursive: true });
    const log = (await import('pino')).default({ level: 'silent' });
    await exportStage.checkout!({ dir: run.ctx.outDir, baseDir: dir.root, log }, { dir: 'deploy/checkout' });
    expect((await readdir(target)).sort()).toEqual(['export.json', 'labels.json', 'model.json', 'preprocess.json', 'summary.json', 'weights.bin']);
    const before = (await readFile(join(target, 'export.json'), 'utf8'));
    await exportStage.checkout!({ dir: run.ctx.outDir, baseDir: dir.root, log }, { dir: 'deploy/checkout' });
    expect(await readFile(join(target, 'export.json'), 'utf8')).toBe(before);
  });

  it('exports into an existing empty folder', async () => {
    await mkdir(join(dir.root, 'empty'));
    await runStage(exportStage, { root: dir.root, params: { dir: 'empty' }, inputs: [model] });
    expect(await readdir(join(dir.root, 'empty'))).toContain('export.json');
  });

  it('refuses to replace a non-empty folder that is not an export, and a file', async () => {
    dir.write('precious/notes.txt', 'keep me');
    const error = await failure(runStage(exportStage, { root: dir.root, params: { dir: 'precious' }, inputs: [model] }));
    expect(error.code).toBe('export_dir_not_empty');
    expect(error.message).toContain('no export.json');
    expect(await readdir(join(dir.root, 'precious'))).toEqual(['notes.txt']);
    dir.write('a-file', 'x');
    expect((await failure(runStage(exportStage, { root: dir.root, params: { dir: 'a-file' }, inputs: [model] }))).code).toBe('export_dir_not_a_folder');
  });

  it('fails clearly for a model without a trained head', async () => {
    const base = await makeTinyModelArtifact(dir.root, { classes: data.classes, headless: true, lineage: ['load-base'] });
    const error = await failure(runStage(exportStage, { root: dir.root, params: {}, inputs: [base] }));
    expect(error.code).toBe('model_has_no_head');
    expect(error.message).toMatch(/no classes recorded; export a model after train-head/);
    const noSpec = await makeTinyModelArtifact(dir.root, { classes: data.classes });
    expect((await failure(runStage(exportStage, { root: dir.root, params: {}, inputs: [noSpec] }))).message).toMatch(/no preprocessing spec/);
  });

  it('schema: dir is optional and must be a non-empty string', () => {
    const validate = compileStageValidator(exportStage);
    expect(validate({})).toBe(true);
    expect(validate({ dir: 'out' })).toBe(true);
    expect(validate({ dir: '' })).toBe(false);
    expect(validate({ path: 'out' })).toBe(false);
  });
});
