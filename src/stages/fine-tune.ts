/**
 * `fine-tune`: retrain the unfrozen top block and the head at a lower learning rate (default:
 * the head's / 10), optionally with warmup and cosine decay. The frozen part's outputs at the
 * split are cached, so an epoch costs only the top block; per-epoch checkpoints let a killed
 * run resume from the last finished epoch.
 */
import paramsSchema from '../../schemas/stages/fine-tune.schema.json' with { type: 'json' };
import { openDataset } from '../data/shards.js';
import { StageError } from '../runtime/errors.js';
import type { StageContext, StageDefinition } from '../runtime/types.js';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { disposeModels, readModelArtifact, type ModelInfo } from '../ml/artifact.js';
import { useTf, type Tf } from '../ml/backend.js';
import { RUNG_METRICS, trainAndSave, type TrainingParams } from '../ml/fit-stage.js';
import { requireHead, requireInputShape, requireSameClasses } from './guards.js';

/** `with:` of a `fine-tune` stage (see schemas/stages/fine-tune.schema.json). */
export interface FineTuneParams extends TrainingParams {
  /** Learning rate; default head lr / lr_divisor. */
  lr?: number;
  /** Divides the head's learning rate when `lr` is not set. Default 10. */
  lr_divisor: number;
}

export const fineTune: StageDefinition<FineTuneParams> = {
  kind: 'fine-tune',
  version: 3, // 3: history.json without wall-clock seconds
  lookahead: true,
  description: 'Retrain the unfrozen top block and head at a lower learning rate (cached frozen features, resumable)',
  paramsSchema,
  consumes: ['shards', 'model'],
  provides: ['model'],
  resource: 'tf',
  // A halving select runs it in rungs of epochs (ctx.budget, ctx.resumeFrom: see fit-stage.ts).
  budget: 'epochs',
  budgetMetrics: RUNG_METRICS,
  async run(ctx, params) {
    const tf = await useTf(ctx.log);
    const modelInput = ctx.input('model');
    const { model, info } = await readModelArtifact(modelInput.dir);
    try {
      return await tune(ctx, params, model, info, tf);
    } finally {
      disposeModels(model);
    }
  },
};

/** The checks and the training, with the model loaded (the caller disposes it). */
async function tune(ctx: StageContext<FineTuneParams>, params: FineTuneParams, model: LayersModel, info: ModelInfo, tf: Tf) {
  requireHead(info.classes, 'put a train-head stage (then unfreeze) before fine-tune');
  const lr = params.lr ?? (info.headLr !== undefined ? info.headLr / params.lr_divisor : undefined);
  if (lr === undefined) throw new StageError('no_learning_rate', 'the model does not record the head learning rate; set fine-tune lr explicitly');
  const dataset = await openDataset(ctx.input('shards').dir);
  try {
    requireInputShape(model, dataset.recordShape, 'the shards hold records of', 'preprocess to the size train-head used');
    requireSameClasses(info.classes, dataset.classes);
    const metrics = await trainAndSave({ tf, ctx, model, dataset, params, lr, info: { ...info, lineage: [...info.lineage, 'fine-tune'] } });
    return { metrics };
  } finally {
    await dataset.close();
  }
}
