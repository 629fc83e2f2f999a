/**
 * The ONNX training route against the TF.js one on MobileNetV2-style tops: gradients, and
 * k Adam steps (loss, weights), on the wasm backend the training stages use.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestBackend } from '../stages/helpers.js';
import type { LayersModel, LayerVariable, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { Tf, TfLayersApi } from '../../../src/ml/backend.js';
import { setBatchNormInference } from '../../../src/ml/surgery.js';
import { createOnnxStep } from '../../../src/ml/onnx/trainer.js';
import { buildTrainingGraph, findUntrainableLayer, UnsupportedLayerError } from '../../../src/ml/onnx/train-graph.js';
import { UnsupportedLayerError as ConverterUnsupportedLayerError } from '../../../src/ml/onnx/convert.js';
import { crossEntropy, withSeededRandom } from '../../../src/ml/train.js';
import { mobilenetTop, type MobilenetTopOptions } from '../../fixtures/mobilenet-top.js';
import { compareGradients, randomBatch, relativeError } from './grad-parity.js';

let tf: Tf;
let tfl: TfLayersApi;
beforeAll(async () => {
  ({ tf, tfl } = await useTestBackend());
});

const variablesOf = (model: LayersModel) => model.trainableWeights.map((w) => (w as LayerVariable).read() as TfCore.Variable);

/** k Adam steps on two identical models, one per route; returns per-step losses and final weights. */
async function trainBoth(options: MobilenetTopOptions, k: number, classWeights?: number[], prepare?: (m: LayersModel) => void) {
  const numClasses = options.numClasses ?? 3;
  const shape = options.inputShape ?? [4, 4, 8];
  const reference = mobilenetTop(tfl, options);
  const candidate = mobilenetTop(tfl, options);
  prepare?.(reference);
  prepare?.(candidate);
  const tfOptimizer = tf.train.adam(0.01);
  const onnxOptimizer = tf.train.adam(0.01);
  const weights = classWeights ? tf.tensor1d(classWeights) : undefined;
  const step = await createOnnxStep(tf, candidate, { numClasses, classWeights, threads: 1 });
  const losses: { tf: number; onnx: number; tfCorrect: number; onnxCorrect: number }[] = [];
  try {
    for (let i = 0; i < k; i++) {
      const batch = randomBatch([6, ...shape], numClasses, 10 + i);
      let correct = 0;
      const cost = withSeededRandom(batch.seed!, () =>
        tf.tidy(() => {
          const x = tf.tensor(batch.x, batch.shape);
          const y = tf.tensor1d(batch.y, 'int32');
          return tfOptimizer.minimize(
            () => {
              const probs = reference.apply(x, { training: true }) as TfCore.Tensor;
              correct = tf.sum(tf.cast(tf.equal(tf.cast(tf.argMax(probs, -1), 'int32'), y), 'int32')).dataSync()[0];
              return crossEntropy(tf, probs, y, numClasses, weights);
            },
            true,
            variablesOf(reference),
          )!;
        }),
      );
      const tfLoss = cost.dataSync()[0];
      cost.dispose();
      const result = await step.step(batch, onnxOptimizer);
      losses.push({ tf: tfLoss, onnx: result.loss, tfCorrect: correct, onnxCorrect: result.correct });
    }
    const weightErrors = reference.trainableWeights.map((w, i) => relativeError(candidate.trainableWeights[i].read().dataSync(), w.read().dataSync()));
    return { losses, weightErrors, graph: step.graph, reference, candidate, step };
  } finally {
    await step.dispose();
    weights?.dispose();
    tfOptimizer.dispose();
    onnxOptimizer.dispose();
  }
}

