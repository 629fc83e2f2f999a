/**
 * `build-model`: a fresh convolutional base with seeded random weights and no head. It is
 * what `pipelines/pretrain-base.yaml` pretrains on the source task, and the same architecture
 * serves as a from-scratch baseline. `train-head` adds the classifier on top.
 */
import type { SymbolicTensor } from '@tensorflow/tfjs-layers';
import paramsSchema from '../../schemas/stages/build-model.schema.json' with { type: 'json' };
import { deriveSeed } from '../data/random.js';
import type { StageDefinition } from '../runtime/types.js';
import { disposeModels, writeModelArtifact } from '../ml/artifact.js';
import { useLayers, useTf } from '../ml/backend.js';

/** `with:` of a `build-model` stage. */
export interface BuildModelParams {
  /** [height, width, channels]. */
  input_shape: [number, number, number];
  /** Filters per block. Default [16, 32, 64]. */
  filters: number[];
  /** Convolutions per block. Default 1. */
  convs_per_block: number;
}

export const buildModel: StageDefinition<BuildModelParams> = {
  kind: 'build-model',
  version: 1,
  description: 'Build a small convolutional base (blocks of conv + BatchNorm + ReLU) with seeded random weights',
  paramsSchema,
  consumes: [],
  provides: ['model'],
  resource: 'tf',
  async run(ctx, params) {
    await useTf(ctx.log);
    const tfl = await useLayers();
    const input = tfl.input({ shape: params.input_shape, name: 'input' });
    let x: SymbolicTensor = input;
    params.filters.forEach((filters, b) => {
      for (let c = 0; c < params.convs_per_block; c++) {
        const name = `block_${b + 1}`;
        const suffix = params.convs_per_block > 1 ? String(c + 1) : '';
        const strides = b > 0 && c === 0 ? 2 : 1;
        x = tfl.layers
          .conv2d({ filters, kernelSize: 3, strides, padding: 'same', useBias: false, kernelInitializer: tfl.initializers.heNormal({ seed: deriveSeed(ctx.seed, name, c) % 2147483647 }), name: `${name}_conv${suffix}` })
          .apply(x) as SymbolicTensor;
        x = tfl.layers.batchNormalization({ name: `${name}_bn${suffix}` }).apply(x) as SymbolicTensor;
        x = tfl.layers.reLU({ name: `${name}_relu${suffix}` }).apply(x) as SymbolicTensor;
      }
    });
    const model = tfl.model({ inputs: input, outputs: x, name: 'small_cnn' });
    let summary;
    try {
      summary = await writeModelArtifact(ctx.outDir, model, { base: { source: 'build-model', init: 'random', inputShape: params.input_shape }, lineage: ['build-model'] });
    } finally {
      disposeModels(model);
    }
    return { metrics: { layers: summary.layers, params: summary.params, output_shape: summary.outputShape as number[] } };
  },
};
