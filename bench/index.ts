/**
 * `npm run bench [name]`: the quick benchmarks (runtime, preprocess, prune) by default; the ones
 * that need the real MobileNetV2 (onnx, onnx-train, train-top, frozen-pass, rank, finetune — the last ~10 min with the PyTorch
 * baseline) and `sweep` (a 2x2 sweep against one branch, ~1 min) run only when named: `npm run bench finetune`, or `npm run bench:finetune`. Figures
 * are reported against a baseline measured in the same run.
 */
import { benchFinetune, parseBenchOptions } from './finetune.js';
import { benchFrozenPass, parseFrozenPassOptions } from './frozen-pass.js';
import { benchOnnx } from './onnx.js';
import { benchOnnxTrain } from './onnx-train.js';
import { benchPreprocess } from './preprocess.js';
import { benchPrune } from './prune.js';
import { benchRank } from './rank.js';
import { benchRuntime } from './runtime.js';
import { benchSweep } from './sweep.js';
import { benchTrainTop } from './train-top.js';

const only = process.argv[2];
const benches: Record<string, () => Promise<unknown>> = {
  runtime: benchRuntime,
  preprocess: () => benchPreprocess(),
  prune: () => benchPrune(),
  'train-top': () => benchTrainTop(),
  onnx: () => benchOnnx(),
  finetune: () => benchFinetune(parseBenchOptions(process.argv.slice(3))),
  'onnx-train': () => benchOnnxTrain(),
  rank: () => benchRank(process.argv.slice(3)),
  'frozen-pass': () => benchFrozenPass(parseFrozenPassOptions(process.argv.slice(3))),
  sweep: () => benchSweep(process.argv.slice(3)),
};
const onDemand = new Set(['train-top', 'onnx', 'onnx-train', 'finetune', 'rank', 'frozen-pass', 'sweep']);
if (only && !(only in benches)) {
  console.error(`no benchmark '${only}'; choose one of: ${Object.keys(benches).join(', ')}`);
  process.exit(2);
}
for (const [name, bench] of Object.entries(benches)) {
  if (only ? only !== name : onDemand.has(name)) continue;
  await bench();
}
