/**
 * `export`: turns a trained `model` into a self-contained inference folder that
 * `pipeline predict` (src/predict.ts) and any TF.js app can load:
 * ```
 * model.json + weights.bin   the layers model (tf.loadLayersModel reads it as is)   format: tfjs (default)
 *   (or + weights.sparse.bin with `sparse: true`: a pruned model's compact encoding, ours only)
 * model.onnx                 the same model as an ONNX graph, NHWC input                format: onnx
 * labels.json                class names in output order
 * preprocess.json            the exact PreprocessSpec of training, augmentation off
 * export.json                what was exported, when, from which artifact, and a summary
 * summary.json               layers and parameter counts
 * ```
 * With `dir`, the folder is also copied there, replacing a previous export atomically-ish.
 */
import { cp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import paramsSchema from '../../schemas/stages/export.schema.json' with { type: 'json' };
import { NO_AUGMENT, type PreprocessSpec } from '../data/spec.js';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { readModelArtifact, writeModelArtifact, type ModelInfo } from '../ml/artifact.js';
import { MODEL_FILE } from '../ml/io.js';
import { summarizeModel, type ModelSummary } from '../ml/surgery.js';
import { StageError } from '../runtime/errors.js';
import type { StageDefinition, StageInput } from '../runtime/types.js';
import { requireHead, requireInputShape, requireOutputPerClass } from './guards.js';

/** `with:` of an `export` stage (see schemas/stages/export.schema.json). */
export interface ExportParams {
  /** Also copy the folder here (relative to the pipeline file). Default: only the artifact. */
  dir?: string;
  /** What to write: `tfjs` (model.json + weights.bin), `onnx` (model.onnx). Default `['tfjs']`. */
  format: ExportFormat[];
  /**
   * Write a pruned model's weights in our sparse encoding (`weights.sparse.bin`, model.json
   * `format: finetune-sparse-layers-model`): smaller, but only `pipeline predict` and `load-base`
   * read it. Default false: dense `weights.bin`, a standard TF.js layers model.
   */
  sparse: boolean;
}

/** A model file format `export` writes. */
export type ExportFormat = 'tfjs' | 'onnx';

/** File name of the ONNX model (`format: [onnx]`). */
export const ONNX_FILE = 'model.onnx';

/** Class names in output order. */
export const LABELS_FILE = 'labels.json';
/** The inference preprocessing (a `PreprocessSpec` with augmentation off). */
export const PREPROCESS_FILE = 'preprocess.json';
/** The export's manifest; its presence marks a folder `export` may replace. */
export const EXPORT_FILE = 'export.json';
/** `format` of `export.json`. */
export const EXPORT_FORMAT = 'finetune-export';

/** `export.json`. */
export interface ExportManifest {
  format: typeof EXPORT_FORMAT;
  version: 1;
  /** ISO 8601 time the export was written. */
  created: string;
  /** Files of the folder, relative to it. */
  files: string[];
  /** Class names (as labels.json). */
  classes: string[];
  /** Model formats written (`tfjs`: model.json + weights.bin; `onnx`: model.onnx). Absent in exports older than the field: tfjs. */
  formats?: ExportFormat[];
  /** `[height, width, channels]` the model takes (as preprocess.json's size and channels). */
  inputShape: [number, number, number];
  /** The model artifact exported: its stage id, kind and cache key. */
  source: { stage: string; kind: string; key: string };
  /** Stage kinds that produced the model, oldest first, ending in `export`. */
  lineage: string[];
  /** Where the base came from, when known. */
  base?: ModelInfo['base'];
  /** Size facts. */
  /** Size facts; `weightBytes` is weights.bin's size (0 without tfjs), `onnxBytes` model.onnx's. */
  summary: { layers: number; params: number; trainableParams: number; weightBytes: number; onnxBytes?: number };
}

export const exportStage: StageDefinition<ExportParams> = {
  kind: 'export',
  // 2: weights are dense by default (a pruned model used to be exported in the sparse encoding).
  version: 2,
  description: 'Write model.json + weights (and/or model.onnx), labels.json and preprocess.json into a folder for inference',
  paramsSchema,
  consumes: ['model'],
  provides: ['export'],
  resource: 'tf',

  async run(ctx, params) {
    const source = ctx.input('model');
    const { model, info } = await readModelArtifact(source.dir);
    try {
      const classes = info.classes;
      requireHead(classes, 'export a model after train-head (or fine-tune)', { stage: source.id, lineage: info.lineage });
      if (!info.preprocess) {
        throw new StageError('model_has_no_head', `the model from '${source.id}' has no preprocessing spec recorded; export a model after train-head (or fine-tune)`, {
          stage: source.id,
          lineage: info.lineage,
        });
      }
      requireOutputPerClass(model, classes);
      const [height, width] = info.preprocess.size;
      requireInputShape(model, [height, width, info.preprocess.channels], 'its preprocessing makes');
      // Inference never augments; keep the field (with everything off) so the file is a full spec.
      const spec: PreprocessSpec = { ...info.preprocess, augment: { ...NO_AUGMENT } };
      const lineage = [...info.lineage, 'export'];
      const formats = params.format;
      const exportInfo: ModelInfo = { ...info, preprocess: spec, lineage };
      // Dense unless asked: an export is for any TF.js app, and stock loaders cannot read the sparse encoding.
      const written = formats.includes('tfjs') ? await writeModelArtifact(ctx.outDir, model, exportInfo, params.sparse ? 'sparse' : 'dense') : { ...(await writeSummary(ctx.outDir, model, exportInfo)), weightsFile: undefined };
      const onnxBytes = formats.includes('onnx') ? await writeOnnx(join(ctx.outDir, ONNX_FILE), model, { classes, preprocess: spec, source }) : undefined;
      await writeJson(join(ctx.outDir, LABELS_FILE), classes);
      await writeJson(join(ctx.outDir, PREPROCESS_FILE), spec);
      const modelFiles = [...(written.weightsFile !== undefined ? [MODEL_FILE, written.weightsFile] : []), ...(onnxBytes !== undefined ? [ONNX_FILE] : [])];
      const manifest: ExportManifest = {
        format: EXPORT_FORMAT,
        version: 1,
        created: new Date().toISOString(),
        files: [...modelFiles, LABELS_FILE, PREPROCESS_FILE, 'summary.json', EXPORT_FILE],
        formats,
        classes,
        inputShape: [spec.size[0], spec.size[1], spec.channels],
        source: { stage: source.id, kind: source.kind, key: source.key },
        lineage,
        ...(info.base ? { base: info.base } : {}),
        summary: { layers: written.layers, params: written.params, trainableParams: written.trainableParams, weightBytes: written.weightBytes, ...(onnxBytes !== undefined ? { onnxBytes } : {}) },
      };
      await writeJson(join(ctx.outDir, EXPORT_FILE), manifest);

      let target: string | undefined;
      if (params.dir !== undefined) {
        target = resolve(ctx.baseDir, params.dir);
        await replaceFolder(ctx.outDir, target);
        ctx.log.info({ dir: target }, 'export copied');
      }
      return {
        metrics: { classes: classes.length, params: written.params, weightBytes: written.weightBytes, ...(params.sparse && written.weightsFile ? { weightsEncoding: 'sparse' } : {}), ...(onnxBytes !== undefined ? { onnxBytes } : {}), ...(target ? { dir: target } : {}) },
      };
    } finally {
      model.dispose();
    }
  },
  async checkout(ctx, params) {
    // A cached export must still be at `dir`: copy it again when it is missing or another one.
    if (params.dir === undefined) return;
    const target = resolve(ctx.baseDir, params.dir);
    const cached = await readFile(join(ctx.dir, EXPORT_FILE), 'utf8');
    const present = await readFile(join(target, EXPORT_FILE), 'utf8').catch(() => undefined);
    if (present === cached) return;
    await replaceFolder(ctx.dir, target);
    ctx.log.info({ dir: target }, 'export restored from the cache');
  },
};

/** summary.json alone, for an export without the tfjs files (weightBytes 0: no weights.bin). */
async function writeSummary(dir: string, model: LayersModel, info: ModelInfo): Promise<ModelSummary & { weightBytes: number }> {
  const summary = { ...summarizeModel(model), weightBytes: 0 };
  await writeFile(join(dir, 'summary.json'), JSON.stringify({ ...summary, info }, null, 1) + '\n');
  return summary;
}

/**
 * Writes the whole model as ONNX to `file` (classes, preprocessing and provenance as metadata
 * props); returns its size in bytes. The converter is imported here, not at the top, so the CLI
 * does not load it for runs that never export ONNX.
 */
async function writeOnnx(file: string, model: LayersModel, facts: { classes: string[]; preprocess: PreprocessSpec; source: StageInput }): Promise<number> {
  const { convertLayersModel, UnsupportedLayerError } = await import('../ml/onnx/convert.js');
  let bytes: Uint8Array;
  try {
    bytes = convertLayersModel(model, { name: model.name }).graph.toBytes({
      classes: JSON.stringify(facts.classes),
      preprocess: JSON.stringify(facts.preprocess),
      input_layout: 'NHWC',
      source: `${facts.source.id} (${facts.source.kind}, ${facts.source.key})`,
    });
  } catch (error) {
    if (!(error instanceof UnsupportedLayerError)) throw error;
    throw new StageError(
      'onnx_unsupported_layer',
      `cannot export to ONNX: layer '${error.layer}' (${error.className}): ${error.reason}; export format [tfjs] only, or change that layer`,
      { layer: error.layer, className: error.className, reason: error.reason },
      { cause: error },
    );
  }
  await writeFile(file, bytes);
  return bytes.byteLength;
}

/** The `_entry.json` the store adds to a cached entry: not part of an export folder. */
const STORE_FILE = '_entry.json';

/**
 * Copies `from` to `target` through a sibling temp folder and renames, so `target` is at every
 * moment either the old export or the complete new one (there is a short window between the two
 * renames where it is absent). Refuses a non-empty `target` that is not an export.
 */
export async function replaceFolder(from: string, target: string): Promise<void> {
  const existing = await stat(target).catch(() => null);
  if (existing && !existing.isDirectory()) {
    throw new StageError('export_dir_not_a_folder', `${target} exists and is not a folder; choose another export dir`, { dir: target });
  }
  if (existing && (await readdir(target)).length > 0 && !(await isExport(target))) {
    throw new StageError('export_dir_not_empty', `${target} is not empty and holds no ${EXPORT_FILE}, so it is not a previous export; refusing to replace it (empty it or choose another dir)`, { dir: target });
  }
  const suffix = `${process.pid}-${Date.now().toString(36)}`;
  const temp = join(dirname(target), `.${basename(target)}.tmp-${suffix}`);
  const old = join(dirname(target), `.${basename(target)}.old-${suffix}`);
  try {
    await cp(from, temp, { recursive: true, filter: (src) => basename(src) !== STORE_FILE });
    if (existing) await rename(target, old);
    try {
      await rename(temp, target);
    } catch (error) {
      if (existing) await rename(old, target).catch(() => {});
      throw error;
    }
  } catch (error) {
    await rm(temp, { recursive: true, force: true });
    throw new StageError('export_copy_failed', `cannot write the export to ${target}: ${(error as Error).message}`, { dir: target }, { cause: error });
  }
  await rm(old, { recursive: true, force: true });
}

async function isExport(dir: string): Promise<boolean> {
  try {
    const manifest = JSON.parse(await readFile(join(dir, EXPORT_FILE), 'utf8')) as { format?: unknown };
    return manifest.format === EXPORT_FORMAT;
  } catch {
    return false;
  }
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file, JSON.stringify(value, null, 1) + '\n');
}
