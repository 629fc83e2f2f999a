/**
 * Thumbnails of the misclassified records, embedded in the report as `data:` URIs (PNG, made
 * with sharp): from the original image under the dataset's root when it is still there, else
 * from the preprocessed record in the shards (what the model saw), else a reason.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { ReportInputs, StageArtifact, Thumbnail } from './collect.js';

/** At most this many thumbnails per evaluate stage (the table lists the rest without one). */
export const THUMBNAIL_LIMIT = 48;
/** Longest side of a thumbnail, in pixels. */
export const THUMBNAIL_SIZE = 96;

/** The key of a record's thumbnail in `ReportInputs.thumbnails`. */
export function thumbnailKey(stage: string, index: number): string {
  return `${stage}:${index}`;
}

/** Fills `inputs.thumbnails` for the first `THUMBNAIL_LIMIT` misclassified records of each evaluation. */
export async function attachThumbnails(inputs: ReportInputs): Promise<void> {
  const evaluations = inputs.stages.filter((s) => s.evaluation?.misclassified?.records.length);
  if (!evaluations.length) return;
  const { default: sharp } = await import('sharp');
  const root = inputs.stages.find((s) => s.dataset?.root)?.dataset?.root;
  const shards = inputs.stages.find((s) => s.present && s.files.includes('shards.json'));
  const { openDataset } = await import('../data/shards.js');
  const dataset = shards ? await openDataset(shards.dir).catch(() => undefined) : undefined;
  try {
    for (const stage of evaluations) {
      for (const record of stage.evaluation!.misclassified!.records.slice(0, THUMBNAIL_LIMIT)) {
        inputs.thumbnails[thumbnailKey(stage.summary.id, record.index)] = await thumbnailOf(sharp, stage, record, root, dataset);
      }
    }
  } finally {
    await dataset?.close();
  }
}

type Sharp = (typeof import('sharp'))['default'];
type Dataset = Awaited<ReturnType<typeof import('../data/shards.js').openDataset>>;

async function thumbnailOf(sharp: Sharp, stage: StageArtifact, record: { index: number; file?: string }, root: string | undefined, dataset: Dataset | undefined): Promise<Thumbnail> {
  const resize = { width: THUMBNAIL_SIZE, height: THUMBNAIL_SIZE, fit: 'inside' as const, kernel: 'nearest' as const, withoutEnlargement: false };
  const file = root && record.file ? path.join(root, record.file) : undefined;
  if (file && existsSync(file)) {
    try {
      const png = await sharp(file).resize(resize).png().toBuffer();
      return { uri: `data:image/png;base64,${png.toString('base64')}`, source: 'image' };
    } catch {
      // unreadable now: fall back to the record the model saw
    }
  }
  const split = stage.evaluation!.split;
  if (dataset?.splits[split] && record.index < dataset.splits[split].count) {
    const [height, width, channels] = dataset.recordShape;
    const raw = await dataset.readRecords(split, [record.index]);
    const png = await sharp(Buffer.from(raw), { raw: { width, height, channels: channels as 1 | 3 } }).resize(resize).png().toBuffer();
    return { uri: `data:image/png;base64,${png.toString('base64')}`, source: 'record' };
  }
  return { missing: file ? `${file} is gone and the shards are not in the store` : 'no file name or shards to draw it from' };
}
