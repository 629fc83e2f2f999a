/**
 * The `model` artifact every model stage reads and writes: `model.json` + `weights.bin`
 * (a TF.js layers model; the freeze state and our `ModelInfo` live in its
 * userDefinedMetadata) and `summary.json` (a small human-readable description).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { PreprocessSpec } from '../data/spec.js';
import type { Json } from '../runtime/types.js';
import { loadModel, saveModel, type SaveModelExtra } from './io.js';
import { summarizeModel, type ModelSummary } from './surgery.js';

/** Key of our info in the model's userDefinedMetadata. */
export const INFO_METADATA_KEY = 'finetunePipelineInfo';

/** What the pipeline knows about a model beyond its topology and weights. */
export interface ModelInfo {
  /** Class names in label order, once a classifier head exists. */
  classes?: string[];
  /** The preprocessing the model was trained with (copied from the shards it saw). */
  preprocess?: PreprocessSpec;
  /**
   * Where the base came from (path or URL), where it was cut, how it was initialized; the
   * preprocessing its source model records it was trained with (`preprocess`, a model this
   * toolkit exported), and whether a different preprocessing is allowed on purpose
   * (`allowPreprocessMismatch`); `rankedBy` names the rank-bases stage that chose it.
   */
  base?: { source: string; cut?: string; init: 'pretrained' | 'random'; inputShape?: number[]; preprocess?: PreprocessSpec; allowPreprocessMismatch?: boolean; rankedBy?: string };
  /** Learning rate the head was trained at; fine-tune defaults to a tenth of it. */
  headLr?: number;
  /** Stage kinds applied so far, oldest first (`load-base`, `freeze`, `train-head`, ...). */
  lineage: string[];
  /**
   * The layer a stage's frozen pass over the images stopped below (the lowest unfreeze point it
   * planned for, e.g. of every branch of a sweep): stages downstream read that pass and derive
   * their own cut from it instead of passing the images again.
   */
  frozenFrom?: string;
  /** Free-form facts stages add (pruning masks' sparsity, ...). */
  notes?: Record<string, Json>;
}

export interface ModelArtifact {
  model: LayersModel;
  info: ModelInfo;
}

/** Writes the model artifact into `dir` and returns its summary. */
export async function writeModelArtifact(dir: string, model: LayersModel, info: ModelInfo, encoding: SaveModelExtra['encoding'] = 'auto'): Promise<ModelSummary & { weightBytes: number; weightsFile: string }> {
  const saved = await saveModel(model, dir, { metadata: { [INFO_METADATA_KEY]: info as unknown as Json }, encoding });
  const summary = { ...summarizeModel(model), weightBytes: saved.weightBytes };
  await writeFile(path.join(dir, 'summary.json'), JSON.stringify({ ...summary, info }, null, 1) + '\n');
  return { ...summary, weightsFile: path.basename(saved.weightsPath) };
}

/**
 * Frees the weights of models and of every layer they hold. tfjs-layers counts references per
 * layer *application*, not per model, so disposing two models that share a layer (a cut, a
 * split, a base inside a classifier) either throws or leaks; this frees each distinct weight
 * once instead. The models must not be used afterwards.
 */
export function disposeModels(...models: (LayersModel | null | undefined)[]): void {
  type LayerLike = { weights: { dispose(): void }[]; layers?: LayerLike[] };
  const seen = new Set<LayerLike>();
  const visit = (layer: LayerLike) => {
    if (seen.has(layer)) return;
    seen.add(layer);
    for (const inner of layer.layers ?? []) visit(inner);
  };
  for (const model of models) if (model) visit(model as unknown as LayerLike);
  const weights = new Set([...seen].flatMap((layer) => layer.weights));
  for (const weight of weights) {
    try {
      weight.dispose();
    } catch {
      // already disposed
    }
  }
}

/** Loads a model artifact (freeze state restored by `loadModel`). */
export async function readModelArtifact(dir: string): Promise<ModelArtifact> {
  const model = await loadModel(path.join(dir, 'model.json'));
  const metadata = (model.getUserDefinedMetadata() ?? {}) as Record<string, unknown>;
  const info = (metadata[INFO_METADATA_KEY] as ModelInfo | undefined) ?? { lineage: [] };
  return { model, info: { ...info, lineage: info.lineage ?? [] } };
}
