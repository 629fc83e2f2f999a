/** `npm run bench [name]`: every benchmark; figures are reported against a baseline measured in the same run. */
import { benchOnnx } from './onnx.js';
import { benchOnnxTrain } from './onnx-train.js';
import { benchPreprocess } from './preprocess.js';
import { benchPrune } from './prune.js';
import { benchRuntime } from './runtime.js';

const only = process.argv[2];
const benches: Record<string, () => Promise<unknown>> = {
  runtime: benchRuntime,
  preprocess: () => benchPreprocess(),
  prune: () => benchPrune(),
  onnx: () => benchOnnx(),
  'onnx-train': () => benchOnnxTrain(),
};
for (const [name, bench] of Object.entries(benches)) {
  if (only && only !== name) continue;
  await bench();
}
