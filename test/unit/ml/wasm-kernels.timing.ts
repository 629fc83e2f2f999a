/**
 * Times the wasm training kernels against the cpu backend's on a 32×16×16×32 input.
 * Not a test (vitest only picks up *.test.ts); run by hand on a quiet machine:
 *
 *   npx tsx test/unit/ml/wasm-kernels.timing.ts [--skip-cpu]
 *
 * The cpu backend's Conv2DBackpropFilter takes seconds per call at this size; --skip-cpu leaves it out.
 */
import { configureBackend, useTf } from '../../../src/ml/backend.js';

configureBackend('wasm');
const tf = await useTf();
await import('@tensorflow/tfjs-backend-cpu');
const skipCpu = process.argv.includes('--skip-cpu');

type Case = { name: string; kernel: string; inputs: Record<string, number[]>; attrs: Record<string, unknown> };
const cases: Case[] = [
  { name: 'conv2d 3×3 s1 same, 32→32', kernel: 'Conv2DBackpropFilter', inputs: { x: [32, 16, 16, 32], dy: [32, 16, 16, 32] }, attrs: { strides: [1, 1], pad: 'same', dataFormat: 'NHWC', filterShape: [3, 3, 32, 32] } },
  { name: 'conv2d 3×3 s2 same, 32→32', kernel: 'Conv2DBackpropFilter', inputs: { x: [32, 16, 16, 32], dy: [32, 8, 8, 32] }, attrs: { strides: [2, 2], pad: 'same', dataFormat: 'NHWC', filterShape: [3, 3, 32, 32] } },
  { name: 'conv2d 1×1 s1, 32→32', kernel: 'Conv2DBackpropFilter', inputs: { x: [32, 16, 16, 32], dy: [32, 16, 16, 32] }, attrs: { strides: [1, 1], pad: 'valid', dataFormat: 'NHWC', filterShape: [1, 1, 32, 32] } },
  { name: 'depthwise 3×3 s1 filter grad', kernel: 'DepthwiseConv2dNativeBackpropFilter', inputs: { x: [32, 16, 16, 32], dy: [32, 16, 16, 32] }, attrs: { strides: [1, 1], pad: 'same', dilations: [1, 1], filterShape: [3, 3, 32, 1] } },
  { name: 'depthwise 3×3 s1 input grad', kernel: 'DepthwiseConv2dNativeBackpropInput', inputs: { dy: [32, 16, 16, 32], filter: [3, 3, 32, 1] }, attrs: { strides: [1, 1], pad: 'same', dilations: [1, 1], inputShape: [32, 16, 16, 32] } },
];

async function time(backend: string, c: Case, runs: number): Promise<number> {
  await tf.setBackend(backend);
  const inputs = Object.fromEntries(Object.entries(c.inputs).map(([k, shape]) => [k, tf.randomNormal(shape)]));
  tf.dispose(tf.engine().runKernel(c.kernel, inputs, c.attrs as never)); // warm-up
  const start = performance.now();
  for (let i = 0; i < runs; i++) tf.dispose(tf.engine().runKernel(c.kernel, inputs, c.attrs as never));
  const ms = (performance.now() - start) / runs;
  tf.dispose(Object.values(inputs));
  return ms;
}

for (const c of cases) {
  const wasm = await time('wasm', c, 10);
  const cpu = skipCpu ? NaN : await time('cpu', c, c.kernel === 'Conv2DBackpropFilter' ? 1 : 3);
  console.log(`${c.name.padEnd(32)} wasm ${wasm.toFixed(1).padStart(7)} ms   cpu ${cpu.toFixed(1).padStart(8)} ms`);
}
