import { copyFile, cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readDatasetEntries, readDatasetHeader, type DatasetEntry } from '../../../src/data/dataset.js';
import { assignSplits } from '../../../src/data/layout.js';
import { ingest, type IngestParams, type IngestReport } from '../../../src/stages/ingest.js';
import { BAD, copyFashion, ingestParams, runStage, testdir } from './ctx.js';

let dir: { path: string; remove(): Promise<void> };
beforeEach(async () => (dir = await testdir()));
afterEach(async () => dir.remove());

const run = (params: Record<string, unknown>, seed = 42) => runStage(ingest, { root: dir.path, params: ingestParams(params) as IngestParams, seed });
const entriesOf = async (out: string) => {
  const entries: DatasetEntry[] = [];
  for await (const entry of readDatasetEntries(out)) entries.push(entry);
  return entries;
};
const reportOf = async (out: string) => JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as IngestReport;

describe('ingest: class folders', () => {
  it('reads real images, sorts classes, splits stratified and seeded', async () => {
    await copyFashion(join(dir.path, 'images'));
    const { result, ctx } = await run({ path: 'images' });
    const header = await readDatasetHeader(ctx.outDir);
    expect(header.classes).toEqual(['sneaker', 't-shirt', 'trouser']);
    expect(header.root).toBe(join(dir.path, 'images'));
    expect(header.splitSource).toBe('seeded');
    // 8 per class, val 0.2 → round(1.6) = 2 per class
    expect(header.classCounts.val).toEqual([2, 2, 2]);
    expect(header.classCounts.train).toEqual([6, 6, 6]);
    expect(result.metrics).toMatchObject({ images: 24, classes: 3, train: 18, val: 6, test: 0, skipped: 0 });
    const entries = await entriesOf(ctx.outDir);
    expect(entries).toHaveLength(24);
    const first = entries[0];
    expect(first.path).toMatch(/^sneaker\/train-\d+\.png$/);
    expect(first.label).toBe(0);
    expect(first.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(first.size).toBeGreaterThan(100);
    expect(ctx.progressEvents.at(-1)).toMatchObject({ unit: 'inspect', done: 24, total: 24, phase: 'end' });
  });

  it('is byte-identical for the same inputs and seed; the seed changes the split', async () => {
    await copyFashion(join(dir.path, 'images'));
    const a = await run({ path: 'images', split: { val: 0.25, test: 0.25 } });
    const b = await run({ path: 'images', split: { val: 0.25, test: 0.25 } });
    for (const file of ['dataset.json', 'files.jsonl', 'report.json']) {
      expect(await readFile(join(b.ctx.outDir, file), 'utf8')).toBe(await readFile(join(a.ctx.outDir, file), 'utf8'));
    }
    const c = await run({ path: 'images', split: { val: 0.25, test: 0.25 } }, 7);
    const splits = async (out: string) => (await entriesOf(out)).map((entry) => entry.split).join();
    expect(await splits(c.ctx.outDir)).not.toBe(await splits(a.ctx.outDir));
    expect((await readDatasetHeader(c.ctx.outDir)).classCounts.test).toEqual([2, 2, 2]);
  });

  it('adding one image moves at most one other file between splits', () => {
    const items = Array.from({ length: 40 }, (_, i) => ({ path: `c/${i}.png`, className: 'c' }));
    const before = new Map(assignSplits(items, { val: 0.2, test: 0 }, 1).map((item) => [item.path, item.split]));
    const after = assignSplits([...items, { path: 'c/new.png', className: 'c' }], { val: 0.2, test: 0 }, 1);
    const moved = after.filter((item) => before.has(item.path) && before.get(item.path) !== item.split);
    expect(moved.length).toBeLessThanOrEqual(1);
  });

  it('skips bad files with a report, ignores hidden files and dot-folders', async () => {
    const root = join(dir.path, 'images');
    await copyFashion(root);
    await copyFile(join(BAD, 'truncated.png'), join(root, 'trouser', 'truncated.png'));
    await copyFile(join(BAD, 'not-an-image.jpg'), join(root, 'sneaker', 'not-an-image.jpg'));
    await copyFile(join(BAD, '.hidden.png'), join(root, 't-shirt', '.hidden.png'));
    await mkdir(join(root, '.cache'));
    await copyFile(join(BAD, '.hidden.png'), join(root, '.cache', 'x.png'));
    await writeFile(join(root, 'trouser', 'notes.txt'), 'hello');
    await writeFile(join(root, 'README.md'), 'stray');
    const noise = Buffer.from(Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 7919) % 251));
    const jpeg = await sharp(noise, { raw: { width: 64, height: 64, channels: 3 } }).jpeg().toBuffer();
    await writeFile(join(root, 'sneaker', 'cut.jpg'), jpeg.subarray(0, Math.floor(jpeg.length * 0.6)));
    await writeFile(join(root, 'sneaker', 'empty.png'), '');
    const { result, ctx } = await run({ path: 'images' });
    expect(result.metrics).toMatchObject({ images: 24, skipped: 4, ignored: 4 });
    const report = await reportOf(ctx.outDir);
    expect(report.skipped.map((s) => s.path).sort()).toEqual(['sneaker/cut.jpg', 'sneaker/empty.png', 'sneaker/not-an-image.jpg', 'trouser/truncated.png']);
    // libvips names the cause, also when several decodes fail at once (which used to give 'Unknown error').
    expect(report.skipped.find((s) => s.path === 'sneaker/cut.jpg')!.reason).toMatch(/premature end/i);
    expect(report.skipped.every((s) => !/unknown error/i.test(s.reason))).toBe(true);
    // The stage's metrics (and so its run line) point at the list.
    expect(result.metrics.report).toBe('report.json');
    expect(report.skipped.find((s) => s.path === 'sneaker/not-an-image.jpg')!.reason).toMatch(/unsupported image format/);
    expect(report.ignored).toEqual(expect.arrayContaining([
      { path: '.cache', reason: 'hidden' },
      { path: 't-shirt/.hidden.png', reason: 'hidden' },
      { path: 'trouser/notes.txt', reason: 'unsupported_extension' },
      { path: 'README.md', reason: 'outside_class_folder' },
    ]));
    expect((await entriesOf(ctx.outDir)).some((entry) => entry.path.includes('truncated'))).toBe(false);
    expect(ctx.logs.some((entry) => entry.msg === 'skipped bad image')).toBe(true);
  });

  it('strict: true fails on a bad file, naming it', async () => {
    const root = join(dir.path, 'images');
    await copyFashion(root);
    await copyFile(join(BAD, 'truncated.png'), join(root, 'trouser', 'truncated.png'));
    await expect(run({ path: 'images', strict: true })).rejects.toMatchObject({
      code: 'bad_images',
      message: expect.stringContaining('trouser/truncated.png'),
      details: { files: [{ path: 'trouser/truncated.png', reason: expect.any(String) }] },
    });
  });

  it('accepts CMYK, alpha and EXIF-rotated JPEGs made at test time', async () => {
    const root = join(dir.path, 'images');
    await copyFashion(root);
    await mkdir(join(root, 'odd'));
    const base = sharp({ create: { width: 30, height: 20, channels: 3, background: { r: 10, g: 120, b: 200 } } });
    await base.clone().toColourspace('cmyk').jpeg().toFile(join(root, 'odd', 'cmyk.jpg'));
    await sharp({ create: { width: 20, height: 20, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0.5 } } }).png().toFile(join(root, 'odd', 'alpha.png'));
    await base.clone().jpeg().withMetadata({ orientation: 6 }).toFile(join(root, 'odd', 'rotated.JPG'));
    const { result } = await run({ path: 'images' });
    expect(result.metrics).toMatchObject({ images: 27, classes: 4, skipped: 0 });
  });

  it('reports empty classes and fails on a missing path, naming it', async () => {
    const root = join(dir.path, 'images');
    await copyFashion(root);
    await mkdir(join(root, 'empty'));
    await copyFile(join(BAD, 'truncated.png'), join(root, 'empty', 'only-bad.png'));
    const { result, ctx } = await run({ path: 'images' });
    expect((await reportOf(ctx.outDir)).emptyClasses).toEqual(['empty']);
    expect(result.metrics).toMatchObject({ classes: 3, emptyClasses: 1 });
    await expect(run({ path: 'nope' })).rejects.toMatchObject({ code: 'path_not_found', message: expect.stringContaining(join(dir.path, 'nope')) });
  });
});