describe('MobileNetV2-style top through onnxruntime', () => {
  it('gradients equal tf.variableGrads (expand, depthwise, project, Add, Conv_1, GAP, head)', async () => {
    const model = mobilenetTop(tfl, { blocks: [{ filters: 8, stride: 1 }] });
    const result = await compareGradients(tf, model, randomBatch([8, 4, 4, 8], 3, 3), 3);
    // 3 convs + depthwise + 4 BN x (gamma, beta) + head kernel and bias
    expect(result.names).toHaveLength(4 + 8 + 2);
    expect(Math.abs(result.loss - result.tfLoss) / result.tfLoss).toBeLessThan(1e-6);
    expect(result.worst, JSON.stringify(result.errors)).toBeLessThan(1e-5);
  });

  it('3 Adam steps give the same losses, accuracy and weights as optimizer.minimize', async () => {
    const { losses, weightErrors, graph } = await trainBoth({ blocks: [{ filters: 8, stride: 1 }] }, 3);
    expect(graph.layers).toContain('block_16_add');
    for (const l of losses) {
      expect(Math.abs(l.onnx - l.tf) / l.tf).toBeLessThan(1e-5);
      expect(l.onnxCorrect).toBe(l.tfCorrect);
    }
    expect(Math.max(...weightErrors)).toBeLessThan(1e-5);
  });

  it('a stride-2 block (ZeroPadding2D + valid depthwise), class weights and a dropout head', async () => {
    const options: MobilenetTopOptions = { inputShape: [6, 6, 4], blocks: [{ filters: 6, stride: 2 }, { filters: 6, stride: 1 }], dropout: 0.3 };
    const { losses, weightErrors, graph } = await trainBoth(options, 3, [1, 2, 0.5]);
    expect(graph.masks.map((m) => m.layer)).toEqual(['head_dropout']);
    for (const l of losses) expect(Math.abs(l.onnx - l.tf) / l.tf).toBeLessThan(1e-5);
    expect(Math.max(...weightErrors)).toBeLessThan(1e-5);
  });

  it('frozen layers in between get no gradient but pass one through', async () => {
    const freeze = (m: LayersModel) => {
      for (const name of ['block_16_depthwise', 'block_16_project_BN', 'Conv_1']) m.getLayer(name).trainable = false;
    };
    const { losses, weightErrors, graph } = await trainBoth({ blocks: [{ filters: 8, stride: 1 }] }, 2, undefined, freeze);
    expect(graph.trainable.map((w) => w.name).some((n) => n.startsWith('Conv_1/') || n.startsWith('block_16_depthwise/'))).toBe(false);
    expect(graph.trainable.map((w) => w.name).some((n) => n.startsWith('block_16_expand/'))).toBe(true);
    for (const l of losses) expect(Math.abs(l.onnx - l.tf) / l.tf).toBeLessThan(1e-5);
    expect(Math.max(...weightErrors)).toBeLessThan(1e-5);
  });

  it('evaluates like model.predict + crossEntropy, and leaks no tensors across steps', async () => {
    const model = mobilenetTop(tfl, { dropout: 0.5 });
    const step = await createOnnxStep(tf, model, { numClasses: 3, threads: 1 });
    const optimizer = tf.train.adam(0.01);
    try {
      const batch = randomBatch([5, 4, 4, 8], 3, 7);
      const expected = tf.tidy(() => crossEntropy(tf, model.predict(tf.tensor(batch.x, batch.shape)) as TfCore.Tensor, tf.tensor1d(batch.y, 'int32'), 3).dataSync()[0]);
      const evaluated = await step.evaluate(batch);
      expect(Math.abs(evaluated.loss - expected) / expected).toBeLessThan(1e-6);
      await step.step(batch, optimizer);
      const tensors = tf.memory().numTensors;
      for (let i = 0; i < 3; i++) await step.step(randomBatch([5, 4, 4, 8], 3, 20 + i), optimizer);
      expect(tf.memory().numTensors).toBe(tensors);
    } finally {
      await step.dispose();
      optimizer.dispose();
    }
  });

  it('refuses a layer without a backward, and BN in training mode, with UnsupportedLayerError', () => {
    const input = tfl.input({ shape: [4, 4, 2] });
    const norm = tfl.layers.layerNormalization({ name: 'ln' }).apply(input) as SymbolicTensor;
    const head = tfl.layers.dense({ units: 2, activation: 'softmax' }).apply(tfl.layers.flatten().apply(norm) as SymbolicTensor) as SymbolicTensor;
    const model = tfl.model({ inputs: input, outputs: head });
    expect(() => buildTrainingGraph(model, { numClasses: 2 })).toThrow(UnsupportedLayerError);
    expect(() => buildTrainingGraph(model, { numClasses: 2 })).toThrow(/"ln" \(LayerNormalization\)/);
    expect(() => buildTrainingGraph(model, { numClasses: 2 })).toThrow(ConverterUnsupportedLayerError);
    expect(findUntrainableLayer(model, { numClasses: 2 })).toEqual({ layer: 'ln', className: 'LayerNormalization', reason: 'no backward implemented for this layer class' });
    expect(findUntrainableLayer(mobilenetTop(tfl), { numClasses: 3 })).toBeNull();

    const top = mobilenetTop(tfl);
    setBatchNormInference(top.getLayer('Conv_1_bn'), false);
    const error = (() => {
      try {
        buildTrainingGraph(top, { numClasses: 3 });
      } catch (e) {
        return e as UnsupportedLayerError;
      }
    })();
    expect(error).toBeInstanceOf(UnsupportedLayerError);
    expect(error?.layer).toBe('Conv_1_bn');
    expect(buildTrainingGraph(top, { numClasses: 3, mode: 'evaluate' }).bytes.length).toBeGreaterThan(0);
  });
});
