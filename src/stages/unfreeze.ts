/** `unfreeze`: the top block (from a layer, or the top N blocks) becomes trainable for fine-tuning. */
import paramsSchema from '../../schemas/stages/unfreeze.schema.json' with { type: 'json' };
import type { StageDefinition } from '../runtime/types.js';
import { disposeModels, readModelArtifact, writeModelArtifact } from '../ml/artifact.js';
import { useTf } from '../ml/backend.js';
import { unfreezeLayers } from '../ml/surgery.js';

/** `with:` of an `unfreeze` stage. */
export interface UnfreezeParams {
  /** First layer to train. */
  from?: string;
  /** Or: the top N frozen blocks. */
  blocks?: number;
  /** Keep unfrozen BatchNorm in inference mode (`frozen`) or let it train. Default `frozen`. */
  batchnorm: 'frozen' | 'train';
}

export const unfreeze: StageDefinition<UnfreezeParams> = {
  kind: 'unfreeze',
  version: 1,
  description: 'Unfreeze the top block (from a layer, or the top N blocks) for fine-tuning',
  paramsSchema,
  consumes: ['model'],
  provides: ['model'],
  resource: 'tf',
  light: true,
  // Stages upstream (train-head) stop their frozen pass below the layers this one will train.
  hints: (params) => ({ unfreeze: { ...(params.from !== undefined ? { from: params.from } : {}), ...(params.blocks !== undefined ? { blocks: params.blocks } : {}) } }),
  check(params) {
    if (params.from !== undefined && params.blocks !== undefined) return [{ path: 'blocks', message: 'give either `from` or `blocks`, not both' }];
    if (params.from === undefined && params.blocks === undefined) return [{ path: '', message: 'say what to unfreeze: `from: <layer name>` or `blocks: N`' }];
    return [];
  },
  async run(ctx, params) {
    await useTf(ctx.log);
    const { model, info } = await readModelArtifact(ctx.input('model').dir);
    let result, summary, firstTrainable;
    try {
      result = unfreezeLayers(model, { from: params.from, blocks: params.blocks, keepBatchNormInference: params.batchnorm === 'frozen' });
      summary = await writeModelArtifact(ctx.outDir, model, { ...info, lineage: [...info.lineage, 'unfreeze'] });
      firstTrainable = model.layers.find((l) => l.trainable && l.weights.length > 0)?.name ?? null;
    } finally {
      disposeModels(model);
    }
    return { metrics: { trainable_layers: result.trainable.length, frozen_layers: result.frozen.length, trainable_params: summary.trainableParams, first_trainable: firstTrainable } };
  },
};