describe('ingest: split folders', () => {
  it('uses train/val folders and reports missing classes and duplicates across splits', async () => {
    await copyFashion(join(dir.path, 'ds', 'train'));
    await mkdir(join(dir.path, 'ds', 'val', 'trouser'), { recursive: true });
    await mkdir(join(dir.path, 'ds', 'val', 'sneaker'), { recursive: true });
    await cp(join(dir.path, 'ds', 'train', 'trouser'), join(dir.path, 'ds', 'val', 'trouser'), { recursive: true });
    await rm(join(dir.path, 'ds', 'train', 'trouser'), { recursive: true });
    await mkdir(join(dir.path, 'ds', 'train', 'trouser'));
    await copyFile(join(dir.path, 'ds', 'val', 'trouser', (await import('node:fs')).readdirSync(join(dir.path, 'ds', 'val', 'trouser'))[0]), join(dir.path, 'ds', 'train', 'trouser', 'copy.png'));
    const { result, ctx } = await run({ path: 'ds' });
    const header = await readDatasetHeader(ctx.outDir);
    expect(header.splitSource).toBe('folders');
    expect(header.counts).toEqual({ train: 17, val: 8, test: 0 });
    const report = await reportOf(ctx.outDir);
    expect(report.missingFromSplit).toEqual(expect.arrayContaining([{ className: 't-shirt', split: 'val' }]));
    expect(report.emptyClasses).toEqual([]);
    expect(report.duplicates).toHaveLength(1);
    expect(report.duplicates[0]).toMatchObject({ acrossSplits: true, conflictingLabels: false });
    expect(result.metrics).toMatchObject({ duplicatesAcrossSplits: 1 });
  });

  it('carves val out of train/ when there is no val/ folder', async () => {
    await copyFashion(join(dir.path, 'ds', 'train'));
    const { ctx } = await run({ path: 'ds' });
    const header = await readDatasetHeader(ctx.outDir);
    expect(header.splitSource).toBe('mixed');
    expect(header.counts).toEqual({ train: 18, val: 6, test: 0 });
  });
});

