/**
 * `ingest`: turns a folder of images (or a label manifest) into a `dataset` artifact: every
 * image fully decoded once to prove it is readable, hashed, labelled and assigned a split.
 * Nothing is silently dropped: skipped and ignored files are listed in `report.json`.
 */
import { readFileSync, statSync, type Stats } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { writeFile } from 'node:fs/promises';
import paramsSchema from '../../schemas/stages/ingest.schema.json' with { type: 'json' };
import { AbortedError, StageError } from '../runtime/errors.js';
import type { StageContext, StageDefinition } from '../runtime/types.js';
import { REPORT_FILE, SPLITS, writeDataset, type DatasetEntry, type SplitName, type SplitSource } from '../data/dataset.js';
import { inspectImageFile } from '../data/image.js';
import { assignSplits, compare, parseManifestRows, refusedDataPath, specialFileKind, readLabelManifest, scanFolders, type Candidate, type IgnoredPath, type ScanResult } from '../data/layout.js';

/** `with:` of an `ingest` stage (see schemas/stages/ingest.schema.json). */
export interface IngestParams {
  /** Folder of class folders, or with `train/`, `val/`, `test/` inside. Relative to the pipeline file. */
  path?: string;
  /** CSV/JSONL manifest (`file,label[,split]`), instead of `path`. */
  manifest?: string;
  /** Held-out fractions per class when the data does not say. Default `{ val: 0.2, test: 0 }`. */
  split: { val: number; test: number };
  /** Fail on a bad image instead of skipping it. Default false. */
  strict: boolean;
  /** Extensions considered images. Default `['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif']`. */
  extensions: string[];
}

/** `report.json`: everything about the data a user should look at. */
export interface IngestReport {
  /** Files that looked like images but failed to decode, with the decoder's reason. */
  skipped: { path: string; reason: string }[];
  /** Hidden files and dot-folders, other extensions, files outside class folders. */
  ignored: IgnoredPath[];
  /** Class folders with no usable image; they get no label. */
  emptyClasses: string[];
  /** Classes with images in some split but none in another split that has images. */
  missingFromSplit: { className: string; split: SplitName }[];
  /** Groups of files with identical content. */
  duplicates: { sha256: string; paths: string[]; acrossSplits: boolean; conflictingLabels: boolean }[];
  /** Other remarks (e.g. val carved out of `train/`). */
  notes: string[];
}

