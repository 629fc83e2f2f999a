/**
 * The frozen forward pass in onnxruntime vs TF.js: the real MobileNetV2 (nsfwjs, 224x224) cut at
 * `out_relu`, images per second at several batch sizes, both engines in this process on the same
 * random batch. onnxruntime runs with `ONNX_THREADS` intra-op threads (default 2).
 *
 *   npx tsx bench/onnx.ts            (or `npm run bench onnx`)
 *
 * Each figure is the median of timed runs after one warm-up run; TF.js gets fewer runs (it is
 * one to two orders slower). About a minute on two cores.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as TfCore from '@tensorflow/tfjs-core';
import { decodeNsfwjsModel } from '../scripts/decode-nsfwjs.js';
import { configureBackend, describeBackend, useLayers, useTf } from '../src/ml/backend.js';
import { loadModel } from '../src/ml/io.js';
import { convertLayersModel } from '../src/ml/onnx/convert.js';
import { createOnnxRunner } from '../src/ml/onnx/runner.js';

/** One row: images per second of each engine at one batch size. */
export interface OnnxBenchRow {
  batch: number;
  onnxImagesPerSecond: number;
  /** Images per CPU-second of this process (all threads): what a shared machine does not distort. */
  onnxImagesPerCpuSecond: number;
  tfjsImagesPerSecond: number | null;
  tfjsImagesPerCpuSecond: number | null;
}

/** Median wall seconds of `runs` timed runs after a warm-up, and the mean CPU seconds of one. */
async function measure(runs: number, once: () => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  await once();
  const times: number[] = [];
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await once();
    times.push((performance.now() - t0) / 1000);
  }
  const cpu = process.cpuUsage(cpu0);
  return { wall: times.sort((a, b) => a - b)[Math.floor(times.length / 2)], cpu: (cpu.user + cpu.system) / 1e6 / runs };
}

export async function benchOnnx(): Promise<OnnxBenchRow[]> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-onnx-'));
  try {
    if (!describeBackend()) configureBackend((process.env.PIPELINE_BACKEND as 'wasm') ?? 'wasm');
    const tf = await useTf();
    const tfl = await useLayers();
    decodeNsfwjsModel({ outDir: dir, model: 'MobileNetV2' });
    const model = await loadModel(join(dir, 'model.json'));
    const bottom = tfl.model({ inputs: model.inputs, outputs: model.getLayer('out_relu').output as never });
    const threads = Number(process.env.ONNX_THREADS ?? 2);
    const t0 = performance.now();
    const converted = convertLayersModel(model, { to: ['out_relu'] });
    const runner = await createOnnxRunner(converted, { threads });
    const convertSeconds = (performance.now() - t0) / 1000;
    const rows: OnnxBenchRow[] = [];
    for (const batch of [8, 16, 32]) {
      const x = new Float32Array(batch * 224 * 224 * 3).map((_, i) => ((i * 2654435761) % 1000) / 1000);
      const shape = [batch, 224, 224, 3];
      const onnx = await measure(batch === 8 ? 9 : 5, () => runner.run(x, shape));
      let tfjs: { wall: number; cpu: number } | null = null;
      // TF.js only at the smallest batch: it takes seconds per batch.
      if (batch === 8) {
        tfjs = await measure(2, async () => {
          const input = tf.tensor(x, shape);
          const out = bottom.predict(input) as TfCore.Tensor;
          await out.data();
          tf.dispose([input, out]);
        });
      }
      rows.push({
        batch,
        onnxImagesPerSecond: batch / onnx.wall,
        onnxImagesPerCpuSecond: batch / onnx.cpu,
        tfjsImagesPerSecond: tfjs && batch / tfjs.wall,
        tfjsImagesPerCpuSecond: tfjs && batch / tfjs.cpu,
      });
    }
    await runner.dispose();
    model.dispose();
    console.log(`MobileNetV2 224 cut at out_relu; onnxruntime ${threads} threads (convert + session: ${convertSeconds.toFixed(2)} s), TF.js ${describeBackend()?.name}`);
    const fixed = (v: number | null) => (v === null ? '-' : v.toFixed(1));
    console.table(
      rows.map((r) => ({
        batch: r.batch,
        'onnx img/s': fixed(r.onnxImagesPerSecond),
        'onnx img/cpu-s': fixed(r.onnxImagesPerCpuSecond),
        'tfjs img/s': fixed(r.tfjsImagesPerSecond),
        'tfjs img/cpu-s': fixed(r.tfjsImagesPerCpuSecond),
      })),
    );
    console.log(`load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} on ${os.availableParallelism()} cores`);
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchOnnx();
