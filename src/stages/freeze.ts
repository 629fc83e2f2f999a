/** `freeze`: the bottom of the model stops training; frozen BatchNorm stays in inference mode. */
import paramsSchema from '../../schemas/stages/freeze.schema.json' with { type: 'json' };
import type { StageDefinition } from '../runtime/types.js';
import { disposeModels, readModelArtifact, writeModelArtifact } from '../ml/artifact.js';
import { useTf } from '../ml/backend.js';
import { freezeLayers } from '../ml/surgery.js';

/** `with:` of a `freeze` stage. */
export interface FreezeParams {
  /** Last frozen layer (name), or a count like Keras `layers[:n]`. Default: the whole model. */
  until?: string | number;
}

export const freeze: StageDefinition<FreezeParams> = {
  kind: 'freeze',
  version: 1,
  description: 'Freeze the model up to a layer (default: all of it), BatchNorm in inference mode',
  paramsSchema,
  consumes: ['model'],
  provides: ['model'],
  resource: 'tf',
  light: true,
  async run(ctx, params) {
    await useTf(ctx.log);
    const { model, info } = await readModelArtifact(ctx.input('model').dir);
    let result, summary;
    try {
      result = freezeLayers(model, { until: params.until });
      summary = await writeModelArtifact(ctx.outDir, model, { ...info, lineage: [...info.lineage, 'freeze'] });
    } finally {
      disposeModels(model);
    }
    ctx.log.info({ frozen: result.frozen.length, trainable: result.trainable.length }, 'frozen');
    return { metrics: { frozen_layers: result.frozen.length, trainable_layers: result.trainable.length, trainable_params: summary.trainableParams, params: summary.params } };
  },
};