export const ingest: StageDefinition<IngestParams> = {
  kind: 'ingest',
  version: 1,
  description: 'Read class folders or a label manifest; verify, hash, label and split every image',
  paramsSchema,
  consumes: [],
  provides: ['dataset'],
  resource: 'io',

  externalInputs(params, baseDir) {
    if (params.path !== undefined) return [resolve(baseDir, params.path)];
    if (params.manifest === undefined) return [];
    return [manifestScope(resolve(baseDir, params.manifest))];
  },

  check(params) {
    const issues: { path: string; message: string }[] = [];
    if ((params.path === undefined) === (params.manifest === undefined)) {
      issues.push({ path: params.path === undefined ? 'path' : 'manifest', message: 'give exactly one of path (image folders) or manifest (CSV/JSONL)' });
    }
    const split = params.split;
    if ((split.val ?? 0) + (split.test ?? 0) >= 1) {
      issues.push({ path: 'split', message: `split.val + split.test must be below 1 (is ${(split.val ?? 0) + (split.test ?? 0)}); something must be left to train on` });
    }
    return issues;
  },

  canonicalParams(params, baseDir) {
    // Keyed by the folder it names, not by how it is written: `./data/`, `data` and an absolute
    // path to the same place are one key. Kept relative to the pipeline file, so a project moved
    // with its store still hits its cache.
    const canonical = (written: string) => relative(baseDir, resolve(baseDir, written)).split(sep).join('/') || '.';
    return {
      ...params,
      ...(params.path !== undefined ? { path: canonical(params.path) } : {}),
      ...(params.manifest !== undefined ? { manifest: canonical(params.manifest) } : {}),
    };
  },

  checkPaths(params, baseDir) {
    const issues: { path: string; message: string }[] = [];
    if (params.path !== undefined) {
      const full = resolve(baseDir, params.path);
      const info = statMaybe(full);
      const refused = refusedDataPath(full);
      if (refused) issues.push({ path: 'path', message: refused });
      else if (!info) issues.push({ path: 'path', message: `the dataset folder ${full} does not exist; path is relative to the pipeline file's folder (${baseDir})` });
      else if (!info.isDirectory()) issues.push({ path: 'path', message: `${full} is a file, not a folder of class folders (for a CSV/JSONL label list use manifest:)` });
    }
    if (params.manifest !== undefined) {
      const full = resolve(baseDir, params.manifest);
      const info = statMaybe(full);
      const refused = refusedDataPath(full);
      if (refused) issues.push({ path: 'manifest', message: refused });
      else if (!info) issues.push({ path: 'manifest', message: `the manifest ${full} does not exist; manifest is relative to the pipeline file's folder (${baseDir})` });
      else if (specialFileKind(info)) issues.push({ path: 'manifest', message: `${full} is ${specialFileKind(info)}, not a CSV/JSONL manifest; reading it could block forever` });
      else if (!info.isFile()) issues.push({ path: 'manifest', message: `${full} is a folder, not a CSV/JSONL manifest (for class folders use path:)` });
    }
    return issues;
  },

  async run(ctx, params) {
    const problems = ingest.check!(params);
    if (problems.length) throw new StageError('invalid_params', problems.map((p) => `${p.path}: ${p.message}`).join('; '), { problems });
    const scan = params.path !== undefined
      ? await scanFolders(resolve(ctx.baseDir, params.path), params.extensions)
      : await readLabelManifest(resolve(ctx.baseDir, params.manifest!));
    ctx.log.info({ root: scan.root, layout: scan.layout, candidates: scan.candidates.length, ignored: scan.ignored.length }, 'scanned');

    const { valid, skipped } = await inspectAll(ctx, scan);
    if (skipped.length && params.strict) {
      throw new StageError('bad_images', `${skipped.length} file(s) are not readable images, e.g. ${skipped[0].path}: ${skipped[0].reason}`, { root: scan.root, files: skipped });
    }
    for (const file of skipped) ctx.log.warn({ path: file.path, reason: file.reason }, 'skipped bad image');

    const report: IngestReport = { skipped, ignored: scan.ignored, emptyClasses: [], missingFromSplit: [], duplicates: [], notes: [] };
    const { entries: placed, splitSource } = placeInSplits(scan, valid, params, ctx.seed, report);
    const classes = [...new Set(placed.map((entry) => entry.className))].sort(compare);
    const seenFolders = new Set(Object.values(scan.classFolders).flat());
    report.emptyClasses = [...seenFolders].filter((name) => !classes.includes(name)).sort(compare);
    if (placed.length === 0) throw new StageError('no_images', `no readable images under ${scan.root}`, { root: scan.root, skipped: skipped.length, ignored: scan.ignored.length });
    if (classes.length < 2) throw new StageError('too_few_classes', `found ${classes.length} class (${classes.join(', ')}) under ${scan.root}; a classifier needs at least 2`, { root: scan.root, classes });

    const label = new Map(classes.map((name, index) => [name, index]));
    const entries: DatasetEntry[] = placed
      .map((entry) => ({ path: entry.path, sha256: entry.sha256, size: entry.size, label: label.get(entry.className)!, split: entry.split }))
      .sort((a, b) => compare(a.path, b.path));
    const counts = { train: 0, val: 0, test: 0 } as Record<SplitName, number>;
    const classCounts = Object.fromEntries(SPLITS.map((split) => [split, new Array(classes.length).fill(0)])) as Record<SplitName, number[]>;
    for (const entry of entries) counts[entry.split]++, classCounts[entry.split][entry.label]++;
    for (const split of SPLITS) {
      if (counts[split] === 0) continue;
      classes.forEach((className, index) => { if (classCounts[split][index] === 0) report.missingFromSplit.push({ className, split }); });
    }
    if (counts.val === 0) report.notes.push('the val split is empty; evaluation on val will not be possible');
    report.duplicates = findDuplicates(entries);
    await writeDataset(ctx.outDir, { root: scan.root, rootFromPipeline: relative(ctx.baseDir, scan.root) || '.', classes, splitSource, counts, classCounts }, entries);
    await writeFile(join(ctx.outDir, REPORT_FILE), JSON.stringify(report, null, 2) + '\n');

    const duplicatesAcrossSplits = report.duplicates.filter((group) => group.acrossSplits).length;
    if (report.emptyClasses.length) ctx.log.warn({ classes: report.emptyClasses }, 'empty classes');
    if (report.missingFromSplit.length) ctx.log.warn({ missing: report.missingFromSplit }, 'classes missing from a split');
    if (duplicatesAcrossSplits) ctx.log.warn({ groups: duplicatesAcrossSplits }, 'identical files in different splits');
    if (scan.ignored.length) ctx.log.info({ ignored: scan.ignored.length }, 'ignored files');
    // Something to look at: the stage line and the summary point at the list (a file of this artifact).
    const listed = skipped.length + scan.ignored.length + report.emptyClasses.length + report.missingFromSplit.length + report.duplicates.length > 0;
    if (listed) ctx.log.info({ report: REPORT_FILE, skipped: skipped.length, ignored: scan.ignored.length }, 'see the report for skipped and ignored files');
    return {
      metrics: {
        images: entries.length, classes: classes.length, train: counts.train, val: counts.val, test: counts.test,
        skipped: skipped.length, ignored: scan.ignored.length, emptyClasses: report.emptyClasses.length,
        duplicatesAcrossSplits,
        ...(listed ? { report: REPORT_FILE } : {}),
      },
    };
  },
};