describe('ingest: split-like folder names', () => {
  it('reads a Keras-style train/ + validation/ folder as the train and val splits, not as two classes', async () => {
    await copyFashion(join(dir.path, 'ds', 'train'));
    await copyFashion(join(dir.path, 'ds', 'validation'));
    const { result, ctx } = await run({ path: 'ds' });
    const header = await readDatasetHeader(ctx.outDir);
    expect(header.classes).toEqual(['sneaker', 't-shirt', 'trouser']);
    expect(header.splitSource).toBe('folders');
    expect(header.counts).toEqual({ train: 24, val: 24, test: 0 });
    expect(result.metrics).toMatchObject({ classes: 3, val: 24 });
    expect((await entriesOf(ctx.outDir)).find((e) => e.split === 'val')!.path).toMatch(/^validation\//);
    expect((await reportOf(ctx.outDir)).notes).toContain('validation/ is read as the val split');
  });

  it.each([['valid'], ['eval'], ['Val']])('reads %s/ as val', async (name) => {
    await copyFashion(join(dir.path, 'ds', 'train'));
    await copyFashion(join(dir.path, 'ds', name));
    const header = await readDatasetHeader((await run({ path: 'ds' })).ctx.outDir);
    expect(header.counts.val).toBe(24);
  });

  it('refuses split folders next to other folders, two folders for one split, and splits without train/', async () => {
    await copyFashion(join(dir.path, 'mixed', 'train'));
    await copyFashion(join(dir.path, 'mixed', 'cats'));
    await expect(run({ path: 'mixed' })).rejects.toMatchObject({ code: 'ambiguous_layout', message: expect.stringMatching(/split folders \(train\/\) next to other folders \(cats\/\)/) });
    await copyFashion(join(dir.path, 'twice', 'train'));
    await copyFashion(join(dir.path, 'twice', 'val'));
    await copyFashion(join(dir.path, 'twice', 'validation'));
    await expect(run({ path: 'twice' })).rejects.toMatchObject({ code: 'ambiguous_layout', message: expect.stringContaining('both val/ and validation/') });
    await copyFashion(join(dir.path, 'notrain', 'validation'));
    await copyFashion(join(dir.path, 'notrain', 'test'));
    await expect(run({ path: 'notrain' })).rejects.toMatchObject({ code: 'ambiguous_layout', message: expect.stringContaining('no train/ folder') });
  });
});

describe('ingest: manifests', () => {
  it('reads a CSV with header, quoting and a split column, and a JSONL without splits', async () => {
    await copyFashion(join(dir.path, 'images'));
    const fs = await import('node:fs');
    const files = ['sneaker', 't-shirt', 'trouser'].flatMap((c) => fs.readdirSync(join(dir.path, 'images', c)).map((f) => `${c}/${f}`));
    const csv = ['file,label,split', ...files.map((f, i) => `"images/${f}",${f.split('/')[0] === 't-shirt' ? '"shirt, tee"' : f.split('/')[0]},${i % 4 === 0 ? 'val' : 'train'}`)];
    await writeFile(join(dir.path, 'labels.csv'), csv.join('\n') + '\n');
    const { result, ctx } = await run({ manifest: 'labels.csv' });
    const header = await readDatasetHeader(ctx.outDir);
    expect(header.classes).toEqual(['shirt, tee', 'sneaker', 'trouser']);
    expect(header.splitSource).toBe('manifest');
    expect(result.metrics).toMatchObject({ images: 24, val: 6, train: 18 });
    expect((await entriesOf(ctx.outDir))[0].path).toMatch(/^images\//);
    expect(ingest.externalInputs!({ manifest: 'labels.csv' } as IngestParams, dir.path)).toEqual([dir.path]);

    await mkdir(join(dir.path, 'meta'));
    await writeFile(join(dir.path, 'meta', 'labels.jsonl'), files.map((f) => JSON.stringify({ file: `../images/${f}`, label: f.split('/')[0] })).join('\n'));
    const jsonl = await run({ manifest: 'meta/labels.jsonl' });
    expect(jsonl.result.metrics).toMatchObject({ images: 24, val: 6 });
    expect(ingest.externalInputs!({ manifest: 'meta/labels.jsonl' } as IngestParams, dir.path)).toEqual([dir.path]);
  });

  it('rejects a malformed manifest with its line', async () => {
    await writeFile(join(dir.path, 'bad.csv'), 'a.png,cat\nb.png\n');
    await expect(run({ manifest: 'bad.csv' })).rejects.toMatchObject({ code: 'manifest_invalid', message: expect.stringContaining('bad.csv:2') });
  });

  it('check() wants exactly one of path and manifest, and room to train', () => {
    expect(ingest.check!(ingestParams({}) as IngestParams)).toHaveLength(1);
    expect(ingest.check!(ingestParams({ path: 'a', manifest: 'b' }) as IngestParams)).toHaveLength(1);
    expect(ingest.check!(ingestParams({ path: 'a', split: { val: 0.6, test: 0.4 } }) as IngestParams)).toEqual([expect.objectContaining({ path: 'split' })]);
    expect(ingest.check!(ingestParams({ path: 'a' }) as IngestParams)).toEqual([]);
    expect(ingest.externalInputs!({ path: 'data/x' } as IngestParams, '/base')).toEqual(['/base/data/x']);
  });
});
