/**
 * Samples/s of one training epoch of a real MobileNetV2 top (block_16 + Conv_1 + GAP +
 * Dense(2, softmax), BN held in inference mode) on cached 7x7x160 features: TF.js
 * `optimizer.minimize` (as `fitModel` runs it) against the onnxruntime step of
 * `src/ml/onnx/trainer.ts`, in one process, same records, same batch size, Adam. The ONNX epoch
 * runs second, continuing from the weights the TF.js epoch left (so its mean loss is lower).
 * Reports wall-clock and per-CPU-second rates (the second is steadier on a shared machine).
 *
 *   npx tsx bench/onnx-train.ts     (or `npm run bench onnx-train`; ONNX_THREADS, default all cores)
 *
 * The model comes from the nsfwjs package (decoded to a temp folder, never committed).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LayerVariable, SymbolicTensor } from '@tensorflow/tfjs-layers';
import type * as TfCore from '@tensorflow/tfjs-core';
import { fileURLToPath } from 'node:url';
import { decodeNsfwjsModel } from '../scripts/decode-nsfwjs.js';
import { configureBackend, describeBackend, useLayers, useTf } from '../src/ml/backend.js';
import { buildTop, findFrontier } from '../src/ml/frontier.js';
import { loadModel } from '../src/ml/io.js';
import { createOnnxStep } from '../src/ml/onnx/trainer.js';
import { cutModel, freezeLayers, unfreezeLayers } from '../src/ml/surgery.js';
import { crossEntropy } from '../src/ml/train.js';

/** Samples per second (wall and per CPU-second) of one epoch, each route. */
export interface OnnxTrainBenchResult {
  tfjs: { samplesPerSecond: number; samplesPerCpuSecond: number };
  onnx: { samplesPerSecond: number; samplesPerCpuSecond: number; evaluateSamplesPerSecond: number };
}

export async function benchOnnxTrain(records = 400, batchSize = 32): Promise<OnnxTrainBenchResult> {
  const threads = Number(process.env.ONNX_THREADS ?? os.availableParallelism());
  if (!describeBackend()) configureBackend((process.env.PIPELINE_BACKEND as 'wasm') ?? 'wasm');
  const tf = await useTf();
  const tfl = await useLayers();

  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-onnx-'));
  try {
    decodeNsfwjsModel({ outDir: path.join(dir, 'mobilenet_v2') });
    const base = await cutModel(await loadModel(path.join(dir, 'mobilenet_v2', 'model.json')), 'out_relu');
    const pooled = tfl.layers.globalAveragePooling2d({ name: 'head_pool' }).apply(base.outputs[0]) as SymbolicTensor;
    const output = tfl.layers.dense({ units: 2, activation: 'softmax', name: 'head_output', kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }) }).apply(pooled) as SymbolicTensor;
    const model = tfl.model({ inputs: base.inputs, outputs: output });
    freezeLayers(model);
    unfreezeLayers(model, { from: 'block_16_expand', keepBatchNormInference: true });
    const frontier = findFrontier(model);
    if (!frontier) throw new Error('no frozen bottom');
    const top = await buildTop(model, frontier);
    const featureShape = top.inputs[0].shape.slice(1) as number[];
    const size = featureShape.reduce((a, b) => a * b, 1);
    const x = Float32Array.from({ length: records * size }, (_, i) => Math.max(0, Math.sin(i * 12.9898) * 3));
    const y = Int32Array.from({ length: records }, (_, i) => i % 2);
    const batches = Array.from({ length: Math.ceil(records / batchSize) }, (_, b) => {
      const count = Math.min(batchSize, records - b * batchSize);
      return { x: x.subarray(b * batchSize * size, (b * batchSize + count) * size), shape: [count, ...featureShape], y: y.subarray(b * batchSize, b * batchSize + count), seed: b };
    });
    const trainable = top.trainableWeights.reduce((n, w) => n + w.shape.reduce((a, b) => a! * b!, 1)!, 0);
    console.log(JSON.stringify({ frontier: frontier.tensors.map((t) => t.layer), featureShape, layers: top.layers.length, trainableParams: trainable, records, batchSize, threads, backend: tf.getBackend() }));

    // TF.js route (fitModel's step).
    const vars = top.trainableWeights.map((w) => (w as LayerVariable).read() as TfCore.Variable);
    const tfOptimizer = tf.train.adam(1e-4);
    const tfStep = (b: (typeof batches)[number]) =>
      tf.tidy(() => {
        const xs = tf.tensor(b.x, b.shape);
        const ys = tf.tensor1d(b.y, 'int32');
        return tfOptimizer.minimize(() => crossEntropy(tf, top.apply(xs, { training: true }) as TfCore.Tensor, ys, 2), true, vars)!;
      });
    tfStep(batches[0]).dispose(); // warm-up: kernels, optimizer slots
    // CPU seconds (all threads of this process) as well as wall time: the machine may be shared.
    const cpu = () => {
      const { user, system } = process.cpuUsage();
      return (user + system) / 1e6;
    };
    let c0 = cpu();
    let t0 = performance.now();
    let tfLoss = 0;
    for (const b of batches) {
      const cost = tfStep(b);
      tfLoss += (await cost.data())[0] * b.shape[0];
      cost.dispose();
    }
    const tfSeconds = (performance.now() - t0) / 1000;
    const tfCpu = cpu() - c0;

    // ONNX route.
    t0 = performance.now();
    const onnx = await createOnnxStep(tf, top, { numClasses: 2, threads });
    const setupSeconds = (performance.now() - t0) / 1000;
    const onnxOptimizer = tf.train.adam(1e-4);
    await onnx.step(batches[0], onnxOptimizer); // warm-up
    c0 = cpu();
    t0 = performance.now();
    let onnxLoss = 0;
    for (const b of batches) onnxLoss += (await onnx.step(b, onnxOptimizer)).loss * b.shape[0];
    const onnxSeconds = (performance.now() - t0) / 1000;
    const onnxCpu = cpu() - c0;
    t0 = performance.now();
    for (const b of batches) await onnx.evaluate(b);
    const evaluateSeconds = (performance.now() - t0) / 1000;
    await onnx.dispose();
    const result = {
      tfjs: { samplesPerSecond: records / tfSeconds, samplesPerCpuSecond: records / tfCpu },
      onnx: { samplesPerSecond: records / onnxSeconds, samplesPerCpuSecond: records / onnxCpu, evaluateSamplesPerSecond: records / evaluateSeconds },
    };
    console.log(
      JSON.stringify({
        tfjs: { seconds: +tfSeconds.toFixed(2), samplesPerSecond: +(records / tfSeconds).toFixed(1), samplesPerCpuSecond: +(records / tfCpu).toFixed(1), meanLoss: +(tfLoss / records).toFixed(4) },
        onnx: { seconds: +onnxSeconds.toFixed(2), samplesPerSecond: +(records / onnxSeconds).toFixed(1), samplesPerCpuSecond: +(records / onnxCpu).toFixed(1), meanLoss: +(onnxLoss / records).toFixed(4), setupSeconds: +setupSeconds.toFixed(2), layers: onnx.graph.layers.length, evaluateSamplesPerSecond: +(records / evaluateSeconds).toFixed(1) },
        speedup: +(tfSeconds / onnxSeconds).toFixed(1),
        loadAverage: os.loadavg().map((l) => +l.toFixed(1)),
      }),
    );
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchOnnxTrain();
