/**
 * Feature caching: a frozen part of a model computes the same outputs every epoch, so it is
 * run once per image (or once per augmented view) and the trainable part trains on the cached
 * outputs. `splitAtTrainable` finds where the frozen bottom ends; `extractFeatures` runs it.
 */
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { ShardDataset } from '../data/shards.js';
import { AbortedError, StageError } from '../runtime/errors.js';
import { useLayers, type Tf } from './backend.js';
import type { ArrayData } from './sources.js';

type Layer = LayersModel['layers'][number];

/** A model split into a frozen bottom and a top that holds every trainable weight. */
export interface SplitModel {
  /** Inputs -> the split tensor; all frozen. Null when nothing is frozen. */
  bottom: LayersModel | null;
  /** Split tensor -> outputs; shares layers (and so weights) with the original. */
  top: LayersModel;
  /** Name of the first layer of the top. */
  splitLayer: string;
}

function hasTrainableWeights(layer: Layer): boolean {
  return layer.trainable && layer.trainableWeights.length > 0;
}

/**
 * Splits `model` just below its first layer with trainable weights, when the graph allows it:
 * that layer's single input tensor must be the only tensor the rest of the model reads from
 * below. Returns null when it cannot (a skip connection crosses the split, a shared layer).
 */
export async function splitAtTrainable(model: LayersModel): Promise<SplitModel | null> {
  const layers = model.layers;
  const first = layers.findIndex(hasTrainableWeights);
  if (first < 0) return null;
  // Back up over weightless layers (reshape, activation, padding) that sit right above the cut
  // so the split tensor is the frozen part's output.
  let start = first;
  while (start > 1 && layers[start - 1].weights.length === 0 && layers[start - 1].getClassName() !== 'InputLayer' && layers[start - 1].inboundNodes.length === 1 && layers[start - 1].inboundNodes[0].inputTensors.length === 1) start--;
  // Nothing frozen below the first trainable layer: the whole model trains on images.
  if (start <= 1 && layers[0].getClassName() === 'InputLayer') return { bottom: null, top: model, splitLayer: layers[Math.min(1, layers.length - 1)].name };
  const head = layers[start];
  if (head.inboundNodes.length !== 1 || head.inboundNodes[0].inputTensors.length !== 1) return null;
  const splitTensor = head.inboundNodes[0].inputTensors[0];
  const tfl = await useLayers();
  const input = tfl.input({ shape: splitTensor.shape.slice(1) as number[], name: `${head.name}_features` });
  const mapped = new Map<number, SymbolicTensor>([[splitTensor.id, input]]);
  for (const layer of layers.slice(start)) {
    if (layer.inboundNodes.length !== 1) return null; // shared layer: no single graph position
    const node = layer.inboundNodes[0];
    const inputs = node.inputTensors.map((t) => mapped.get(t.id));
    if (inputs.some((t) => !t)) return null; // reads a tensor from below the split (skip connection)
    const output = layer.apply(inputs.length === 1 ? inputs[0]! : (inputs as SymbolicTensor[])) as SymbolicTensor | SymbolicTensor[];
    const outs = Array.isArray(output) ? output : [output];
    node.outputTensors.forEach((t, i) => mapped.set(t.id, outs[i]));
  }
  const outputs = model.outputs.map((t) => mapped.get(t.id));
  if (outputs.some((t) => !t)) return null;
  const top = tfl.model({ inputs: input, outputs: outputs as SymbolicTensor[], name: `${model.name}_top` });
  const bottom = tfl.model({ inputs: model.inputs, outputs: splitTensor, name: `${model.name}_bottom` });
  return { bottom, top, splitLayer: head.name };
}

export interface ExtractOptions {
  split: string;
  batchSize: number;
  /** Passes over the split (stacked view after view). */
  views: number;
  /** Apply the shards' augmentation (train with augmenting shards); each view differs. */
  augment: boolean;
  seed: number;
  signal?: AbortSignal;
  onProgress?(done: number, total: number): void;
}

/**
 * Runs `model` (inference mode) over a split, `views` times (augmented passes differ per
 * view), stacked view after view. Returns records of the model's output shape.
 */
export async function extractFeatures(tf: Tf, model: LayersModel, dataset: ShardDataset, options: ExtractOptions): Promise<ArrayData> {
  const count = dataset.splits[options.split]?.count ?? 0;
  const outputShape = model.outputs[0].shape.slice(1);
  if (outputShape.some((d) => d === null))
    throw new StageError('dynamic_shape', `the frozen part outputs [${outputShape.join(', ')}]: its size depends on the input; give load-base an input_shape so features have a fixed size`, { outputShape });
  const recordShape = outputShape as number[];
  const size = recordShape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(count * options.views * size);
  const y = new Int32Array(count * options.views);
  let offset = 0;
  for (let view = 0; view < options.views; view++) {
    const augment = options.augment;
    for await (const batch of dataset.batches(options.split, { batchSize: options.batchSize, shuffle: false, seed: options.seed, epoch: view, augment })) {
      if (options.signal?.aborted) throw new AbortedError();
      const out = tf.tidy(() => model.predict(tf.tensor(batch.x, batch.shape)) as TfCore.Tensor);
      x.set((await out.data()) as Float32Array, offset * size);
      out.dispose();
      y.set(batch.y, offset);
      offset += batch.count;
      options.onProgress?.(offset, count * options.views);
    }
  }
  return { x, y, recordShape };
}
