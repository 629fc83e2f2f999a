/**
 * `train-head`: a classifier head (pooling, optional dense + dropout, softmax) on the base,
 * trained while the base is frozen. The frozen base's features are computed once (per
 * augmented view) and cached, so each epoch only runs the head: the feature-extraction
 * strategy. With nothing frozen (a from-scratch baseline) the whole network trains on images.
 */
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import paramsSchema from '../../schemas/stages/train-head.schema.json' with { type: 'json' };
import { openDataset } from '../data/shards.js';
import { deriveSeed } from '../data/random.js';
import { StageError } from '../runtime/errors.js';
import type { StageDefinition } from '../runtime/types.js';
import { disposeModels, readModelArtifact } from '../ml/artifact.js';
import { useLayers, useTf } from '../ml/backend.js';
import { RUNG_METRICS, trainAndSave, type TrainingParams } from '../ml/fit-stage.js';
import { checkPreprocessing } from '../ml/preprocess-check.js';
import { requireInputShape } from './guards.js';

/** `with:` of a `train-head` stage (see schemas/stages/train-head.schema.json). */
export interface TrainHeadParams extends TrainingParams {
  /** Classes come from the shards. Default `auto`. */
  classes: 'auto';
  /** How the base's feature map becomes a vector. Default `avg`. */
  pooling: 'avg' | 'max' | 'flatten' | 'none';
  /** Units of hidden dense layers before the softmax. Default `[]`. */
  dense: number[];
  /** Dropout rate before each dense layer. Default 0.2. */
  dropout: number;
  /** Learning rate. Default 0.001. */
  lr: number;
}

export const trainHead: StageDefinition<TrainHeadParams> = {
  kind: 'train-head',
  version: 3, // 3: history.json without wall-clock seconds
  lookahead: true,
  description: 'Add a softmax head on the (frozen) base and train it; frozen-base features are cached',
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
    const { model: base, info } = await readModelArtifact(modelInput.dir);
    const shardsInput = ctx.input('shards');
    const dataset = await openDataset(shardsInput.dir);
    let model: LayersModel | undefined;
    try {
      // Preprocessing first: a mismatch against what the base records explains a shape error too.
      const check = await checkPreprocessing(tf, base, info, dataset, { modelStage: ctx.inputs.find((i) => i.kind === 'load-base')?.id ?? modelInput.id, shardsStage: shardsInput.id, baseDir: ctx.baseDir });
      for (const warning of check.warnings) ctx.log.warn({ check: check.method }, warning);
      requireInputShape(base, dataset.recordShape, 'the shards hold records of', `set preprocess size/channels to match, or load-base input_shape: [${dataset.recordShape.join(', ')}]`);
      model = await addHead(base, dataset.classes.length, params, ctx.seed);
      const metrics = await trainAndSave({
        tf,
        ctx,
        model,
        dataset,
        params,
        lr: params.lr,
        info: { ...info, classes: dataset.classes, preprocess: dataset.spec, headLr: params.lr, lineage: [...info.lineage, 'train-head'] },
      });
      return { metrics: { ...metrics, classes: dataset.classes.length, ...check.metrics, ...(check.warnings.length ? { warnings: check.warnings } : {}) } };
    } finally {
      disposeModels(model, base);
      await dataset.close();
    }
  },
};

/** base -> pooling -> (dropout, dense)* -> dropout -> dense softmax, with seeded initializers. */
async function addHead(base: LayersModel, numClasses: number, params: TrainHeadParams, seed: number): Promise<LayersModel> {
  const tfl = await useLayers();
  let x = base.outputs[0] as SymbolicTensor;
  const rank = x.shape.length;
  if (rank === 4 && params.pooling === 'none') throw new StageError('head_needs_pooling', `the base outputs a feature map [${x.shape.slice(1).join(', ')}]; set pooling to avg, max or flatten`);
  if (rank === 4) {
    const pool = params.pooling === 'max' ? tfl.layers.globalMaxPooling2d({ name: 'head_pool' }) : params.pooling === 'flatten' ? tfl.layers.flatten({ name: 'head_pool' }) : tfl.layers.globalAveragePooling2d({ name: 'head_pool' });
    x = pool.apply(x) as SymbolicTensor;
  } else if (rank !== 2) {
    x = tfl.layers.flatten({ name: 'head_pool' }).apply(x) as SymbolicTensor;
  }
  const init = (name: string) => tfl.initializers.glorotUniform({ seed: deriveSeed(seed, name) % 2147483647 });
  params.dense.forEach((units, i) => {
    // No `seed` on Dropout: TF.js would reuse one mask on every step; the training loop seeds
    // each step's randomness instead (withSeededRandom).
    if (params.dropout > 0) x = tfl.layers.dropout({ rate: params.dropout, name: `head_dropout_${i + 1}` }).apply(x) as SymbolicTensor;
    x = tfl.layers.dense({ units, activation: 'relu', kernelInitializer: init(`head_dense_${i + 1}`), name: `head_dense_${i + 1}` }).apply(x) as SymbolicTensor;
  });
  if (params.dropout > 0) x = tfl.layers.dropout({ rate: params.dropout, name: 'head_dropout' }).apply(x) as SymbolicTensor;
  const output = tfl.layers.dense({ units: numClasses, activation: 'softmax', kernelInitializer: init('head_output'), name: 'head_output' }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: base.inputs, outputs: output, name: `${base.name}_classifier`.replace(/[^A-Za-z0-9_.-]/g, '_') });
}