interface VerifiedCandidate extends Candidate { sha256: string; size: number }

/** Decodes every candidate (bounded concurrency), in scan order. */
async function inspectAll(ctx: StageContext<IngestParams>, scan: ScanResult): Promise<{ valid: VerifiedCandidate[]; skipped: { path: string; reason: string }[] }> {
  const results: (VerifiedCandidate | { path: string; reason: string })[] = new Array(scan.candidates.length);
  const total = scan.candidates.length;
  let next = 0;
  const inspecting = ctx.track('inspect', total);
  const worker = async () => {
    while (next < total) {
      if (ctx.signal.aborted) throw new AbortedError();
      const index = next++;
      const candidate = scan.candidates[index];
      const result = await inspectImageFile(join(scan.root, ...candidate.path.split('/')));
      results[index] = result.ok ? { ...candidate, sha256: result.sha256, size: result.size } : { path: candidate.path, reason: result.reason };
      inspecting.tick();
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(total, availableParallelism() * 2) }, worker));
  } finally {
    inspecting.done();
  }
  const valid: VerifiedCandidate[] = [];
  const skipped: { path: string; reason: string }[] = [];
  for (const result of results) ('sha256' in result ? valid.push(result) : skipped.push(result));
  return { valid, skipped };
}

/** Decides each file's split from the layout, the manifest or the seeded stratified split. */
function placeInSplits(scan: ScanResult, valid: VerifiedCandidate[], params: IngestParams, seed: number, report: IngestReport): { entries: (VerifiedCandidate & { split: SplitName })[]; splitSource: SplitSource } {
  const fractions = { val: params.split?.val ?? 0.2, test: params.split?.test ?? 0 };
  if (scan.layout === 'classes' || (scan.layout === 'manifest' && valid.every((item) => item.split === undefined))) {
    return { entries: assignSplits(valid, fractions, seed), splitSource: scan.layout === 'manifest' ? 'manifest' : 'seeded' };
  }
  for (const [split, folder] of Object.entries(scan.splitFolders ?? {})) if (folder !== split) report.notes.push(`${folder}/ is read as the ${split} split`);
  const given = valid as (VerifiedCandidate & { split: SplitName })[];
  if (scan.layout === 'folders' && !given.some((item) => item.split === 'val') && fractions.val > 0) {
    report.notes.push(`no val/ folder: val is ${fractions.val} of each class of train/, seeded`);
    const fromTrain = assignSplits(given.filter((item) => item.split === 'train'), { val: fractions.val, test: 0 }, seed);
    return { entries: [...fromTrain, ...given.filter((item) => item.split !== 'train')], splitSource: 'mixed' };
  }
  return { entries: given, splitSource: scan.layout === 'manifest' ? 'manifest' : 'folders' };
}

function findDuplicates(entries: DatasetEntry[]): IngestReport['duplicates'] {
  const groups = new Map<string, DatasetEntry[]>();
  for (const entry of entries) groups.set(entry.sha256, [...(groups.get(entry.sha256) ?? []), entry]);
  return [...groups.entries()]
    .filter(([, group]) => group.length > 1)
    .map(([sha256, group]) => ({
      sha256,
      paths: group.map((entry) => entry.path),
      acrossSplits: new Set(group.map((entry) => entry.split)).size > 1,
      conflictingLabels: new Set(group.map((entry) => entry.label)).size > 1,
    }))
    .sort((a, b) => compare(a.paths[0], b.paths[0]));
}

/**
 * The folder whose content a manifest's dataset depends on: the deepest folder holding the
 * manifest and every file it lists. Falls back to the manifest itself when it cannot be read
 * (the run then fails with a clear message).
 */
function manifestScope(manifest: string): string {
  let text: string;
  try {
    // A FIFO or device would block the read (and so `plan`): validation refuses it; key it by its path.
    if (!statSync(manifest).isFile() || refusedDataPath(manifest)) return manifest;
    text = readFileSync(manifest, 'utf8');
  } catch {
    return manifest;
  }
  let scope = dirname(manifest);
  try {
    for (const row of parseManifestRows(text, /\.(jsonl|ndjson)$/i.test(manifest) ? 'jsonl' : 'csv', manifest)) {
      const file = resolve(dirname(manifest), row.file);
      while (!(file + sep).startsWith(scope.endsWith(sep) ? scope : scope + sep)) scope = dirname(scope);
    }
  } catch {
    return manifest;
  }
  return scope;
}

function statMaybe(file: string): Stats | undefined {
  try {
    return statSync(file);
  } catch {
    return undefined;
  }
}
